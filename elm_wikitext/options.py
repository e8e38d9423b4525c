"""Every knob of the build in one dataclass; `build.py`'s CLI is generated from it.

The defaults reproduce the published build. This module imports no heavy library, so that
`--help` and a refused option answer at once.
"""

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Optional, get_args, get_type_hints

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.schema import DEFAULT_COLUMN, NEIGHBOR_SUFFIXES, RESERVED_COLUMNS



def _opt(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class BuildOptions:
    stage: str = _opt(
        "all", "What to run: 'text' (paragraphs only), 'embed' (add the embedding column to an "
        "existing text-stage --output, with the text stage's settings from its manifest) or 'all' "
        "(text, then embed).",
        choices=["text", "embed", "all"])
    source: str = _opt(
        "Salesforce/wikitext", "A Hub dataset id, or a local directory holding WikiText's archive "
        "files (wiki.{train,valid,test}.raw for a raw config, .tokens for the others) or the Hub's "
        "parquet files of one config.")
    source_config: str = _opt(
        "wikitext-2-raw-v1", "The WikiText config (wikitext-2-raw-v1, wikitext-2-v1, "
        "wikitext-103-raw-v1, wikitext-103-v1). The raw configs hold the real words; the others "
        "replace rare words with <unk>. In a local copy of the whole Hub repo, the config's folder "
        "is read.")
    source_revision: Optional[str] = _opt(None, "A Hub revision (branch, tag or commit) of --source.")
    source_id: Optional[str] = _opt(
        None, "The Hub dataset id of a local --source copy (e.g. Salesforce/wikitext): the card and the "
        "manifest name the source by it (its commit read from what `hf download --local-dir` left in "
        "the folder). Needed for --push or --hub-folder with a local --source.")
    model: str = _opt(
        "Qwen/Qwen3-Embedding-4B", "The embedding model: a Hub id or a local model directory. Its "
        "tokenizer also counts the tokens for the length filter.")
    model_revision: Optional[str] = _opt(None, "A Hub revision (branch, tag or commit) of --model.")
    model_id: Optional[str] = _opt(
        None, "The Hub id of a local --model folder (e.g. Qwen/Qwen3-Embedding-4B after `hf download "
        "... --local-dir`): the card and the published recipe name the model by it, with the commit "
        "and weights' SHA-256 read from what `hf download` left in the folder. Needed for --push or --hub-folder with "
        "a local --model.")
    min_tokens: int = _opt(100, "Drop paragraphs of fewer tokens (the appended end-of-text token counts).")
    max_tokens: int = _opt(2000, "Drop paragraphs of more tokens (the appended end-of-text token counts).")
    split: str = _opt("0.8,0.1,0.1", "Train,validation,test ratios of rows; they must sum to 1.")
    split_by: str = _opt(
        "article", "'article' keeps each article's paragraphs in one split (no leak between "
        "splits); 'paragraph' is a plain seeded shuffle of paragraphs.",
        choices=["article", "paragraph"])
    seed: int = _opt(42, "Seed of the split.")
    dtype: str = _opt(
        "float16", "Compute dtype of the model on GPU (on CPU it is always float32).",
        choices=["float16", "bfloat16", "float32"])
    dim: Optional[int] = _opt(
        None, "Embedding size to keep (Matryoshka: the first N values, re-normalized), 32 to "
        "the model's hidden size. Default: the hidden size (2560 for Qwen3-Embedding-4B).")
    column: str = _opt(
        DEFAULT_COLUMN, "The column the embed stage writes. Another name adds another model's vectors "
        "beside those already there, which stay as they are: --stage embed --model B --column "
        "embedding_b. A column that exists is reused if the same model, recipe and text made it, "
        "else refused.")
    drop_columns: bool = _opt(
        False, "Let a rebuild (--stage all or text) drop the output's columns it cannot keep: those "
        "embedded from a text that these options change, or all of an output whose manifest cannot be "
        "trusted. Without it such a rebuild is refused, naming the columns; columns of an unchanged "
        "text are always kept.")
    neighbors: int = _opt(
        8, "Each row's K nearest other rows of the same split by cosine, exact, in two columns beside "
        "the embedding column C: C_neighbors (their text_ids) and C_neighbor_cosines, sorted, ties by "
        "text_id. 0: none.", metavar="K")
    max_batch_tokens: int = _opt(
        65536, "Token budget of one forward pass, padding included. A CUDA out-of-memory "
        "halves it for that batch and retries.")
    compile: str = _opt(
        "auto", "torch.compile the model's decoder layers, fusing their element-wise work (1.5x "
        "the tokens/s on an H100), before the first batch (seconds). 'auto': on a GPU, and eager "
        "with a warning where inductor cannot build kernels; eager on CPU. 'yes': also on CPU, "
        "refused where it cannot compile. 'no': never.", choices=["auto", "yes", "no"])
    chunk_tokens: int = _opt(
        131072, "Tokens per resumable unit of the embed stage: a crash loses at most one chunk "
        "per process, and processes share the work chunk by chunk.")
    output: str = _opt("data/elm-wikitext2", "Output directory (a DatasetDict for load_from_disk).")
    push: bool = _opt(False, "After building and verifying, publish to the Hub as one commit and tag it.")
    repo_id: Optional[str] = _opt(
        None, "Hub dataset repo for --push (default: <your Hub username>/elm-wikitext2) or --hub-folder.")
    version: str = _opt("v1.0.0", "Tag of the published version (vMAJOR.MINOR.PATCH); it must not exist yet.")
    private: bool = _opt(False, "Create the Hub repo as private (with --push or --hub-folder).")
    hub_folder: Optional[str] = _opt(
        None, "Publishing from another machine, for a build without the Hub: after building and "
        "verifying, write what --push would upload (parquet shards, card, plots) to DIR, nothing looked "
        "up or sent, and print the two `hf` commands that publish DIR unchanged where the Hub is "
        "reachable. Needs --repo-id; --version names the tag.", metavar="DIR")
    verify: Optional[str] = _opt(
        None, "Only run the validation gates on an existing output DIR (schema, counts, unit "
        "vectors, no leaks, a re-embedded sample drawn afresh) and exit. --model, if given, points "
        "at the build's weights where they are now.", metavar="DIR")
    dry_run: bool = _opt(
        False, "Run the text stage and print the plan (paragraphs, tokens, TFLOPs, the embedding's "
        "estimated time on this device and on --plan-gpus GPUs) without loading model weights "
        "or writing anything.")
    plan_gpus: int = _opt(
        8, "With --dry-run: also estimate the embedding's time on this many GPUs (machines times "
        "GPUs per machine), sharing the chunks as a launched build does.")
    plan_gpu: str = _opt(
        "H100", "With --dry-run: the kind of those GPUs (H100, H200, A100, L40S, L4, A10, T4).")
    num_proc: Optional[int] = _opt(
        None, "Worker processes for the text stage's cleaning and counting (default: one per CPU "
        "core, up to 8, for a source of over 100,000 lines; in-process for a smaller one, where "
        "starting workers costs about what they save).")

    def split_ratios(self) -> tuple[float, float, float]:
        try:
            ratios = tuple(float(part) for part in self.split.split(","))
        except ValueError:
            ratios = ()
        if len(ratios) != 3 or min(ratios) < 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise BuildError(
                f"--split {self.split!r} is not three non-negative ratios summing to 1: "
                "pass train,validation,test such as --split 0.8,0.1,0.1")
        return ratios

    def validate(self) -> None:
        """Refuse contradictory options before any work starts."""
        if self.min_tokens < 1 or self.min_tokens > self.max_tokens:
            raise BuildError(
                f"--min-tokens {self.min_tokens} must be between 1 and --max-tokens "
                f"{self.max_tokens}: lower --min-tokens or raise --max-tokens")
        self.split_ratios()
        if self.dim is not None and self.dim < 32:
            raise BuildError(f"--dim {self.dim} is below 32: pass --dim between 32 and the "
                             "model's hidden size, or leave it out for the full size")
        if self.chunk_tokens < 1:
            raise BuildError("--chunk-tokens must be positive: pass e.g. --chunk-tokens 131072")
        if self.max_batch_tokens < 1:
            raise BuildError("--max-batch-tokens must be positive: pass e.g. --max-batch-tokens 65536")
        if self.seed < 0:
            raise BuildError(f"--seed {self.seed} is negative: pass a seed of 0 or more")
        if self.num_proc is not None and self.num_proc < 1:
            raise BuildError(f"--num-proc {self.num_proc} is not a number of processes: pass 1 or "
                             "more, or leave it out to work in-process")
        if self.plan_gpus < 1:
            raise BuildError(f"--plan-gpus {self.plan_gpus} is not a number of GPUs: pass 1 or more")
        if self.neighbors < 0:
            raise BuildError(f"--neighbors {self.neighbors} is not a number of neighbours: pass 0 (none) or more")
        if (not self.column.isidentifier() or self.column in RESERVED_COLUMNS
                or self.column.endswith(NEIGHBOR_SUFFIXES)):
            raise BuildError(f"--column {self.column!r} is not a free column name: pass letters, digits "
                             "and underscores, not starting with a digit, other than "
                             f"{', '.join(RESERVED_COLUMNS)} and names ending {' or '.join(NEIGHBOR_SUFFIXES)} "
                             "(the neighbours' columns), e.g. --column embedding_b")
        if self.push or self.hub_folder:
            self.check_push_options()
        if self.push and self.stage == "text":
            raise BuildError("--push publishes embeddings, which --stage text does not make: "
                             "use --stage all, or --stage embed on this output")
        self.validate_hub_folder()

    def validate_hub_folder(self) -> None:
        if self.hub_folder is None:
            return
        if self.push:
            raise BuildError("--push and --hub-folder are two ways to publish: pass --push where the Hub "
                             "is reachable, --hub-folder DIR where it is not")
        if self.stage == "text":
            raise BuildError("--hub-folder stages embeddings, which --stage text does not make: "
                             "use --stage all, or --stage embed on this output")
        if not self.repo_id:
            raise BuildError("--hub-folder needs --repo-id OWNER/NAME (without the Hub, your user name "
                             "cannot be looked up): pass e.g. --repo-id your-name/elm-wikitext2")

    def check_push_options(self) -> None:
        """--version and --repo-id, by the Hub's rules, before any model or network work."""
        import re

        if not re.fullmatch(r"v\d+\.\d+\.\d+", self.version):
            raise BuildError(f"--version {self.version!r} is not a tag like v1.0.0: pass --version vMAJOR.MINOR.PATCH")
        if self.repo_id:  # empty: the default, <your Hub username>/elm-wikitext2
            from huggingface_hub.errors import HFValidationError
            from huggingface_hub.utils import validate_repo_id

            try:
                if self.repo_id.count("/") != 1:
                    raise HFValidationError("not owner/name")
                validate_repo_id(self.repo_id)
            except HFValidationError:
                raise BuildError(f"--repo-id {self.repo_id!r} is not of the form owner/name that the Hub accepts "
                                 "(letters, digits, '-', '_', '.'): pass e.g. --repo-id your-name/elm-wikitext2"
                                 ) from None


DOCS = "https://github.com/elm-wikitext/elm-wikitext"
EXAMPLES = f"""examples:
  python build.py                              text and embeddings into data/elm-wikitext2
  python build.py --dry-run                    what a build would keep and take here; nothing written
  python build.py --verify data/elm-wikitext2  check an output again
  python build.py --push                       build, check and publish (after `hf auth login`)
  python build.py --hub-folder data/hub-upload --repo-id NAME/elm-wikitext2
                                               no Hub here: stage the upload, print the `hf` commands
  the offline trial (no Hub, no GPU; pip install -e ".[test]" first):
    python -m elm_wikitext.tiny models/tiny-qwen3
    python build.py --source tests/fixtures/wikitext_sample --model models/tiny-qwen3 --output data/trial

docs: README.md and docs/options.md of the checkout, also at {DOCS}#readme
"""


def build_parser() -> argparse.ArgumentParser:
    """One dashed option per field of BuildOptions, with its help and default (transformers'
    HfArgumentParser listed each name twice, `--min_tokens` and `--min-tokens`)."""
    parser = argparse.ArgumentParser(description="Build the elm-wikitext dataset.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = get_type_hints(BuildOptions)
    for option in fields(BuildOptions):
        kind = next((t for t in get_args(hints[option.name]) if t is not type(None)), hints[option.name])
        help_text, default = option.metadata["help"], option.default
        if kind is bool:
            kwargs = {"action": "store_true"}
        else:
            kwargs = {"type": kind, "choices": option.metadata.get("choices"),
                      "metavar": option.metadata.get("metavar")}
            if default is not None and "default" not in help_text.lower():
                help_text += f" (default: {default})"
        parser.add_argument(f"--{option.name.replace('_', '-')}", dest=option.name, default=default,
                            help=help_text, **kwargs)
        if "_" in option.name:  # the spelling HfArgumentParser also took: accepted, not shown
            parser.add_argument(f"--{option.name}", dest=option.name, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS, **kwargs)
    return parser


def parse_options(argv: Optional[list[str]] = None) -> BuildOptions:
    parser = build_parser()

    def refuse(message: str):  # argparse would print its whole usage; one line says enough
        raise BuildError(f"{message}: see python build.py --help")

    parser.error = refuse
    options = BuildOptions(**vars(parser.parse_args(argv)))
    options.validate()
    return options
