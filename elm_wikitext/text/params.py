"""What the text stage reads, and nothing else (pipeline.text_params fills it from the command line)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TextParams:
    source: str  # named in the one line an empty source gets
    min_tokens: int
    max_tokens: int
    model_revision: str | None  # the tokenizer's revision: part of the cache key of the counting step
    num_proc: int | None
    split_by: str
    ratios: tuple[float, float, float]  # train, validation, test
    seed: int
