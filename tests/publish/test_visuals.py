"""The card's pictures of the vectors: the PCA map and the nearest neighbours, on small made-up
sets whose answers are known, and on the sample's full build."""

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk

from elm_wikitext.publish.visuals import (largest_articles, nearest_neighbours, pca_2d, save_embedding_map, table_cell,
                                          unit_vectors)


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


def test_cosines_do_not_depend_on_the_stored_length():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((30, 8))
    unit = tiny_splits(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), list(range(30)))
    scaled = tiny_splits(vectors * rng.uniform(0.1, 10, (30, 1)), list(range(30)), column="other")
    ours = nearest_neighbours(unit)
    assert [(p["row"], p["neighbour"]) for p in ours] == [
        (p["row"], p["neighbour"]) for p in nearest_neighbours(scaled, "other")]
    assert np.allclose(np.linalg.norm(unit_vectors(scaled, "other"), axis=1), 1, atol=1e-6)
    assert [p["row"] for p in ours] == [0, 14, 29]  # spread over the set, the first and last row included
    assert all(p["neighbour"] != p["row"] for p in ours)


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


def test_the_neighbours_of_the_build_are_the_closest_rows(embedded_output):
    splits = load_from_disk(str(embedded_output))
    stored = np.concatenate([np.asarray(split["embedding"], dtype=np.float64) for split in splits.values()])
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    pairs = nearest_neighbours(splits)
    assert len(pairs) == 3 and len({p["row"] for p in pairs}) == 3
    for pair in pairs:
        cosines = unit @ unit[pair["row"]]
        assert abs(pair["cosine"] - cosines[pair["neighbour"]]) < 1e-5
        cosines[pair["row"]] = -np.inf
        assert pair["neighbour"] != pair["row"] and cosines.max() <= pair["cosine"] + 1e-6
