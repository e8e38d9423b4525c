"""The dataset card: rendered from the manifest and the data, and the Hub layout it goes up with.

The card is a template beside the code (dataset_card.md), filled from the run: what the text
stage kept and dropped, the vectors' recipe, a token-length histogram, a PCA map of the vectors
and a few paragraphs with their nearest neighbours (visuals.py), and the YAML that
`load_dataset` and the Hub read. The Hub layout is the output as parquet shards under data/ with
the card as README.md: the folder that hub.py uploads as one commit.
"""

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.locations import on_hub
from elm_wikitext.core.schema import SPLIT_NAMES, expected_features
from elm_wikitext.core.records import Manifest
from elm_wikitext.publish.output import (CARD_FILE, EMBEDDING_MAP_FILE, HISTOGRAM_FILE,
                                         hub_data_files, hub_shard, make_hub_folder, read_output)
from elm_wikitext.publish.visuals import nearest_neighbours, neighbourhood_agreement, save_embedding_map

# The card's template: one real file in the package (package data: the wheel holds it too).
CARD_TEMPLATE = Path(__file__).parents[1] / "dataset_card.md"
HISTOGRAM_EDGES = [100, 150, 200, 300, 400, 600, 800, 1200, 2001]
# The Hub's advice for parquet files: at most about 500 MB each (the viewer and readers fetch
# whole files). Parquet of these rows is no larger than their Arrow form, which sizes the shards.
MAX_SHARD_BYTES = 500_000_000


def check_card_template() -> None:
    """The card's template is there and parses, checked before any work: a checkout without
    symlinks, or a broken install, would otherwise be found after the embedding."""
    import jinja2

    path = CARD_TEMPLATE
    remedy = "reinstall elm-wikitext, or restore elm_wikitext/dataset_card.md from the repository (git checkout)"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BuildError(f"the card's template {path} cannot be read ({err}): {remedy}") from None
    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as err:
        raise BuildError(f"the card's template {path} does not parse (line {err.lineno}: {err.message}): "
                         f"{remedy}") from None
    if not text.startswith("---\n") or "{{" not in text:  # e.g. a symlink checked out as its target's path
        raise BuildError(f"the card's template {path} is not a card template (no YAML header or no fields): {remedy}")


def token_counts(splits: DatasetDict) -> np.ndarray:
    return np.concatenate([split.data.column("token_count").to_numpy() for split in splits.values()])


def token_histogram(splits: DatasetDict, min_tokens: int, max_tokens: int) -> list[dict]:
    """Rows per token-length bucket, the buckets spanning the run's --min-tokens..--max-tokens."""
    edges = sorted({min_tokens, max_tokens + 1, *(e for e in HISTOGRAM_EDGES if min_tokens < e <= max_tokens)})
    counts, _ = np.histogram(token_counts(splits), edges)
    return [{"range": f"{low}-{high - 1}", "count": int(count)}
            for low, high, count in zip(edges, edges[1:], counts)]


def save_histogram(splits: DatasetDict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 3.2), dpi=100)
    axes.hist(token_counts(splits), bins=60, color="#4a7ab5")
    axes.set(xlabel="tokens per paragraph", ylabel="paragraphs", title="Token lengths (all splits)")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def card_metadata(splits: DatasetDict, dims: dict[str, int], source: str, pretty_name: str,
                  recipes: dict[str, dict] | None = None, neighbors: dict[str, int] | None = None) -> DatasetCardData:
    """Hub YAML: license, language, categories, and the configs/dataset_info blocks that
    `load_dataset` reads, made by datasets' own helpers so they match the data; and the
    embedding's recipe per column (`embedding: {column: recipe}`), so that a copy of the Hub
    folder alone can embed new text the same way."""
    rows = sum(len(split) for split in splits.values())
    card_data = DatasetCardData(
        license=["cc-by-sa-3.0", "gfdl"], language=["en"], pretty_name=pretty_name,
        task_categories=["feature-extraction", "text-generation"],
        size_categories=["n<1K" if rows < 1000 else "1K<n<10K" if rows < 10_000 else
                         "10K<n<100K" if rows < 100_000 else "100K<n<1M"],
        source_datasets=[source] if source else None,  # a local copy without --source-id: unknown
        tags=["embeddings", "elm", "wikitext"], embedding=recipes)
    # num_bytes: each split's size in Arrow, as datasets records it when it writes a split.
    sizes = {name: split.data.nbytes for name, split in splits.items()}
    info = DatasetInfo(features=expected_features(dims, neighbors), dataset_size=sum(sizes.values()), splits=SplitDict(
        {name: SplitInfo(name=name, num_examples=len(split), num_bytes=sizes[name])
         for name, split in splits.items()}))
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs({"default": {"data_files": [
        {"split": name, "path": hub_data_files(name)} for name in SPLIT_NAMES]}}).to_dataset_card_data(card_data)
    return card_data


def render_card(splits: DatasetDict, manifest: Manifest, repo_id: str = "<your-name>/elm-wikitext2",
                version: str = "v1.0.0") -> DatasetCard:
    """The card; its neighbours table (and write_card's map) shows the first embedding column.
    It names the model and the source by their Hub ids, never by a path on this machine."""
    # The text stage's facts come from its own statistics: a later `--stage embed` run's options
    # say nothing of the source or the length limits the text was made with.
    text, columns = manifest.stats.text, manifest.stats.embed
    first = next(iter(columns))  # the first column's model names the card
    embed = columns[first]
    config = text.source_config  # for a local folder too: it chose the .raw or .tokens files
    source = text.public_source()
    from_hub = source is not None and config.startswith("wikitext-")
    corpus = "WikiText-" + config.split("-")[1] if from_hub else "WikiText"
    model = embed.public_model()
    pretty_name = f"ELM {corpus}: paragraphs and their {model.split(' ')[0].split('/')[-1]} vectors"
    facts = [column_facts(name, stats) for name, stats in columns.items()]
    check_card_template()
    with template_errors():
        return DatasetCard.from_template(
            card_metadata(splits, manifest.stats.dims(), source or "", pretty_name,
                          {column: public_recipe(stats) for column, stats in columns.items()},
                          manifest.stats.neighbor_counts()),
            template_path=str(CARD_TEMPLATE),
            pretty_name=pretty_name, corpus=corpus, repo_id=repo_id, version=version,
            model=model, columns=facts, model_revision=embed.model_commit or embed.model_revision
            or ("main" if on_hub(embed.model) else None),
            dim=embed.dim, dim_cut=manifest.config["dim"] is not None, dtype=embed.dtype,
            recomputed=embed.recomputed_float32, max_tokens=text.max_tokens,
            source=source or f"{Path(text.source).name} (a local copy)", source_revision=text.source_commit,
            source_config=config, raw=text.raw, text=text, qwen3=any(column["qwen3"] for column in facts),
            histogram=token_histogram(splits, text.min_tokens, text.max_tokens),
            neighbours=nearest_neighbours(splits, first), map_column=first,
            neighbor_counts=manifest.stats.neighbor_counts(),
            agreement=neighbourhood_agreement(splits, list(manifest.stats.neighbor_counts())),
            command=manifest.published_command, versions=manifest.versions, created=manifest.created,
            splits=[{"name": name, "rows": len(split), "tokens": text.tokens[name]}
                    for name, split in splits.items()])


@contextmanager
def template_errors():
    """A template that parses but does not render (a field or filter it names that the build does
    not give) is one line, not a traceback; the vectors wait in the work folder for the rerun."""
    import jinja2
    import yaml

    try:
        yield
    except (jinja2.TemplateError, yaml.YAMLError) as err:  # rendering, or the YAML it gives
        raise BuildError(f"the card's template {CARD_TEMPLATE} does not render ({type(err).__name__}: {err}): restore "
                         "elm_wikitext/dataset_card.md from the repository, or fix the edit; then rerun (the vectors "
                         "are kept)") from None


def public_recipe(stats) -> dict:
    """The recipe the card carries for Embedder.from_dataset: the model by Hub id and commit (or a
    local folder's name, which a reader must then pass as model=DIR), and its weights' SHA-256."""
    recipe = stats.recipe()
    commit = stats.model_commit
    return {**recipe, "model": stats.public_model(), "model_revision": commit or recipe["model_revision"],
            "model_weights": commit or recipe["model_weights"], "weights_sha256": stats.weights_sha256}


def column_facts(name: str, stats) -> dict:
    """What the card says of one embedding column: its model and recipe, in words."""
    recipe = stats.recipe()
    pooling = {"lasttoken": "last token", "mean": "mean of the tokens", "cls": "first token ([CLS])"}[recipe["pooling"]]
    model = stats.public_model()
    return {"name": name, "model": model, "dim": stats.dim, "dtype": stats.dtype,
            "pooling": pooling + (", L2-normalized" if recipe["normalize"] else ", not normalized"),
            "prompt": recipe["prompt"], "normalized": recipe["normalize"], "origin": recipe["origin"],
            "query_prompt": recipe.get("query_prompt") or "", "qwen3": "Qwen3-Embedding" in model,
            "reference": stats.reference}


def write_card(splits: DatasetDict, manifest: Manifest, directory: Path, **hub) -> None:
    """The card, its histogram and its map of the first embedding column, into an output or a Hub
    layout being written."""
    column = next(iter(manifest.stats.embed))
    render_card(splits, manifest, **hub).save(directory / CARD_FILE)
    save_histogram(splits, directory / HISTOGRAM_FILE)
    save_embedding_map(splits, directory / EMBEDDING_MAP_FILE, column)


def stage_hub_folder(output: str, folder: Path, repo_id: str, version: str,
                     max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """The Hub layout of `output`: data/{split}-NNNNN-of-NNNNN.parquet, README.md, its two plots.
    Each split is cut into contiguous shards of equal rows, as many as its Arrow bytes over
    `max_shard_bytes` (rows differ little in size: the vector dominates); the card's
    `data/{split}-*` patterns find them all."""
    splits, manifest = read_output(output)
    make_hub_folder(folder)
    for name, split in splits.items():
        shards = max(1, -(-split.data.nbytes // max_shard_bytes))
        for index in range(shards):
            split.shard(shards, index, contiguous=True).to_parquet(hub_shard(folder, name, index, shards))
    write_card(splits, manifest, folder, repo_id=repo_id, version=version)
    return folder
