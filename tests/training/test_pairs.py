"""Pairs of neighbouring paragraphs for ELM tasks, read from the stored neighbours: the right
pairs, interpolated as documented, reproducible by seed, after a user's filter and shuffle."""

import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, load_from_disk

from elm_wikitext.core.errors import BuildError
from elm_wikitext.neighbors.columns import with_neighbors
from elm_wikitext.neighbors.search import nearest
from elm_wikitext.training.loading import shuffled_batches, slerp
from elm_wikitext.training.pairs import midpoint_batches, neighbor_positions, neighbors_of


@pytest.fixture(scope="module")
def split() -> Dataset:
    """600 rows of unit vectors (dim 64) with their 8 stored neighbours, as a build writes them."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = Dataset.from_dict({"text_id": [f"{i:016x}" for i in range(600)], "text": [f"paragraph {i}" for i in range(600)],
                              "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 64)})
    index, cosines, _ = nearest(vectors, np.asarray(rows["text_id"]), 8, torch.device("cpu"))
    return with_neighbors(rows, "embedding", 8, index, cosines)


def every_pair(loader) -> list[dict]:
    return [dict(zip(batch, values)) for batch in loader for values in zip(*[
        batch[name].tolist() if torch.is_tensor(batch[name]) else batch[name] for name in batch])]


def test_each_row_is_paired_with_one_of_its_stored_neighbours_at_alpha(split):
    pairs = every_pair(midpoint_batches(split, 64, seed=0, alpha=(0.3, 0.7)))
    assert sorted(pair["text_id_a"] for pair in pairs) == split["text_id"]  # an epoch: every row once
    by_id = {text_id: row for row, text_id in enumerate(split["text_id"])}
    vectors = torch.tensor(split["embedding"])
    for pair in pairs[:100]:
        a, b = by_id[pair["text_id_a"]], by_id[pair["text_id_b"]]
        assert pair["text_id_b"] in split[a]["embedding_neighbors"]
        assert (pair["text_a"], pair["text_b"]) == (f"paragraph {a}", f"paragraph {b}")
        assert 0.3 <= pair["alpha"] <= 0.7
        assert abs(pair["cosine"] - float(vectors[a] @ vectors[b])) < 1e-5
        expected = slerp(vectors[a], vectors[b], pair["alpha"])
        assert torch.allclose(torch.tensor(pair["embedding"]), expected, atol=1e-5)
    assert len({pair["text_id_b"] for pair in pairs}) > 300  # not always the nearest one


def test_lerp_pairs_are_renormalized_unit_vectors_between_the_two(split):
    batch = next(iter(midpoint_batches(split, 32, seed=1, how="lerp")))
    mixed = torch.lerp(batch["embedding_a"], batch["embedding_b"], batch["alpha"][:, None])
    assert torch.allclose(batch["embedding"], mixed / mixed.norm(dim=1, keepdim=True), atol=1e-6)


def test_the_same_seed_gives_the_same_pairs_and_another_seed_others(split):
    first, again = every_pair(midpoint_batches(split, 64, seed=5)), every_pair(midpoint_batches(split, 64, seed=5))
    assert first == again
    workers = every_pair(midpoint_batches(split, 64, seed=5, num_workers=2))  # pairs drawn in the workers
    assert workers == first
    assert every_pair(midpoint_batches(split, 64, seed=6)) != first


def test_after_a_filter_only_neighbours_still_there_are_drawn(split):
    kept = split.shuffle(seed=2).filter(lambda row: int(row["text_id"], 16) % 2 == 0)
    ids = set(kept["text_id"])
    pairs = every_pair(midpoint_batches(kept, 50, seed=0))
    assert pairs and all(pair["text_id_b"] in ids for pair in pairs)
    lonely = [row["text_id"] for row in kept if not ids & set(row["embedding_neighbors"])]
    assert len(pairs) == len(kept) - len(lonely)  # a row whose neighbours are all gone is left out


def test_neighbours_gathered_by_row_match_the_stored_ids(split):
    kept = split.shuffle(seed=4).select(range(400))
    found = neighbors_of(kept, [0, 1, 2])
    for row, positions in enumerate(found["positions"]):
        for text_id, position, vector in zip(kept[row]["embedding_neighbors"], positions, found["vectors"][row]):
            if position < 0:
                assert text_id not in kept["text_id"] and not vector.any()
            else:
                assert kept[int(position)]["text_id"] == text_id
                assert torch.equal(vector, torch.tensor(kept[int(position)]["embedding"]))
    assert neighbor_positions(kept, ["nothing", kept[7]["text_id"], None]).tolist() == [-1, 7, -1]


def test_a_split_without_neighbours_and_bad_settings_are_refused(split):
    with pytest.raises(BuildError, match="has no embedding_neighbors column.*--neighbors K"):
        midpoint_batches(split.remove_columns(["embedding_neighbors"]), 8, seed=0)
    with pytest.raises(BuildError, match="alpha=\\(0.8, 0.2\\) is not a range"):
        midpoint_batches(split, 8, seed=0, alpha=(0.8, 0.2))
    with pytest.raises(BuildError, match="how='cubic' is not an interpolation"):
        midpoint_batches(split, 8, seed=0, how="cubic")


def test_pairs_are_read_about_as_fast_per_row_as_shuffled_batches(split, tmp_path):
    """The issue's bar, loosely (shared machine): pairs read 2 rows a row, and interpolate."""
    split.save_to_disk(str(tmp_path / "split"))
    saved = load_from_disk(str(tmp_path / "split"))

    def seconds(loader) -> float:
        started = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - started

    plain = min(seconds(shuffled_batches(saved, 64, seed=0)) for _ in range(3))
    pairs = min(seconds(midpoint_batches(saved, 64, seed=0)) for _ in range(3))
    print("plain", plain, "pairs", pairs)
    assert pairs < 4 * plain + 0.05, (pairs, plain)
