"""The card's pictures of the vectors: the PCA map and the nearest neighbours, on small made-up
sets whose answers are known, and on the sample's full build."""

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk

from elm_wikitext.neighbors.columns import with_neighbors
from elm_wikitext.neighbors.search import nearest
from elm_wikitext.publish.visuals import (largest_articles, nearest_neighbours, neighbourhood_agreement, pca_2d,
                                          save_embedding_map, table_cell)


def tiny_splits(vectors: np.ndarray, articles: list[int], column: str = "embedding") -> DatasetDict:
    """Rows with the given vectors and article ids (titles repeat: two ids share one), split 2:1."""
    features = Features({"text": Value("string"), "article_id": Value("int32"), "article": Value("string"),
                         column: List(Value("float32"), length=vectors.shape[1])})
    rows = {"text": [f"paragraph {i} | of\narticle {a}" for i, a in enumerate(articles)], "article_id": articles,
            "article": [f"Title {a % 3}" for a in articles], column: vectors.astype(np.float32)}
    every = Dataset.from_dict(rows, features=features)
    cut = 2 * len(articles) // 3
    return DatasetDict(train=every.select(range(cut)), test=every.select(range(cut, len(articles))))


def test_pca_agrees_with_numpys_svd():
    rng = np.random.default_rng(0)
    vectors = (rng.standard_normal((200, 16)) * np.linspace(3, 0.1, 16)).astype(np.float32) + 5
    points, share = pca_2d(vectors)
    centred = vectors - vectors.mean(axis=0)
    _, singular, right = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(share, singular[:2] ** 2 / (singular ** 2).sum(), rtol=1e-4)
    assert share[0] >= share[1] > 0
    # The same projection, up to each component's sign (PCA leaves it free).
    np.testing.assert_allclose(np.abs(points), np.abs(centred @ right[:2].T), atol=1e-3)


def with_stored_neighbours(splits: DatasetDict, column: str = "embedding", k: int = 3) -> DatasetDict:
    """What the neighbours stage adds to each split (pipeline.py), on made-up splits."""
    out = {}
    for name, split in splits.items():
        if "text_id" not in split.column_names:
            split = split.add_column("text_id", [f"{i:016x}" for i in range(len(split))])
        vectors = np.asarray(split[column], dtype=np.float32)
        index, cosines, _ = nearest(vectors, np.asarray(split["text_id"]), k, torch.device("cpu"))
        out[name] = with_neighbors(split, column, k, index, cosines)
    return DatasetDict(out)


def test_the_table_shows_each_querys_stored_nearest_row_of_its_split():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((30, 8)) * rng.uniform(0.1, 10, (30, 1))  # cosines, whatever the length
    splits = with_stored_neighbours(tiny_splits(vectors, list(range(30)), column="other"), column="other")
    pairs = nearest_neighbours(splits, "other")
    assert [p["row"] for p in pairs] == [0, 14, 29]  # spread over the set, the first and last row included
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for pair in pairs:
        split = range(0, 20) if pair["row"] < 20 else range(20, 30)  # tiny_splits cuts 2:1
        others = [j for j in split if j != pair["row"]]
        assert pair["neighbour"] == max(others, key=lambda j: unit[pair["row"]] @ unit[j])
        assert abs(pair["cosine"] - unit[pair["row"]] @ unit[pair["neighbour"]]) < 1e-5
    assert nearest_neighbours(tiny_splits(vectors, list(range(30)))) == []  # built with --neighbors 0


def test_neighbourhood_agreement_counts_shared_neighbours_and_own_articles():
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((30, 8))
    articles = [i // 5 for i in range(30)]
    splits = tiny_splits(vectors, articles)
    splits = DatasetDict({name: split.add_column("same", split["embedding"]).cast_column(
        "same", split.features["embedding"]) for name, split in splits.items()})
    splits = with_stored_neighbours(with_stored_neighbours(splits), column="same")
    agreement = neighbourhood_agreement(splits, ["embedding", "same"])
    assert agreement["overlap"] == [{"first": "embedding", "second": "same", "overlap": 1.0}]  # one space twice
    named = [(article, split["article_id"][split["text_id"].index(text_id)])
             for split in splits.values()
             for article, row in zip(split["article_id"], split["embedding_neighbors"]) for text_id in row]
    assert agreement["same_article"]["embedding"] == sum(a == b for a, b in named) / len(named)


def test_largest_articles_are_counted_by_id_over_all_splits():
    articles = [5, 5, 1, 7, 7, 7, 2, 2, 1, 5, 8, 2]  # 5, 7 and 2 have three rows each, 1 two, 8 one
    ids, largest = largest_articles(tiny_splits(np.eye(12), articles), count=4)
    assert ids.tolist() == articles
    assert largest == [(2, "Title 2"), (5, "Title 2"), (7, "Title 1"), (1, "Title 1")]  # ties: the lower id


def test_a_table_cell_cannot_break_the_table():
    assert table_cell("a | b\nc  d <unk> e\\") == "a \\| b c d &lt;unk> e\\\\"
    long = table_cell("x" * 200)
    assert long == "x" * 120 + "…"


def test_the_map_is_a_png_of_any_embedding_column(tmp_path):
    rng = np.random.default_rng(2)
    splits = tiny_splits(rng.standard_normal((40, 8)), [i % 10 for i in range(40)], column="other")
    save_embedding_map(splits, tmp_path / "map.png", column="other")
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_neighbours_of_the_build_are_the_closest_rows_of_their_split(embedded_output):
    splits = load_from_disk(str(embedded_output))
    starts = np.cumsum([0] + [len(split) for split in splits.values()])
    stored = np.concatenate([np.asarray(split["embedding"], dtype=np.float64) for split in splits.values()])
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    pairs = nearest_neighbours(splits)
    assert len(pairs) == 3 and len({p["row"] for p in pairs}) == 3
    for pair in pairs:
        split = np.searchsorted(starts, pair["row"], side="right") - 1
        cosines = np.full(len(unit), -np.inf)
        cosines[starts[split]:starts[split + 1]] = unit[starts[split]:starts[split + 1]] @ unit[pair["row"]]
        assert abs(pair["cosine"] - cosines[pair["neighbour"]]) < 1e-5
        cosines[pair["row"]] = -np.inf
        assert pair["neighbour"] != pair["row"] and cosines.max() <= pair["cosine"] + 1e-6
