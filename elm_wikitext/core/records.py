"""The manifest of an output: how it was made and what it holds, as typed records.

The contract between the stages, the card and the gates: the text stage makes `TextStats`, the
embed stage `EmbedStats`, `new_manifest` puts them together with the options, and output.py
writes the whole as manifest.json and reads it back. A record read from JSON keeps its JSON
whole: a key an older build did not write reads as None and is left out again when the record is
written, and a key this version does not know is kept, so an output read and written again (by
`--stage embed`, or by `--verify` checking the manifest's checksum) keeps the JSON it had.
"""

import dataclasses
import shlex
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from elm_wikitext.core.schema import DEFAULT_COLUMN

# Only a build writes a manifest with this key: it is what makes a directory ours to replace.
OUTPUT_MARKER = "elm_wikitext_output"
OUTPUT_FORMAT = 1


class Record:
    """A JSON object as the fields of a dataclass (the subclasses)."""

    @classmethod
    def from_json(cls, data: dict):
        names = [field.name for field in dataclasses.fields(cls)]
        record = cls(**{name: cls.read_field(name, data.get(name)) for name in names})
        record._absent = {name for name in names if name not in data}
        record._unknown = {key: value for key, value in data.items() if key not in names}
        return record

    @classmethod
    def read_field(cls, name: str, value):
        """A field's value from its JSON (a record holding records reads them here)."""
        return value

    def to_json(self) -> dict:
        absent = getattr(self, "_absent", set())
        fields = {field.name: _as_json(getattr(self, field.name)) for field in dataclasses.fields(self)
                  if field.name not in absent}
        return {**fields, **getattr(self, "_unknown", {})}

    def recorded(self, name: str) -> bool:
        """Whether the JSON this record was read from has `name` (a new record has every field)."""
        return name not in getattr(self, "_absent", set())

    def replaced(self, **changes):
        """A copy with `changes`, keeping what the JSON it was read from lacked or added."""
        copy = dataclasses.replace(self, **changes)
        copy._absent = getattr(self, "_absent", set()) - set(changes)
        copy._unknown = getattr(self, "_unknown", {})
        return copy


def _as_json(value):
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    return value


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
    source_id: str | None = None
    source_commit: str | None = None


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
    model_weights: str | None  # None in builds from before it was recorded
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
    reused: bool = False  # the vectors were taken from the output already there
    pooling: dict | None = None  # core.recipe.Recipe as JSON; None in builds from before it was recorded
    # The sample embedded again by sentence-transformers at the end of the build: seed, rows,
    # lowest cosine and its floor, seconds and the model's loading apart (core/reference.py).
    reference: dict | None = None
    # What the model is on the Hub (embed/spec.py): its id (--model, or --model-id for a local
    # folder), the commit its files came from, and each weight file's SHA-256.
    model_id: str | None = None
    model_commit: str | None = None
    weights_sha256: dict | None = None

    def recipe(self) -> dict:
        """How the vectors were made, as `elm_wikitext.training.embedder.Embedder.from_dataset` reads it
        back from the manifest or from the card: model, its weights' identity (a Hub commit, or the
        SHA-256 of a local directory's files), dtype, dim, and the pooling recipe (recipe.Recipe:
        pooling, normalize, prompt, max_length; the last token's, L2-normalized, before it was recorded)."""
        from elm_wikitext.core.recipe import Recipe  # torch-free, but kept off the CLI's import path

        return {"model": self.model, "model_revision": self.model_revision, "model_weights": self.model_weights,
                "dtype": self.dtype, "dim": self.dim, **Recipe.from_json(self.pooling or {}).to_json()}


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
    embed: dict[str, EmbedStats] | None = None
    # The neighbours stage's record per embedding column that has neighbour columns.
    neighbors: dict[str, NeighborStats] | None = None

    @classmethod
    def read_field(cls, name: str, value):
        if name == "text":
            return TextStats.from_json(value)
        if not isinstance(value, dict):
            return None
        if name == "neighbors":
            return {column: NeighborStats.from_json(record) for column, record in value.items()}
        if "key" in value:  # one column's record, as builds wrote it before there could be several
            return {DEFAULT_COLUMN: EmbedStats.from_json(value)}
        return {column: EmbedStats.from_json(record) for column, record in value.items()}

    def dims(self) -> dict[str, int]:
        """Each embedding column's size, in the columns' order."""
        return {column: stats.dim for column, stats in (self.embed or {}).items()}

    def neighbor_counts(self) -> dict[str, int]:
        """K of each embedding column that has neighbour columns."""
        return {column: stats.k for column, stats in (self.neighbors or {}).items()}

    @classmethod
    def from_json(cls, data: dict):
        record = super().from_json(data)
        record._one_column = "key" in (data.get("embed") or {})  # written back in the shape it was read
        return record

    def to_json(self) -> dict:
        data = super().to_json()
        if not self.neighbors:  # outputs without neighbours keep the JSON they had
            data.pop("neighbors", None)
        if not self.embed:  # as a text stage writes it: no "embed" at all
            data.pop("embed", None)
        elif getattr(self, "_one_column", False) and self.embed.keys() == {DEFAULT_COLUMN}:
            data["embed"] = data["embed"][DEFAULT_COLUMN]
        return data


@dataclasses.dataclass
class SplitEntry(Record):
    """A split's rows and the SHA-256 of the Arrow files the build wrote (`files`; absent in
    builds from before it was recorded)."""
    rows: int
    files: list[str] | None
    sha256: str


@dataclasses.dataclass
class Manifest(Record):
    """Everything needed to know how the output was made (never the Hub token)."""
    elm_wikitext_output: int | None  # OUTPUT_FORMAT; absent in outputs from before the marker
    config: dict  # the build's options (BuildOptions as a dict)
    versions: dict[str, str]
    stats: Stats
    command: str
    created: str
    splits: dict[str, SplitEntry] = dataclasses.field(default_factory=dict)  # set when written
    # Every file of the output but manifest.json, set when written: a later build replaces only
    # these (and output.BY_DESIGN's). None in builds from before it was recorded.
    files: list[str] | None = None
    manifest_sha256: str | None = None  # set when written

    @classmethod
    def read_field(cls, name: str, value):
        if name == "stats":
            return Stats.from_json(value)
        if name == "splits":
            return {split: SplitEntry.from_json(entry) for split, entry in value.items()}
        return value


def new_manifest(options, text: TextStats, embed: EmbedStats | None,
                 neighbors: dict[str, NeighborStats] | None = None) -> Manifest:
    return Manifest(elm_wikitext_output=OUTPUT_FORMAT, config=dataclasses.asdict(options),
                    versions=package_versions(), stats=Stats(text, embed, neighbors or None), command=rebuild_command(options),
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
