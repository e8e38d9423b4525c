"""The validation gates refuse damaged outputs, naming what failed."""

import json

import numpy as np
import pytest
from datasets import load_from_disk

from elm_wikitext.errors import BuildError
from elm_wikitext.publish import MANIFEST_FILE
from elm_wikitext.verify import verify


def rewrite(output, change):
    """Apply `change` to the splits and save them back in place, keeping the manifest."""
    splits = load_from_disk(str(output))
    splits = change(splits)
    manifest = (output / MANIFEST_FILE).read_text()
    tmp = output.parent / "rewritten"
    splits.save_to_disk(str(tmp))
    (tmp / MANIFEST_FILE).write_text(manifest)
    return tmp


def test_a_good_output_passes(embedded_output):
    assert verify(str(embedded_output))["rows"]["train"] > 0


def test_rows_that_do_not_match_the_manifest_fail(embedded_copy):
    manifest = json.loads((embedded_copy / MANIFEST_FILE).read_text())
    manifest["splits"]["train"]["rows"] += 1
    (embedded_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match="train: .* rows, the manifest says"):
        verify(str(embedded_copy))


def test_a_vector_without_unit_norm_fails(embedded_copy):
    def scale_first(splits):
        def scale(row, index):
            return {"embedding": (np.asarray(row["embedding"]) * (2.0 if index == 0 else 1.0)).tolist()}
        splits["test"] = splits["test"].map(scale, with_indices=True, features=splits["test"].features)
        return splits

    with pytest.raises(BuildError, match="test: vectors without unit norm in rows"):
        verify(str(rewrite(embedded_copy, scale_first)))


def test_a_paragraph_in_two_splits_fails(embedded_copy):
    from datasets import concatenate_datasets

    def leak(splits):
        splits["test"] = concatenate_datasets([splits["test"], splits["train"].select([0])])
        return splits

    with pytest.raises(BuildError, match="text_id repeated.*in both train and test"):
        verify(str(rewrite(embedded_copy, leak)))


def test_vectors_of_the_wrong_rows_fail_the_sample(embedded_copy):
    def shuffle_vectors(splits):
        for name in splits:
            vectors = splits[name]["embedding"][:]
            rolled = vectors[1:] + vectors[:1]
            splits[name] = splits[name].remove_columns("embedding").add_column(
                "embedding", rolled, feature=splits[name].features["embedding"])
        return splits

    with pytest.raises(BuildError, match="re-embeds with cosine"):
        verify(str(rewrite(embedded_copy, shuffle_vectors)))
