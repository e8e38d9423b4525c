"""The card's pictures of the vectors: a 2D map (PCA) coloured by article, and a few paragraphs
with their nearest neighbours in the set.

Both read one embedding column (`column`: a build may carry several), all splits together. PCA
uses numpy alone (a centred covariance and its two leading eigenvectors); the neighbours are the
ones the neighbours stage stored beside the column, as is the agreement of several columns'
neighbourhoods.
"""

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from datasets import DatasetDict, concatenate_datasets

from elm_wikitext.core.schema import neighbor_columns

MAP_ARTICLES = 8  # the largest articles get a colour each; more would be hard to tell apart
NEIGHBOUR_QUERIES = 3
CELL_CHARS = 120
# matplotlib's tab10 without its grey, which is the other articles' colour.
ARTICLE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]


def unit_vectors(splits: DatasetDict, column: str = "embedding") -> np.ndarray:
    """Every row's vector, splits in order, scaled to unit length: the stored ones should be, but
    a cosine computed on them must not depend on it."""
    # Straight from Arrow, as verify.py reads them: 0.3 s for 30k x 2560, against 4.5 s numpy-formatted.
    vectors = np.concatenate([pc.list_flatten(split.data.column(column)).to_numpy().reshape(len(split), -1)
                              for split in splits.values()]).astype(np.float32, copy=False)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors /= np.where(norms > 0, norms, 1)  # in place: the real set is ~300 MB of float32
    return vectors


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows projected on their two principal components, and the share of the variance each
    explains. The covariance (dim x dim) is small beside the rows, so eigh of it is cheaper than
    an SVD of the centred rows."""
    centred = vectors - vectors.mean(axis=0, dtype=np.float64).astype(vectors.dtype)
    covariance = (centred.T @ centred).astype(np.float64) / max(len(vectors) - 1, 1)
    variances, components = np.linalg.eigh(covariance)  # ascending
    top = components[:, ::-1][:, :2]
    # A component's sign is arbitrary: fix it so that the map does not flip between runs.
    top *= np.where(top[np.abs(top).argmax(axis=0), [0, 1]] < 0, -1, 1)
    share = variances[::-1][:2] / max(variances.sum(), np.finfo(np.float64).tiny)
    return centred @ top.astype(vectors.dtype), share


def largest_articles(splits: DatasetDict, count: int = MAP_ARTICLES) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Each row's article_id (splits in order) and the `count` articles with most rows as
    (article_id, title), most rows first. By id: titles can repeat."""
    ids = np.concatenate([split.data.column("article_id").to_numpy() for split in splits.values()])
    titles = {}
    for split in splits.values():
        titles.update(zip(split["article_id"], split["article"]))
    found, rows = np.unique(ids, return_counts=True)
    order = sorted(range(len(found)), key=lambda i: (-rows[i], found[i]))[:count]  # ties: the earlier article
    return ids, [(int(found[i]), titles[int(found[i])]) for i in order]


def save_embedding_map(splits: DatasetDict, path: Path, column: str = "embedding") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    from matplotlib import pyplot

    points, share = pca_2d(unit_vectors(splits, column))
    ids, articles = largest_articles(splits)
    size = float(np.clip(3000 / len(points), 2, 16))  # ~30k rows want dots, a sample wants marks
    figure, axes = pyplot.subplots(figsize=(7, 5.5), dpi=100)
    rest = ~np.isin(ids, [article_id for article_id, _ in articles])
    axes.scatter(points[rest, 0], points[rest, 1], s=size, color="#d3d3d3", linewidths=0, rasterized=True,
                 label="other articles")
    for colour, (article_id, title) in zip(ARTICLE_COLOURS, articles):
        mine = ids == article_id
        axes.scatter(points[mine, 0], points[mine, 1], s=size * 1.5, color=colour, linewidths=0,
                     label=f"{title[:40]} ({int(mine.sum())} rows)")
    axes.set(xlabel=f"first principal component ({share[0]:.1%} of the variance)",
             ylabel=f"second principal component ({share[1]:.1%})",
             title=f"{column} vectors by PCA, all splits; the {len(articles)} largest articles in colour")
    axes.legend(fontsize=7, markerscale=1.5, loc="best", framealpha=0.8)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def nearest_neighbours(splits: DatasetDict, column: str = "embedding",
                       queries: int = NEIGHBOUR_QUERIES) -> list[dict]:
    """`queries` rows spread evenly over the set (splits in order: the same rows every build of
    the same data), each with its nearest other row of its split, as the neighbours stage stored
    it beside `column` (none where the build had --neighbors 0)."""
    ids_name, cosines_name = neighbor_columns(column)
    if ids_name not in splits["train"].column_names:
        return []
    every = concatenate_datasets(list(splits.values())).select_columns(["text", "article", ids_name, cosines_name])
    # Each split's rows by text_id, as places in the splits taken in order ("row", "neighbour"),
    # for a reader to find them again.
    starts = np.cumsum([0] + [len(split) for split in splits.values()])
    place = [{text: start + i for i, text in enumerate(split["text_id"])} for start, split in zip(starts, splits.values())]
    chosen = np.unique(np.linspace(0, len(every) - 1, min(queries, len(every))).round().astype(int))
    pairs = []
    for query in (int(row) for row in chosen):
        split = int(np.searchsorted(starts, query, side="right")) - 1
        first, cosine = every[query][ids_name][0], every[query][cosines_name][0]
        if first is not None:  # a split of one row has no neighbour
            other = place[split][first]
            pairs.append({"row": query, "neighbour": other, "cosine": float(cosine), **_cells(every[query], every[other])})
    return pairs


def neighbourhood_agreement(splits: DatasetDict, columns: list[str]) -> dict:
    """How the stored neighbourhoods of `columns` (those with neighbour columns) compare: for each
    column the share of its neighbours from the row's own article, and for each pair of columns
    the mean share of a row's K neighbours that both name (rows of a split too small for K
    neighbours count their fewer)."""
    named = {column: [pc.list_flatten(split.data.column(neighbor_columns(column)[0])).to_numpy(
        zero_copy_only=False).reshape(len(split), -1) for split in splits.values()] for column in columns}
    same_article = {column: _same_article_share(splits, named[column]) for column in columns}
    overlap = []
    for i, first in enumerate(columns):
        for second in columns[i + 1:]:
            shares = [len(set(a) & set(b) - {None}) / max(len(set(a) - {None}), 1)
                      for one, two in zip(named[first], named[second]) for a, b in zip(one, two)]
            overlap.append({"first": first, "second": second, "overlap": float(np.mean(shares)) if shares else 0.0})
    return {"same_article": same_article, "overlap": overlap}


def _same_article_share(splits: DatasetDict, named: list[np.ndarray]) -> float:
    same = total = 0
    for split, ids in zip(splits.values(), named):
        article = dict(zip(split["text_id"], split["article_id"]))
        own = np.repeat(split["article_id"], ids.shape[1])
        theirs = [article[text] if text is not None else None for text in ids.ravel()]
        same += sum(mine == other for mine, other in zip(own, theirs) if other is not None)
        total += sum(other is not None for other in theirs)
    return same / total if total else 0.0


def _cells(query: dict, neighbour: dict) -> dict:
    return {"text": table_cell(query["text"]), "article": table_cell(query["article"]),
            "neighbour_text": table_cell(neighbour["text"]), "neighbour_article": table_cell(neighbour["article"])}


def table_cell(text: str, chars: int = CELL_CHARS) -> str:
    """The first `chars` characters of `text`, safe inside a markdown table row: a `|` would end
    the cell, a newline the row, and `<` could open an HTML tag (`<unk>` would vanish)."""
    cut = text[:chars] + ("…" if len(text) > chars else "")
    return " ".join(cut.split()).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
