"""Embed new text exactly as a dataset's rows were embedded: the training side's half of the build.

An ELM is judged by embedding what it wrote and comparing that with the vector it was given, which
means something only when the new text goes through the dataset's own recipe: the same model and
weights, dtype, dim, pooling (by default the appended end-of-text token's state, L2-normalized),
document prompt and batching.

    embedder = Embedder.from_dataset("data/elm-wikitext2")      # build.py's --output
    embedder = Embedder.from_dataset("org/elm-wikitext2", revision="v1.0.0")
    embedder = Embedder.from_dataset("data/elm-wikitext2", column="embedding_b")  # a second model's column
    vectors = embedder.embed(["A paragraph.", "Another one."])   # (2, dim) float32 (unit rows if it normalizes)

The recipe comes from the output's manifest.json, or from the `embedding:` block of the dataset
card (README.md) of a Hub repo or of a downloaded copy of one: one recipe per embedding column.
"""

import logging
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
from huggingface_hub import DatasetCard, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from tqdm.auto import tqdm

from elm_wikitext.embed.encode import DTYPES, embed_rows, load_encoder, model_identity, token_batches
from elm_wikitext.core.recipe import POOLINGS, Recipe, model_recipe
from elm_wikitext.core.spec import check_weights_sha256, model_folder
from elm_wikitext.core.tokens import check_tokenizer, load_tokenizer, token_ids
from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.locations import is_local, looks_like_path
from elm_wikitext.core.manifest import CARD_FILE, MANIFEST_FILE, read_manifest
from elm_wikitext.core.schema import DEFAULT_COLUMN

log = logging.getLogger(__name__)

HUB_COMMIT = re.compile(r"^[0-9a-f]{40}$")
DIRECTORY_SHA256 = re.compile(r"^[0-9a-f]{64}$")  # model_identity of a local model directory


class Embedder:
    """Texts to vectors with one embedding model, loaded once, batched as the build batches."""

    def __init__(self, model: str = "Qwen/Qwen3-Embedding-4B", dim: int | None = None,
                 dtype: str = "float16", revision: str | None = None, max_batch_tokens: int = 65536,
                 device=None, recipe: Recipe | None = None):
        """`recipe`: the pooling, normalization and prompt (default: the model's own, as the build reads it)."""
        if dtype not in DTYPES:
            raise BuildError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}: pass one of them")
        self.model, self.revision, self.max_batch_tokens = model, revision, max_batch_tokens
        self.tokenizer = load_tokenizer(model, revision)
        self.recipe = recipe or model_recipe(model, revision)
        check_tokenizer(self.tokenizer, self.recipe, model)
        self.encoder = load_encoder(model, revision, dtype, dim, self.tokenizer.pad_token_id, device, self.recipe)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @classmethod
    def from_dataset(cls, dataset: str, revision: str | None = None, model: str | None = None,
                     device=None, column: str = DEFAULT_COLUMN) -> "Embedder":
        """The embedder that made `dataset`'s `column` (build.py's --output, a Hub dataset id at
        `revision`, or a downloaded copy of the Hub repo). `model`: a local copy of the embedding
        model, for a dataset embedded with a model directory that is not on this machine; its
        weights must be the ones the dataset was embedded with."""
        recipe = read_recipe(dataset, revision, column)
        model_path, model_revision = _model_to_load(recipe, dataset, model)
        embedder = cls(model_path, recipe["dim"], recipe["dtype"], model_revision, device=device,
                       recipe=Recipe.from_json(recipe))
        if recipe.get("weights_sha256"):  # fetched by Hub id and commit, or a copy: the same files, by SHA-256
            check_weights_sha256(model_folder(model_path, model_revision), recipe["weights_sha256"], dataset)
        else:
            _check_weights(recipe, model_path, model_revision, dataset)
        if str(embedder.encoder.dtype).removeprefix("torch.") != recipe["dtype"]:
            log.warning("%s was embedded in %s and this embedder computes in %s (on a CPU, always "
                        "float32): expect cosines of about 0.999 to its vectors, not 1",
                        dataset, recipe["dtype"], embedder.encoder.dtype)
        return embedder

    def embed(self, texts: list[str], show_progress: bool | None = None) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in the order of `texts`. The progress bar shows
        for more than one batch when logging is at INFO, unless `show_progress` says otherwise."""
        texts = list(texts)
        if not texts:  # the tokenizer refuses an empty batch
            return np.empty((0, self.dim), dtype=np.float32)
        ids = token_ids(texts, self.tokenizer, self.recipe.prompt)  # as the build tokenizes
        lengths = np.array([len(row) for row in ids], dtype=np.int64)
        vectors = np.empty((len(ids), self.dim), dtype=np.float32)
        # A text longer than the budget gets a batch of its own rather than a refusal.
        batches = token_batches(lengths, max(self.max_batch_tokens, int(lengths.max())))
        if show_progress is None:
            show_progress = len(batches) > 1 and log.isEnabledFor(logging.INFO)
        with tqdm(total=int(lengths.sum()), unit="tok", unit_scale=True, desc="Embedding",
                  disable=not show_progress) as bar:
            for batch in batches:
                vectors[batch] = embed_rows(self.encoder, [ids[i] for i in batch])[0].numpy()
                bar.update(int(lengths[batch].sum()))
        return vectors


def read_recipe(dataset: str, revision: str | None = None, column: str = DEFAULT_COLUMN) -> dict:
    """The embedding recipe of `column` of a build output (manifest.json), a folder in the Hub's
    layout or a Hub dataset id (the card's `embedding:` block); refused in one line where there is none."""
    recipes = read_recipes(dataset, revision)
    if column not in recipes:
        raise BuildError(f"{dataset} has no embedding column {column!r}: pass column= one of {', '.join(recipes)}")
    return _checked(recipes[column], dataset)


def read_recipes(dataset: str, revision: str | None = None) -> dict[str, dict]:
    """Every embedding column's recipe, by column."""
    path = Path(dataset)
    if path.is_dir():
        if revision is not None:
            raise BuildError(f"revision={revision!r} names a version of a Hub dataset, but {dataset} "
                             "is a local directory: leave revision out")
        if (path / MANIFEST_FILE).is_file():
            return _recipe_from_manifest(path)
        if (path / CARD_FILE).is_file():
            return _recipe_from_card(path / CARD_FILE, dataset)
        raise BuildError(f"{dataset} holds neither {MANIFEST_FILE} nor a dataset card (README.md): "
                         "pass build.py's --output, a downloaded copy of the Hub repo, or a Hub dataset id")
    if is_local(dataset) or looks_like_path(dataset) or "/" not in dataset:  # a dataset id has an owner
        raise BuildError(f"{dataset} is neither a dataset directory nor a Hub dataset id (owner/name): "
                         "pass build.py's --output or a Hub dataset id")
    return _recipe_from_card(_download_card(dataset, revision), dataset)


def _recipe_from_manifest(directory: Path) -> dict[str, dict]:
    embed = read_manifest(directory).stats.embed
    if not embed:
        raise BuildError(f"{directory} holds no embeddings (a --stage text output): run "
                         f"`python build.py --stage embed --output {directory}` first")
    return {column: stats.recipe() for column, stats in embed.items()}


def _recipe_from_card(card_path: Path | str, dataset: str) -> dict[str, dict]:
    recipes = DatasetCard.load(card_path, repo_type="dataset").data.to_dict().get("embedding")
    if not isinstance(recipes, dict):
        raise BuildError(f"the card of {dataset} has no `embedding:` recipe (not a dataset elm-wikitext "
                         "built): use Embedder(model=..., dim=..., dtype=...) with the model, dim and dtype the "
                         "card names")
    return {column: recipe for column, recipe in recipes.items() if isinstance(recipe, dict)}


def _download_card(repo_id: str, revision: str | None) -> str:
    try:
        return hf_hub_download(repo_id, CARD_FILE, repo_type="dataset", revision=revision)
    except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and not cached
        raise BuildError(f"cannot fetch the card of {repo_id} (revision {revision or 'main'}): the Hub "
                         "is unreachable and no copy is cached; pass a downloaded copy of the repo") from None
    except EntryNotFoundError:
        raise BuildError(f"{repo_id} (revision {revision or 'main'}) has no dataset card (README.md): "
                         "it is not an elm-wikitext dataset") from None
    except HfHubHTTPError as err:  # no such repo or revision, or no access
        raise BuildError(f"cannot fetch the card of {repo_id} (revision {revision or 'main'}): "
                         f"{type(err).__name__}; check the id and the revision, or log in for a private "
                         "repo") from None


def _checked(recipe: dict, dataset: str) -> dict:
    """A recipe this code can reproduce, or one line saying why not."""
    needed = ["model", "model_weights", "dtype", "dim", *(field.name for field in fields(Recipe))]
    # Each is set; max_length may be null (no limit known), but not left out.
    missing = [key for key in needed if recipe.get(key) is None and not (key == "max_length" and key in recipe)]
    if missing:
        raise BuildError(f"the embedding recipe of {dataset} lacks {', '.join(missing)}: it is damaged; "
                         "use Embedder(model=..., dim=..., dtype=...) explicitly")
    pooling = Recipe.from_json(recipe).pooling
    if pooling not in POOLINGS or recipe["dtype"] not in DTYPES:
        raise BuildError(f"{dataset} was embedded with pooling {recipe['pooling']!r} in {recipe['dtype']}, "
                         f"which this version of elm-wikitext cannot reproduce (it pools {', '.join(POOLINGS)}): "
                         "use the elm-wikitext version that built it")
    return recipe


def _model_to_load(recipe: dict, dataset: str, model: str | None) -> tuple[str, str | None]:
    """Where to load the recipe's model from (`model` overrides it), and which revision: a model
    directory as it is; a Hub model at the very commit the build used."""
    weights, name = recipe["model_weights"], model or recipe["model"]
    if Path(name).is_dir():
        return name, None
    if DIRECTORY_SHA256.match(weights):  # the build read a model directory, and this is none
        raise BuildError(f"{dataset} was embedded with the model directory {recipe['model']}, and "
                         f"{name} is not a directory on this machine: pass model=DIR, a copy of that "
                         "model, to Embedder.from_dataset")
    return name, weights if HUB_COMMIT.match(weights) else recipe["model_revision"]


def _check_weights(recipe: dict, model: str, revision: str | None, dataset: str) -> None:
    """Other weights under the same name (a retrained model, a changed directory) would give other
    vectors without any error: compare their identity with the one the build recorded."""
    recorded = recipe["model_weights"]
    found = model_identity(model, revision)
    if found != recorded:
        raise BuildError(f"the weights of {model} ({found[:12]}) are not the ones {dataset} was embedded "
                         f"with ({recorded[:12]}): pass model= a copy of the model the dataset was built with")
