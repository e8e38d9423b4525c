"""Train an Embedding Language Model from a Hugging Face causal LM on elm-wikitext, and score it.

An adapter (a small MLP) turns each dataset vector into `--prompt-tokens` soft-prompt embeddings.
The language model reads them as its first input embeddings (`inputs_embeds`) and learns, by
teacher forcing, to write the paragraph after them: the loss covers the paragraph's tokens only.
At the end it writes a paragraph from each of some held-out vectors (`generate`) and prints their
semantic consistency (`elm_wikitext.training.consistency`): the cosine between the embedding of what it
wrote, made with the dataset's own recipe, and the vector it wrote from, beside a random-row baseline.

    python examples/train_elm_lm.py --dataset data/trial                      # CPU: a tiny random Qwen3, minutes
    python examples/train_elm_lm.py --dataset data/elm-wikitext2 --lm Qwen/Qwen3-0.6B    # a GPU

`--lm tiny` (the default) is a random-weight Qwen3 built in code, for trying the loop offline: its
loss falls, but what it writes means nothing. Any causal LM of the Hub or a local directory works.
"""

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Qwen3ForCausalLM

from elm_wikitext.tiny import build_qwen_tokenizer, tiny_qwen3_config
from elm_wikitext.training.consistency import report_lines, semantic_consistency
from elm_wikitext.training.embedder import Embedder
from elm_wikitext.training.loading import load_splits, shuffled_batches

log = logging.getLogger("train_elm_lm")


@dataclass
class TrainArgs:
    dataset: str = field(default="data/elm-wikitext2", metadata={
        "help": "build.py's --output, a downloaded copy of the Hub repo, or a Hub dataset id."})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of --dataset."})
    lm: str = field(default="tiny", metadata={
        "help": "The causal LM: a Hub id or directory (e.g. Qwen/Qwen3-0.6B), or 'tiny', a random Qwen3."})
    split: str = field(default="train", metadata={"help": "The split to train on."})
    eval_split: str = field(default="test", metadata={"help": "The split whose vectors it writes from at the end."})
    max_steps: int = field(default=40, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=8, metadata={"help": "Paragraphs per step."})
    prompt_tokens: int = field(default=4, metadata={"help": "Soft-prompt embeddings per vector."})
    text_tokens: int = field(default=64, metadata={"help": "LM tokens of each paragraph to learn (its start)."})
    adapter_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the adapter."})
    lm_lr: Optional[float] = field(default=None, metadata={
        "help": "AdamW learning rate of the LM, 0 to freeze it. Default: 5e-5 to fine-tune a pretrained "
                "LM; 3e-3 for 'tiny', whose random weights learn from scratch."})
    eval_rows: int = field(default=16, metadata={"help": "Vectors of --eval-split to write from at the end."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens each generation writes at most."})
    predictions: Optional[str] = field(default=None, metadata={
        "help": "Also write the generations here as JSON lines, for python -m elm_wikitext.training.consistency."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights and of the batch order."})


class EmbeddingLM(nn.Module):
    """A vector -> `prompt_tokens` soft-prompt embeddings -> the causal LM, which writes after them."""

    def __init__(self, lm, dim: int, prompt_tokens: int):
        super().__init__()
        self.lm, self.prompt_tokens, hidden = lm, prompt_tokens, lm.config.hidden_size
        self.adapter = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, prompt_tokens * hidden))

    def soft_prompt(self, vectors: torch.Tensor) -> torch.Tensor:
        prompt = self.adapter(vectors).unflatten(-1, (self.prompt_tokens, -1))
        return prompt.to(self.lm.get_input_embeddings().weight.dtype)

    def forward(self, vectors: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the text tokens, each given the soft prompt and the tokens before it."""
        prompt = self.soft_prompt(vectors)
        embeds = torch.cat([prompt, self.lm.get_input_embeddings()(input_ids)], dim=1)
        seen = torch.ones(prompt.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        # -100: no loss on the soft prompt nor on padding. The LM shifts the labels itself, so
        # the last prompt position learns the text's first token.
        labels = torch.cat([torch.full_like(seen, -100), input_ids.masked_fill(attention_mask == 0, -100)], dim=1)
        return self.lm(inputs_embeds=embeds, attention_mask=torch.cat([seen, attention_mask], dim=1),
                       labels=labels, use_cache=False).loss

    @torch.no_grad()
    def generate(self, vectors: torch.Tensor, tokenizer, max_new_tokens: int) -> list[str]:
        """Greedy text from each vector (the LM returns only the new tokens)."""
        prompt = self.soft_prompt(vectors)
        ids = self.lm.generate(inputs_embeds=prompt, attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long, device=prompt.device),
                               max_new_tokens=max_new_tokens, do_sample=False,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.batch_decode(ids, skip_special_tokens=True)


def load_lm(name: str, device: torch.device):
    """The causal LM and its tokenizer; 'tiny' builds a random 2-layer Qwen3 with the Qwen tokenizer."""
    if name == "tiny":
        return Qwen3ForCausalLM(tiny_qwen3_config()).to(device), build_qwen_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(name)
    # float32 weights, computed in bfloat16 on a GPU (autocast): AdamW updates stay exact.
    return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).to(device), tokenizer


def text_batch(texts: list[str], tokenizer, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text's first `length` tokens, end-of-text after a text that fits, padded on the right."""
    rows = [(ids + [tokenizer.eos_token_id])[:length]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    batch = tokenizer.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def epochs(batches):
    while True:
        yield from batches  # each pass over the DataLoader is a new shuffled epoch


def train(args: TrainArgs, device: torch.device | None = None) -> tuple[EmbeddingLM, object, list[float]]:
    """Train for `args.max_steps` steps; return the ELM, its tokenizer and the loss of each step."""
    torch.manual_seed(args.seed)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split = load_splits(args.dataset, args.revision)[args.split]
    lm, tokenizer = load_lm(args.lm, device)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    elm = EmbeddingLM(lm, split.features["embedding"].length, args.prompt_tokens).to(device).train()
    lm_lr = args.lm_lr if args.lm_lr is not None else 3e-3 if args.lm == "tiny" else 5e-5
    lm.requires_grad_(lm_lr > 0)
    groups = [{"params": elm.adapter.parameters(), "lr": args.adapter_lr}]
    optimizer = torch.optim.AdamW(groups + ([{"params": lm.parameters(), "lr": lm_lr}] if lm_lr > 0 else []))
    batches = shuffled_batches(split, args.batch_size, args.seed, pin_memory=device.type == "cuda")
    losses = []
    for step, batch in enumerate(itertools.islice(epochs(batches), args.max_steps), start=1):
        input_ids, attention_mask = text_batch(batch["text"], tokenizer, args.text_tokens, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = elm(batch["embedding"].to(device), input_ids, attention_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            log.info("step %d: loss %.3f", step, losses[-1])
    return elm.eval(), tokenizer, losses


def write_from_vectors(elm: EmbeddingLM, tokenizer, args: TrainArgs) -> list[dict]:
    """A paragraph written from each of the first `eval_rows` vectors of the eval split."""
    split = load_splits(args.dataset, args.revision)[args.eval_split]
    rows = split.select_columns(["text_id", "embedding"]).with_format("torch")[:args.eval_rows]
    device = next(elm.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        texts = elm.generate(rows["embedding"].to(device), tokenizer, args.max_new_tokens)
    return [{"text_id": text_id, "text": text} for text_id, text in zip(rows["text_id"], texts)]


def main(argv: Optional[list[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(TrainArgs, description=__doc__.splitlines()[0]).parse_args_into_dataclasses(argv)
    started = time.perf_counter()
    elm, tokenizer, losses = train(args)
    window = max(1, min(10, len(losses) // 2))
    print(f"{len(losses)} steps in {time.perf_counter() - started:.1f}s: loss "
          f"{sum(losses[:window]) / window:.3f} -> {sum(losses[-window:]) / window:.3f} "
          f"(mean of the first and last {window})")
    predictions = write_from_vectors(elm, tokenizer, args)
    del elm  # the LM leaves the GPU before the embedding model comes
    torch.cuda.empty_cache()
    print(f"wrote from {args.eval_split} row {predictions[0]['text_id']}: {predictions[0]['text'][:200]!r}")
    if args.predictions:
        with open(args.predictions, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in predictions)
        print(f"saved {len(predictions)} predictions to {args.predictions} (score them again with python -m "
              f"elm_wikitext.training.consistency --dataset {args.dataset} --predictions {args.predictions} "
              f"--split {args.eval_split})")
    splits = load_splits(args.dataset, args.revision)
    report = semantic_consistency(splits, predictions, Embedder.from_dataset(args.dataset, args.revision),
                                  split=args.eval_split, seed=args.seed)
    print("\n".join(report_lines(report)))


if __name__ == "__main__":
    main()
