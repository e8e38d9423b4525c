"""The validation gates refuse damaged outputs, naming what failed."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from elm_wikitext.core.errors import BuildError
from elm_wikitext.publish.output import MANIFEST_FILE, manifest_checksum
from elm_wikitext.publish.verify import verify


def test_a_good_output_passes_every_gate_and_the_command_line_names_them(embedded_output, capsys):
    from elm_wikitext.cli import main

    assert main(["--verify", str(embedded_output)]) == 0
    printed = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    # A summary to read; the same report as JSON in the log, for scripts.
    log_text = Path(printed["log"].split()[0]).read_text()
    report = json.loads(log_text[log_text.index("verify report: ") + 15:].splitlines()[0])
    splits, manifest = load_from_disk(str(embedded_output)), json.loads((embedded_output / MANIFEST_FILE).read_text())
    assert printed["verified"].strip() == f"{embedded_output}: every gate passed"
    assert printed["rows"].strip() == ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    assert printed["gates"].strip() == "schema, counts, files, vectors, uniqueness, neighbours, sample"
    assert printed["sample"].strip().startswith(
        f"{report['sample_rows']} rows embedded again by sentence-transformers (seed {report['sample_seed']})")
    assert "(at least embedding 0.99999)" in printed["sample"] and "s loading the model" in printed["sample"]
    assert report["rows"] == {name: len(split) for name, split in splits.items()} == {
        name: entry["rows"] for name, entry in manifest["splits"].items()}
    assert [gate.split()[0] for gate in report["gates"]] == [
        "schema", "counts", "files", "vectors", "uniqueness", "neighbours", "sample"]
    assert report["sample_rows"] == sum(min(8, len(split)) for split in splits.values())
    assert report["min_cosine_allowed"] == {"embedding": 0.99999}  # float32, on this CPU
    assert 0.99999 <= report["lowest_sample_cosine"] <= 1.0001


def test_rows_that_do_not_match_the_manifest_fail(embedded_copy):
    manifest = json.loads((embedded_copy / MANIFEST_FILE).read_text())
    manifest["splits"]["train"]["rows"] += 1
    manifest["manifest_sha256"] = manifest_checksum(manifest)  # sealed, as a build that counted wrong would
    (embedded_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match="train: .* rows, the manifest says"):
        verify(str(embedded_copy))


def test_a_vector_without_unit_norm_fails(embedded_copy, rewrite_output):
    def scale_first(splits):
        def scale(row, index):
            return {"embedding": (np.asarray(row["embedding"]) * (2.0 if index == 0 else 1.0)).tolist()}
        splits["test"] = splits["test"].map(scale, with_indices=True, features=splits["test"].features)
        return splits

    with pytest.raises(BuildError, match="test: embedding vectors without unit norm in rows"):
        verify(str(rewrite_output(embedded_copy, scale_first)))


def test_a_paragraph_in_two_splits_fails(embedded_copy, rewrite_output):
    from datasets import concatenate_datasets

    def leak(splits):
        splits["test"] = concatenate_datasets([splits["test"], splits["train"].select([0])])
        return splits

    with pytest.raises(BuildError, match="text_id repeated.*in both train and test"):
        verify(str(rewrite_output(embedded_copy, leak)))


def test_vectors_of_the_wrong_rows_fail_the_neighbours_then_the_sample(embedded_copy, rewrite_output):
    def shuffle_vectors(splits):
        for name in splits:
            vectors = splits[name]["embedding"][:]
            rolled = vectors[1:] + vectors[:1]
            splits[name] = splits[name].remove_columns("embedding").add_column(
                "embedding", rolled, feature=splits[name].features["embedding"])
        return splits

    # The stored neighbours no longer fit the vectors: the cheap gate says so first.
    with pytest.raises(BuildError, match="embedding_neighbors cosines differ from their float64 values"):
        verify(str(rewrite_output(embedded_copy, shuffle_vectors)))

    def without_neighbours(splits):  # as a --neighbors 0 build of these vectors would be
        return shuffle_vectors(splits.remove_columns(["embedding_neighbors", "embedding_neighbor_cosines"]))

    rewritten = rewrite_output(embedded_copy, without_neighbours)
    manifest = json.loads((rewritten / MANIFEST_FILE).read_text())
    manifest["stats"]["neighbors"] = {}
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (rewritten / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match=r"differ from SentenceTransformer\(model\).encode_document .* "
                                         r"train row \w+ \(embedding\): cosine"):
        verify(str(rewritten))


def test_files_changed_after_the_build_fail(embedded_copy, rewrite_output):
    def edit_text(splits):
        splits["test"] = splits["test"].map(
            lambda row, index: {"section": row["section"] + ("!" if index == 0 else "")}, with_indices=True)
        return splits

    with pytest.raises(BuildError, match="test: its files differ from the SHA-256 in the manifest"):
        verify(str(rewrite_output(embedded_copy, edit_text, update_checksums=False)))


def test_a_text_id_that_is_not_its_texts_fails(embedded_copy, rewrite_output):
    def relabel(splits):
        splits["train"] = splits["train"].map(
            lambda row, index: {"text_id": "0" * 16 if index == 2 else row["text_id"]}, with_indices=True)
        return splits

    with pytest.raises(BuildError, match="train: text_id is not the SHA-256 of the text in rows 0000000000000000"):
        verify(str(rewrite_output(embedded_copy, relabel)))


def test_a_missing_vector_is_named_not_a_crash(embedded_copy, rewrite_output):
    import pyarrow as pa
    from datasets import Dataset

    def drop_vector(splits):
        test = splits["test"]
        vectors = test["embedding"][:]
        vectors[1] = None  # the column keeps its fixed size: only this row is null
        column = pa.array(vectors, pa.list_(pa.float32(), len(vectors[0])))
        splits["test"] = Dataset(test.data.table.set_column(
            test.column_names.index("embedding"), "embedding", column), info=test.info)
        return splits

    with pytest.raises(BuildError, match="test: rows whose embedding is not 64 values"):
        verify(str(rewrite_output(embedded_copy, drop_vector)))


def test_a_paragraph_split_passes_though_its_articles_span_splits(sample_dir, tiny_model, tmp_path):
    from elm_wikitext.cli import main

    output = tmp_path / "out"
    assert main(["--source", str(sample_dir), "--model", tiny_model, "--output", str(output),
                 "--split-by", "paragraph"]) == 0
    splits = load_from_disk(str(output))
    assert set(splits["train"]["article"]) & set(splits["test"]["article"])  # what --split-by paragraph means
    assert verify(str(output))["rows"]["test"] == len(splits["test"])


def test_a_users_map_leaves_cache_files_that_do_not_fail_the_checksum(embedded_copy):
    train = load_from_disk(str(embedded_copy))["train"]
    train.map(lambda row: {"length": len(row["text"])})  # datasets caches this beside the split's files
    assert any(p.name.startswith("cache-") for p in (embedded_copy / "train").iterdir())
    assert verify(str(embedded_copy))["rows"]["train"] == len(train)


def test_an_edited_manifest_fails(embedded_copy):
    manifest = json.loads((embedded_copy / MANIFEST_FILE).read_text())
    manifest["stats"]["text"]["min_tokens"] = 50  # a claim the data was not built with
    (embedded_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match="its manifest.json was changed since the build: it does not match its "
                                         "manifest_sha256.*python build.py --stage all --drop-columns --output"):
        verify(str(embedded_copy))


def test_verify_from_elsewhere_and_with_moved_weights(text_output_copy, tiny_model, tmp_path, monkeypatch, capsys):
    import shutil

    from elm_wikitext.cli import main

    def sample_seed() -> int:
        return int(re.search(r"\nsample: .*\(seed (\d+)\)", capsys.readouterr().out).group(1))

    work = tmp_path / "work"
    shutil.copytree(tiny_model, work / "model")
    monkeypatch.chdir(work)  # a relative --model, as a user types it
    assert main(["--stage", "embed", "--model", "model", "--output", str(text_output_copy)]) == 0
    manifest = json.loads((text_output_copy / MANIFEST_FILE).read_text())
    assert manifest["stats"]["embed"]["embedding"]["model"] == str(work / "model")  # stored resolved
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["--verify", str(text_output_copy)]) == 0  # found from another directory
    seeds = [sample_seed()]
    (work / "model").rename(tmp_path / "moved")
    assert main(["--verify", str(text_output_copy)]) == 2
    capsys.readouterr()
    assert main(["--verify", str(text_output_copy), "--model", str(tmp_path / "moved")]) == 0
    seeds.append(sample_seed())
    assert seeds[0] != seeds[1]  # a sample drawn afresh each run
