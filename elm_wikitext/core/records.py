"""The manifest of an output: how it was made and what it holds, as typed records.

The contract between the stages, the card and the gates: the text stage makes `TextStats`, the
embed stage `EmbedStats`, `new_manifest` puts them together with the options, and output.py
writes the whole as manifest.json (core/manifest.py reads it back). There is one format,
OUTPUT_FORMAT: every field is written, and a manifest read back must hold exactly these fields,
so an output of another format or shape is refused (then rebuilt), never read in part.
"""

import dataclasses
import shlex
import types
import typing
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from elm_wikitext.core.locations import on_hub
from elm_wikitext.core.recipe import Recipe

# Only a build writes a manifest with this key: it is what makes a directory ours to replace.
OUTPUT_MARKER = "elm_wikitext_output"
OUTPUT_FORMAT = 2  # the records below; a manifest of any other format is refused, not migrated


class NotThisFormat(ValueError):
    """JSON that is not a record of this format: a key missing or unknown, or a value of another type."""


class Record:
    """A dataclass (the subclasses) read from and written as a JSON object, every field always written."""

    @classmethod
    def from_json(cls, data):
        return read_json(cls, data)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def read_json(kind, value, where: str = ""):
    """`value` (parsed JSON) as the type `kind`: a record from an object with exactly its fields,
    a dict or list of them, `X | None`, or a plain type. `where` names the value in a refusal
    (`stats.text.seed`; "" the whole)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
        return read_json(kind, value, where)
    if dataclasses.is_dataclass(kind):
        _expect(value, dict, where)
        names = [field.name for field in dataclasses.fields(kind)]
        missing = [name for name in names if name not in value]
        unknown = [key for key in value if key not in names]
        if missing or unknown:
            raise NotThisFormat(f"{where or 'the top level'} " + " and ".join(
                ([f"lacks {', '.join(missing)}"] if missing else [])
                + ([f"has {', '.join(unknown)}, which this format does not know"] if unknown else [])))
        hints = typing.get_type_hints(kind)
        return kind(**{name: read_json(hints[name], value[name], _inside(where, name)) for name in names})
    if origin is dict:
        _expect(value, dict, where)
        return {key: read_json(args[1], item, _inside(where, key)) for key, item in value.items()} if args else value
    if origin is list:
        _expect(value, list, where)
        return [read_json(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)] if args else value
    _expect(value, (int, float) if kind is float else kind, where)  # an int is a float in JSON
    return value


def _inside(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _expect(value, kind, where: str) -> None:
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise NotThisFormat(f"{where or 'the top level'} is {type(value).__name__}, not {names}")


@dataclasses.dataclass
class TextStats(Record):
    """What the text stage counted, and the settings it was made with (a later `--stage embed`
    takes them from here)."""
    lines: int
    blank_lines: int
    heading_lines: int
    paragraph_lines: int
    paragraphs: int
    dropped: dict[str, int]  # rows per drop reason (text.DROP_REASONS)
    kept: int
    unknown_words: dict[str, int]  # `<unk>` words, and paragraphs holding one
    source: str
    source_config: str
    raw: bool
    source_revision: str | None
    split_by: str
    split: str
    seed: int
    min_tokens: int
    max_tokens: int
    tokenizer: str
    tokenizer_revision: str | None
    splits: dict[str, int]  # rows per split
    tokens: dict[str, int]  # tokens per split
    seconds: float
    # The source's Hub identity (--source, or --source-id for a local copy) and the commit its
    # files came from, where known: what the card names.
    source_id: str | None
    source_commit: str | None

    def public_source(self) -> str | None:
        """The source's Hub id (--source, or --source-id for a local copy); None: a local copy without one."""
        if self.source_id:
            return self.source_id
        return self.source if on_hub(self.source) else None


@dataclasses.dataclass
class EmbedStats(Record):
    """What the embed stage computed (in the run that wrote the output), and the recipe of the
    vectors: `key` says which weights, dtype, dim and text they were made under."""
    paragraphs: int
    tokens: int
    padded_tokens: int
    recomputed_float32: int  # rows that needed float32, over every run that made the chunks
    key: str
    model: str
    model_revision: str | None
    model_weights: str  # encode.model_identity: a Hub commit, or a local directory's SHA-256
    dtype: str
    dim: int
    device: str
    compiled: bool
    processes: int
    chunks: int
    embedding_seconds: float  # the batches alone, no loading
    tokens_per_second: int
    seconds: float
    padding_share: float
    pooling: Recipe  # how a text becomes one vector (written as JSON under "pooling")
    # What the model is on the Hub (embed/spec.py): its id (--model, or --model-id for a local
    # folder), the commit its files came from, and each weight file's SHA-256.
    model_id: str | None
    model_commit: str | None
    weights_sha256: dict | None
    reused: bool = False  # the vectors were taken from the output already there
    # The sample embedded again by sentence-transformers at the end of the build: seed, rows,
    # lowest cosine and its floor, seconds and the model's loading apart (core/reference.py).
    # Set before the output is written.
    reference: dict | None = None

    def recipe(self) -> dict:
        """How the vectors were made, as `elm_wikitext.training.embedder.Embedder.from_dataset` reads it
        back from the manifest or from the card: model, its weights' identity (a Hub commit, or the
        SHA-256 of a local directory's files), dtype, dim, and the pooling recipe (recipe.Recipe:
        pooling, normalize, prompt, max_length)."""
        return {"model": self.model, "model_revision": self.model_revision, "model_weights": self.model_weights,
                "dtype": self.dtype, "dim": self.dim, **self.pooling.to_json()}

    def public_model(self) -> str:
        """The model as a published file names it: its Hub id, or a local folder's name."""
        if self.model_id:
            return self.model_id
        return self.model if on_hub(self.model) else f"{Path(self.model).name} (a local model folder)"


@dataclasses.dataclass
class NeighborStats(Record):
    """The neighbours stage's record of one embedding column: K, the vectors it searched (their
    EmbedStats.key: new vectors need new neighbours), and how the search ran."""
    k: int
    embed_key: str
    margin: int  # candidates beyond k rescored in float64
    device: str
    processes: int
    rows_searched_in_float64: int  # rows whose near-ties sent them to the float64 search over every row
    seconds: float


@dataclasses.dataclass
class Stats(Record):
    text: TextStats
    # Each embedding column's record, in the columns' order; a `--stage text` output has none.
    embed: dict[str, EmbedStats] = dataclasses.field(default_factory=dict)
    # The neighbours stage's record per embedding column that has neighbour columns.
    neighbors: dict[str, NeighborStats] = dataclasses.field(default_factory=dict)

    def dims(self) -> dict[str, int]:
        """Each embedding column's size, in the columns' order."""
        return {column: stats.dim for column, stats in self.embed.items()}

    def neighbor_counts(self) -> dict[str, int]:
        """K of each embedding column that has neighbour columns."""
        return {column: stats.k for column, stats in self.neighbors.items()}


@dataclasses.dataclass
class SplitEntry(Record):
    """A split's rows and the SHA-256 of the Arrow files the build wrote (`files`)."""
    rows: int
    files: list[str]
    sha256: str


@dataclasses.dataclass
class Manifest(Record):
    """Everything needed to know how the output was made (never the Hub token)."""
    elm_wikitext_output: int  # OUTPUT_FORMAT
    config: dict  # the build's options (BuildOptions as a dict)
    versions: dict[str, str]
    stats: Stats
    command: str  # rebuild_command: the options as given, local paths included
    # The rebuild command as the card prints it (published_command); None: no vectors, no card.
    published_command: str | None
    created: str
    splits: dict[str, SplitEntry] = dataclasses.field(default_factory=dict)  # set when written
    # Every file of the output but manifest.json, set when written: a later build replaces only
    # these (and output.BY_DESIGN's).
    files: list[str] = dataclasses.field(default_factory=list)
    manifest_sha256: str | None = None  # set when written


def new_manifest(options, text: TextStats, embed: dict[str, EmbedStats],
                 neighbors: dict[str, NeighborStats]) -> Manifest:
    first = next(iter(embed.values()), None)  # the card's first column names the model
    return Manifest(elm_wikitext_output=OUTPUT_FORMAT, config=dataclasses.asdict(options),
                    versions=package_versions(), stats=Stats(text, embed, neighbors), command=rebuild_command(options),
                    published_command=published_command(options, text, first) if first else None,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def package_versions() -> dict:
    versions = {}
    for name in ("elm-wikitext", "datasets", "transformers", "torch", "accelerate", "huggingface-hub", "pyarrow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# Options that say where or whether to publish, or how fast to work: not what the data is.
NOT_REBUILDING = {"stage", "push", "repo_id", "version", "private", "hub_folder", "verify", "dry_run", "num_proc",
                  "drop_columns"}


def rebuild_command(options) -> str:
    """One command that builds this output again from scratch: every option that differs from
    its default (a `--stage embed` run's options include the text stage's, from its manifest)."""
    defaults = type(options)()
    words = ["python", "build.py"]
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.name not in NOT_REBUILDING and value != getattr(defaults, field.name):
            words += [f"--{field.name.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(words)


def published_command(options, text: TextStats, embed: EmbedStats) -> str:
    """The rebuild command as a stranger can run it: the model (`embed`'s) and the source by Hub
    id and commit, the output at its default place; no path of the builder's machine."""
    return rebuild_command(dataclasses.replace(
        options, model=embed.public_model().split(" ")[0], model_id=None, source_id=None,
        source=text.public_source() or Path(text.source).name, output=type(options)().output,
        model_revision=embed.model_commit or options.model_revision,
        source_revision=text.source_commit or options.source_revision))
