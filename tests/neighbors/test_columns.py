"""The build's neighbour columns, as a user reads them: exact within each split, by text_id, kept
through filter and shuffle, checked by --verify, kept or dropped by later runs as asked."""

import json
import shutil

import numpy as np
import pytest
from datasets import List, Value, load_from_disk

from elm_wikitext.core.errors import BuildError
from elm_wikitext.publish.verify import verify


def unit(split, column: str = "embedding") -> np.ndarray:
    vectors = np.asarray(split[column], dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_every_row_names_its_exact_nearest_rows_of_its_own_split(embedded_output):
    splits = load_from_disk(str(embedded_output))
    for name, split in splits.items():
        assert split.features["embedding_neighbors"] == List(Value("string"), length=8)
        assert split.features["embedding_neighbor_cosines"] == List(Value("float32"), length=8)
        vectors, ids = unit(split), split["text_id"]
        cosines = vectors @ vectors.T
        np.fill_diagonal(cosines, -np.inf)
        for row, (named, stored) in enumerate(zip(split["embedding_neighbors"], split["embedding_neighbor_cosines"])):
            # The brute force's order: cosine descending, ties by text_id; in a split of 8 rows or
            # fewer, every other row, then nulls.
            expected = sorted(range(len(split)), key=lambda j: (-cosines[row, j], ids[j]))[:min(8, len(split) - 1)]
            assert named == [ids[j] for j in expected] + [None] * (8 - len(expected)), (name, row)
            np.testing.assert_allclose(stored[:len(expected)], cosines[row, expected], atol=1e-5)
            assert stored[len(expected):] == [None] * (8 - len(expected))


def test_neighbours_are_found_by_text_id_after_a_shuffle_and_a_filter(embedded_output):
    split = load_from_disk(str(embedded_output))["train"]
    mine = split.shuffle(seed=3).filter(lambda row: row["token_count"] % 3 != 0)
    position = {text_id: i for i, text_id in enumerate(mine["text_id"])}
    vectors = unit(mine)
    found = 0
    for row, (named, stored) in enumerate(zip(mine["embedding_neighbors"], mine["embedding_neighbor_cosines"])):
        for text_id, cosine in zip(named, stored):
            if text_id in position:  # some were filtered out
                assert abs(vectors[row] @ vectors[position[text_id]] - cosine) < 1e-5
                found += 1
    assert found > len(mine)


def test_verify_refuses_a_neighbour_from_another_split(embedded_copy, rewrite_output):
    def leak(splits):
        stranger = splits["test"][0]["text_id"]
        splits["train"] = splits["train"].map(
            lambda row, index: {"embedding_neighbors": [stranger] + row["embedding_neighbors"][1:]
                                if index == 4 else row["embedding_neighbors"]}, with_indices=True)
        return splits

    with pytest.raises(BuildError, match="train: embedding_neighbors names rows not of this split"):
        verify(str(rewrite_output(embedded_copy, leak)))


def test_verify_refuses_neighbours_that_are_not_the_nearest(embedded_copy, rewrite_output):
    def reverse(splits):  # every row's neighbours, farthest first: the sample meets one whatever it draws
        splits["train"] = splits["train"].map(lambda row: {
            "embedding_neighbors": row["embedding_neighbors"][::-1],
            "embedding_neighbor_cosines": row["embedding_neighbor_cosines"][::-1]})
        return splits

    with pytest.raises(BuildError, match="embedding_neighbors are not sorted by cosine"):
        verify(str(rewrite_output(embedded_copy, reverse)))


def test_verify_refuses_stored_cosines_that_are_not_the_vectors(embedded_copy, rewrite_output):
    def shift(splits):
        splits["validation"] = splits["validation"].map(lambda row: {
            "embedding_neighbor_cosines": [None if c is None else c - 1e-3 for c in row["embedding_neighbor_cosines"]]})
        return splits

    with pytest.raises(BuildError, match="cosines differ from their float64 values"):
        verify(str(rewrite_output(embedded_copy, shift)))


def run(*args, capsys) -> tuple[int, str]:
    from elm_wikitext.cli import main

    capsys.readouterr()
    status = main([str(arg) for arg in args])
    return status, capsys.readouterr().err


def neighbour_record(output) -> dict | None:
    return (json.loads((output / "manifest.json").read_text())["stats"].get("neighbors") or {}).get("embedding")


def test_an_up_to_date_rerun_keeps_the_neighbours_and_neighbors_0_drops_them(embedded_copy, tiny_model, capsys):
    before = load_from_disk(str(embedded_copy))["train"]["embedding_neighbors"]
    record = neighbour_record(embedded_copy)
    status, err = run("--stage", "embed", "--model", tiny_model, "--output", embedded_copy, capsys=capsys)
    assert status == 0, err[-2000:]
    assert neighbour_record(embedded_copy) == record  # kept as they were: not searched again
    assert load_from_disk(str(embedded_copy))["train"]["embedding_neighbors"] == before
    status, err = run("--stage", "embed", "--model", tiny_model, "--output", embedded_copy, "--neighbors", "0",
                      capsys=capsys)
    assert status == 0, err[-2000:]
    assert neighbour_record(embedded_copy) is None
    assert not any(name.startswith("embedding_neighbor") for name in load_from_disk(str(embedded_copy))["train"].column_names)
    assert verify(str(embedded_copy))["columns"] == ["embedding"]


def test_another_k_searches_again(embedded_copy, tiny_model, tmp_path, capsys):
    output = tmp_path / "k3"
    shutil.copytree(embedded_copy, output)
    status, err = run("--stage", "embed", "--model", tiny_model, "--output", output, "--neighbors", "3", capsys=capsys)
    assert status == 0, err[-2000:]
    split = load_from_disk(str(output))["train"]
    assert split.features["embedding_neighbors"] == List(Value("string"), length=3)
    eight = load_from_disk(str(embedded_copy))["train"]["embedding_neighbors"]
    assert split["embedding_neighbors"] == [row[:3] for row in eight]
    assert neighbour_record(output)["k"] == 3
    verify(str(output))
