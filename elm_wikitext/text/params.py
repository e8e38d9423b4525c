"""What the text stage reads of the build's options, and nothing else (the pipeline hands it these)."""

from dataclasses import dataclass, fields


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

    @classmethod
    def of(cls, options) -> "TextParams":
        """These fields of the build's options (checked there: `split_ratios` parses --split)."""
        taken = {field.name: getattr(options, field.name) for field in fields(cls) if field.name != "ratios"}
        return cls(**taken, ratios=options.split_ratios())
