"""Train a toy Embedding Language Model on elm-wikitext: embedding -> soft prompt -> text.

An ELM turns a text's embedding into a few "soft prompt" vectors that a language model reads
before it writes the text. Here the language model is a one-layer byte-level GRU, small enough to
train on a CPU in seconds; the data path (shuffled batches of embeddings and texts) is the real one.
Run it from the repository root after `pip install -e .` (or with PYTHONPATH=.):

    python examples/train_elm.py --dataset data/elm-wikitext2 --max-steps 50   # build.py's --output
    python examples/train_elm.py --dataset org/elm-wikitext2 --revision main   # from the Hub
"""

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HfArgumentParser

from elm_wikitext.loading import load_splits, shuffled_batches

log = logging.getLogger("train_elm")


@dataclass
class TrainArgs:
    dataset: str = field(default="data/elm-wikitext2", metadata={
        "help": "build.py's --output, a downloaded copy of the Hub repo, or a Hub dataset id."})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of --dataset."})
    split: str = field(default="train", metadata={"help": "The split to train on."})
    max_steps: int = field(default=500, metadata={"help": "Optimizer steps (WikiText-2's epoch is ~190)."})
    batch_size: int = field(default=64, metadata={"help": "Paragraphs per step."})
    prompt_tokens: int = field(default=4, metadata={"help": "Soft prompt vectors per embedding."})
    width: int = field(default=128, metadata={"help": "Width of the soft prompt and the decoder."})
    text_bytes: int = field(default=64, metadata={"help": "Bytes of each paragraph to predict."})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights and of the batch order."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})


class SoftPromptDecoder(nn.Module):
    """Embedding -> `prompt_tokens` soft tokens -> a GRU that predicts the text's bytes after them."""

    def __init__(self, dim: int, prompt_tokens: int, width: int):
        super().__init__()
        self.prompt_tokens, self.width = prompt_tokens, width
        self.to_prompt = nn.Linear(dim, prompt_tokens * width)
        self.byte_embedding = nn.Embedding(256, width)
        self.decoder = nn.GRU(width, width, batch_first=True)
        self.to_bytes = nn.Linear(width, 256)

    def forward(self, embedding: torch.Tensor, text_bytes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each byte given the soft prompt and the bytes before it."""
        prompt = self.to_prompt(embedding).view(len(embedding), self.prompt_tokens, self.width)
        hidden, _ = self.decoder(torch.cat([prompt, self.byte_embedding(text_bytes[:, :-1])], dim=1))
        logits = self.to_bytes(hidden[:, self.prompt_tokens - 1:])  # the positions before each byte
        return F.cross_entropy(logits.reshape(-1, 256), text_bytes.reshape(-1), ignore_index=0)


def first_bytes(texts: list[str], length: int) -> torch.Tensor:
    """Each text's UTF-8 bytes, cut or zero-padded to `length` (text has no 0 byte: it marks padding)."""
    rows = b"".join(text.encode()[:length].ljust(length, b"\0") for text in texts)
    return torch.frombuffer(bytearray(rows), dtype=torch.uint8).view(len(texts), length).long()


def epochs(batches):
    while True:
        yield from batches  # each pass over the DataLoader is a new shuffled epoch


def train(args: TrainArgs) -> list[float]:
    """Train for `args.max_steps` steps; return the loss of each."""
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split = load_splits(args.dataset, args.revision)[args.split]
    dim = split.features["embedding"].length
    model = SoftPromptDecoder(dim, args.prompt_tokens, args.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    batches = shuffled_batches(split, args.batch_size, args.seed, num_workers=args.num_workers,
                               pin_memory=device.type == "cuda")
    losses = []
    for step, batch in enumerate(itertools.islice(epochs(batches), args.max_steps), start=1):
        text_bytes = first_bytes(batch["text"], args.text_bytes).to(device)
        loss = model(batch["embedding"].to(device), text_bytes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("step %d: loss %.3f", step, losses[-1])
    return losses


def main(argv: Optional[list[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = HfArgumentParser(TrainArgs, description=__doc__.splitlines()[0])
    (args,) = parser.parse_args_into_dataclasses(argv)
    started = time.perf_counter()
    losses = train(args)
    window = max(1, min(10, len(losses) // 2))
    print(f"{len(losses)} steps in {time.perf_counter() - started:.1f}s: loss "
          f"{sum(losses[:window]) / window:.3f} -> {sum(losses[-window:]) / window:.3f} "
          f"(mean of the first and last {window})")


if __name__ == "__main__":
    main()
