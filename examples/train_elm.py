"""Train a toy Embedding Language Model on elm-wikitext: embedding -> soft prompt -> text.

An ELM turns a text's embedding into a few "soft prompt" vectors that a language model reads
before it writes the text. Here the language model is a one-layer byte-level GRU, small enough to
train on a CPU (about a second a step on 2 cores: `--max-steps 50` for a first look, the default
500 steps in several minutes); the data path (shuffled batches of embeddings and texts) is the real one.
Run it from the repository root after `pip install -e .` (or with PYTHONPATH=.):

    python examples/train_elm.py --dataset data/elm-wikitext2 --max-steps 50   # build.py's --output
    python examples/train_elm.py --dataset org/elm-wikitext2 --revision main   # from the Hub
"""

import itertools
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from huggingface_hub import constants
from transformers import HfArgumentParser

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.locations import HubId, check_on_hub, is_local, looks_like_path
from elm_wikitext.training.loading import load_splits, shuffled_batches

log = logging.getLogger("train_elm")
BUILD_OUTPUT = "data/elm-wikitext2"  # build.py's default --output


@dataclass
class TrainArgs:
    dataset: str = field(default=BUILD_OUTPUT, metadata={
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


def open_dataset(source: str, revision: Optional[str]):
    """`load_splits` of build.py's --output, a downloaded Hub repo or a Hub dataset id; a source
    that is none of these ends the run with one line that says so (exit status 2)."""
    local = is_local(source)
    if not local and (source == BUILD_OUTPUT or looks_like_path(source)):
        refuse(f"--dataset {source} does not exist: run build.py first (it writes {BUILD_OUTPUT}) "
               "and pass its --output, or pass a Hub dataset id")
    if not local and not constants.HF_HUB_OFFLINE:  # one quick request, not the download's retries
        try:
            check_on_hub(HubId("--dataset", source, revision, "dataset", "pass build.py's --output, or a copy "
                               f"fetched where the Hub is reachable (hf download {source} --repo-type dataset "
                               "--local-dir DIR)"))
        except BuildError as err:
            refuse(str(err))
    try:
        return load_splits(source, revision)
    except OSError as err:  # a folder that is no dataset, or (offline) a Hub id not in the cache
        refuse(f"cannot load --dataset {source} ({type(err).__name__}: {err}): "
               + ("pass build.py's --output or a downloaded copy of the Hub repo" if local else
                  "run once with the Hub reachable to cache it, or pass build.py's --output"))


def refuse(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


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

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor, length: int) -> str:
        """The text the model writes from one embedding alone: greedy, byte by byte."""
        prompt = self.to_prompt(embedding[None]).view(1, self.prompt_tokens, self.width)
        hidden, state = self.decoder(prompt)
        written = []
        for _ in range(length):
            byte = int(self.to_bytes(hidden[0, -1]).argmax())
            if byte == 0:  # the padding byte: the text ends here
                break
            written.append(byte)
            hidden, state = self.decoder(self.byte_embedding(torch.tensor([[byte]], device=embedding.device)), state)
        return bytes(written).decode(errors="replace")


def first_bytes(texts: list[str], length: int) -> torch.Tensor:
    """Each text's UTF-8 bytes, cut or zero-padded to `length` (text has no 0 byte: it marks padding)."""
    rows = b"".join(text.encode()[:length].ljust(length, b"\0") for text in texts)
    return torch.frombuffer(bytearray(rows), dtype=torch.uint8).view(len(texts), length).long()


def epochs(batches):
    while True:
        yield from batches  # each pass over the DataLoader is a new shuffled epoch


def train(args: TrainArgs, splits=None) -> tuple[list[float], SoftPromptDecoder]:
    """Train for `args.max_steps` steps; return the loss of each, and the model."""
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split = (splits or open_dataset(args.dataset, args.revision))[args.split]
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
    return losses, model


@torch.no_grad()
def evaluate(model: SoftPromptDecoder, split, args: TrainArgs) -> float:
    """Mean loss over a split the model did not train on, batch by batch."""
    device = next(model.parameters()).device
    model.eval()
    batches = shuffled_batches(split, args.batch_size, args.seed)
    losses = [model(batch["embedding"].to(device), first_bytes(batch["text"], args.text_bytes).to(device)).item()
              for batch in batches]
    model.train()
    return sum(losses) / len(losses)


def main(argv: Optional[list[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = HfArgumentParser(TrainArgs, description=__doc__.splitlines()[0])
    (args,) = parser.parse_args_into_dataclasses(argv)
    splits = open_dataset(args.dataset, args.revision)
    started = time.perf_counter()
    losses, model = train(args, splits)
    window = max(1, min(10, len(losses) // 2))
    print(f"{len(losses)} steps in {time.perf_counter() - started:.1f}s: loss "
          f"{sum(losses[:window]) / window:.3f} -> {sum(losses[-window:]) / window:.3f} "
          f"(mean of the first and last {window})")
    held_out = next((name for name in ("validation", "test") if name in splits and name != args.split), None)
    if held_out:
        print(f"{held_out} loss: {evaluate(model, splits[held_out], args):.3f}")
        row = splits[held_out][0]
        embedding = torch.as_tensor(row["embedding"], device=next(model.parameters()).device)
        print(f"text:    {row['text'][:args.text_bytes]!r}")
        print(f"decoded: {model.decode(embedding, args.text_bytes)!r}  (from its embedding alone)")


if __name__ == "__main__":
    main()
