"""The exact neighbour search equals a float64 brute force written here with numpy alone, on
every row: random vectors, crafted ties, crowds of duplicates, vectors of any length, many
blocks or one, one process or several."""

import numpy as np
import pytest
import torch

from elm_wikitext.neighbors.search import (BUDGET_BYTES, MARGIN, block_pairs, block_rows, candidates,
                                           merge_candidates, nearest, norms64)

CPU = torch.device("cpu")


def brute_force(vectors: np.ndarray, text_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's k nearest others by float64 cosine, ties by text_id: the reference."""
    unit = vectors.astype(np.float64) / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    cosines = unit @ unit.T
    np.fill_diagonal(cosines, -np.inf)
    rows = [sorted(range(len(unit)), key=lambda j: (-cosines[i, j], text_ids[j]))[:k] for i in range(len(unit))]
    index = np.array(rows)
    return index, np.take_along_axis(cosines, index, 1)


def assert_exact(vectors: np.ndarray, text_ids: np.ndarray, k: int, **options) -> int:
    """The issue's test: the same ids except among candidates whose float64 cosines differ by
    less than 1e-6, cosines within 1e-5. Returns how many rows the float64 search took."""
    index, cosines, searched = nearest(vectors, text_ids, k, CPU, **options)
    expected_index, expected = brute_force(vectors, text_ids, k)
    np.testing.assert_allclose(cosines, expected, atol=1e-5)
    unit = vectors.astype(np.float64) / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    for row in range(len(vectors)):
        differ = index[row] != expected_index[row]
        got = unit[index[row][differ]] @ unit[row]
        want = unit[expected_index[row][differ]] @ unit[row]
        assert np.abs(got - want).max(initial=0) < 1e-6, (row, index[row], expected_index[row])
    return searched


def ids(rows: int, seed: int = 0) -> np.ndarray:
    """Text ids in an order unrelated to the rows', so that ties by id differ from ties by row."""
    return np.array([f"{value:016x}" for value in np.random.default_rng(seed).permutation(rows) * 7919])


@pytest.mark.parametrize("budget", [2**15, BUDGET_BYTES], ids=["many-blocks", "one-block"])
def test_random_vectors_of_any_length_match_the_brute_force(budget):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 24)) * rng.uniform(0.1, 10, (300, 1))  # not normalized
    assert block_rows(300, 24, budget) < 300 or budget == BUDGET_BYTES
    assert_exact(vectors.astype(np.float32), ids(300), k=8, budget=budget)


def test_exact_ties_go_to_the_lower_text_id():
    # Rows along the axes: every pair of distinct axes is at cosine 0, so after its own copies
    # each row's neighbours are all tied and only text_id orders them.
    vectors = np.repeat(np.eye(12, dtype=np.float32), 3, axis=0)
    text_ids = ids(36, seed=3)
    index, cosines, _ = nearest(vectors, text_ids, 5, CPU)
    for row in range(36):
        copies = [j for j in range(36) if j != row and j // 3 == row // 3]
        rest = sorted((j for j in range(36) if j // 3 != row // 3), key=lambda j: text_ids[j])
        assert index[row].tolist() == sorted(copies, key=lambda j: text_ids[j]) + rest[:3]
        np.testing.assert_allclose(cosines[row], [1, 1, 0, 0, 0], atol=1e-12)


def test_a_crowd_of_duplicates_larger_than_the_margin_is_settled_in_float64():
    rng = np.random.default_rng(1)
    crowd = np.repeat(rng.standard_normal((1, 16)), 3 * MARGIN, axis=0)  # 24 rows, all at cosine 1
    vectors = np.concatenate([crowd, rng.standard_normal((100, 16))]).astype(np.float32)
    text_ids = ids(len(vectors), seed=4)
    searched = assert_exact(vectors, text_ids, k=8, budget=2**14)
    assert searched >= len(crowd)  # the float32 candidates could not tell which of the crowd come first
    # Copies tie exactly, in float64 too: each crowd row names the 8 others of lowest text_id.
    index, _, _ = nearest(vectors, text_ids, 8, CPU, budget=2**14)
    np.testing.assert_array_equal(index[:len(crowd)], brute_force(vectors, text_ids, 8)[0][:len(crowd)])


def test_near_ties_closer_than_float32_are_ordered_by_float64():
    rng = np.random.default_rng(2)
    base = rng.standard_normal(64)
    # Neighbours of row 0 whose cosines differ by about 1e-9: float32 cannot order them.
    near = base + 1e-3 * rng.standard_normal(64)
    offsets = np.linspace(0, 1e-7, 20)[:, None] * rng.standard_normal(64)
    vectors = np.concatenate([[base], near + offsets, rng.standard_normal((60, 64))]).astype(np.float32)
    assert_exact(vectors, ids(len(vectors), seed=5), k=8)


def test_a_split_of_k_rows_or_fewer_names_every_other_row_then_nothing():
    vectors = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    index, cosines, _ = nearest(vectors, ids(4), 8, CPU)
    assert (index[:, 3:] == -1).all() and np.isnan(cosines[:, 3:]).all()
    assert [sorted(row) for row in index[:, :3].tolist()] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    index, cosines, _ = nearest(vectors[:1], ids(1), 8, CPU)
    assert (index == -1).all() and np.isnan(cosines).all()


def test_processes_sharing_the_blocks_find_the_same_candidates_as_one():
    vectors = np.random.default_rng(4).standard_normal((200, 16)).astype(np.float32)
    block = block_rows(200, 16, 2**13)
    pairs = block_pairs(200, block)
    assert len(pairs) > 3
    norms = norms64(vectors, block)
    one = merge_candidates([candidates(vectors, norms, pairs, block, 12, CPU)], 12)
    shares = [candidates(vectors, norms, pairs[rank::3], block, 12, CPU) for rank in range(3)]  # processes.my_share
    merged = merge_candidates(shares, 12)
    np.testing.assert_array_equal(merged[0], one[0])
    assert all(set(a) == set(b) for a, b in zip(merged[1], one[1]))


def test_working_memory_does_not_grow_with_the_rows():
    for dim in (64, 2560):
        blocks = {block_rows(rows, dim) for rows in (100_000, 1_000_000, 10_000_000)}
        assert len(blocks) == 1
        block = blocks.pop()
        assert 8 * block * block + 8 * block * dim <= BUDGET_BYTES


def test_other_processes_get_nothing_back_and_the_main_one_decides():
    vectors = np.random.default_rng(5).standard_normal((50, 8)).astype(np.float32)
    assert nearest(vectors, None, 4, CPU) is None
