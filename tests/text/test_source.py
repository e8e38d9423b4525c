from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elm_wikitext.core.errors import BuildError
from elm_wikitext.text.source import load_lines

# One small WikiText copy: blank lines (" " as in WikiText, and a truly empty one) count as lines.
LINES = {
    "train": [" ", " = Alpha = ", " ", " alpha text ", " "],
    "validation": [" = Beta = ", "", " beta text "],
    "test": [" = Gamma = ", " gamma text ", " "],
}
ALL_LINES = LINES["train"] + LINES["validation"] + LINES["test"]
TOKEN_FILE = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"}


def write_tokens(directory: Path, lines: dict, suffix: str = ".tokens") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        name = TOKEN_FILE[split].replace(".tokens", suffix)
        (directory / name).write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    return directory


@pytest.mark.parametrize("config, suffix", [("wikitext-2-v1", ".tokens"), ("wikitext-2-raw-v1", ".raw"),
                                            ("wikitext-103-raw-v1", ".raw")])
def test_archive_files_pool_every_line_train_valid_test(tmp_path, config, suffix):
    lines = load_lines(str(write_tokens(tmp_path / "wikitext", LINES, suffix)), config)
    assert lines.column_names == ["text"]
    assert lines["text"] == ALL_LINES


def test_a_folder_of_both_archives_is_read_by_the_config(tmp_path):
    write_tokens(tmp_path, LINES, ".tokens")
    write_tokens(tmp_path, {split: [line.replace("text", "words") for line in rows]
                            for split, rows in LINES.items()}, ".raw")
    assert "alpha words" in " ".join(load_lines(str(tmp_path), "wikitext-2-raw-v1")["text"])
    assert "alpha text" in " ".join(load_lines(str(tmp_path), "wikitext-2-v1")["text"])


@pytest.mark.parametrize("config, suffix, message", [
    ("wikitext-2-raw-v1", ".tokens", r"holds the tokenized archive files \(wiki.\*.tokens\), not those of "
     r"--source-config wikitext-2-raw-v1: pass --source-config wikitext-2-v1"),
    ("wikitext-2-v1", ".raw", r"holds the raw archive files \(wiki.\*.raw\), not those of "
     r"--source-config wikitext-2-v1: pass --source-config wikitext-2-raw-v1"),
])
def test_the_other_configs_archive_is_refused_not_read_silently(tmp_path, config, suffix, message):
    write_tokens(tmp_path, LINES, suffix)
    with pytest.raises(BuildError, match=message):
        load_lines(str(tmp_path), config)


def test_hub_parquet_files_pool_train_validation_test_whatever_the_write_order(tmp_path):
    # Written test first: name order (test < train < validation) and write order both differ
    # from the Hub's split order.
    write_parquet(tmp_path, {split: LINES[split] for split in ("test", "validation", "train")})
    assert load_lines(str(tmp_path), "wikitext-2-v1")["text"] == ALL_LINES


def write_parquet(directory: Path, lines: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        pq.write_table(pa.table({"text": rows}), directory / f"{split}-00000-of-00001.parquet")
    return directory


def test_a_download_of_the_whole_hub_repo_reads_the_config_folder(tmp_path):
    # `hf download Salesforce/wikitext` holds one folder per config; pooling them would mix
    # raw and tokenized copies of the same text.
    write_parquet(tmp_path / "wikitext-2-v1", LINES)
    write_parquet(tmp_path / "wikitext-2-raw-v1", {split: ["raw " + line for line in rows]
                                                   for split, rows in LINES.items()})
    assert load_lines(str(tmp_path), "wikitext-2-v1")["text"] == ALL_LINES
    with pytest.raises(BuildError, match=r"holds parquet files in 2 folders \(wikitext-2-raw-v1, "
                                         r"wikitext-2-v1\): pass one of them as --source"):
        load_lines(str(tmp_path), "wikitext-103-v1")


def test_the_parquet_files_of_another_config_are_refused_naming_it(tmp_path):
    # `hf download ... --include "wikitext-2-v1/*"` then a default (raw) build would quietly
    # build the <unk> text; so would pointing --source at that folder itself.
    write_parquet(tmp_path / "wikitext-2-v1", LINES)
    for source in (tmp_path, tmp_path / "wikitext-2-v1"):
        with pytest.raises(BuildError, match=r"holds the parquet files of wikitext-2-v1, not of --source-config "
                                             r"wikitext-2-raw-v1: pass --source-config wikitext-2-v1"):
            load_lines(str(source), "wikitext-2-raw-v1")
    assert load_lines(str(tmp_path / "wikitext-2-v1"), "wikitext-2-v1")["text"] == ALL_LINES


def test_parquet_without_a_text_column_is_refused(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "train-00000-of-00001.parquet")
    with pytest.raises(BuildError, match=r"train-00000-of-00001.parquet has no 'text' column \(it has \['body'\]\)"):
        load_lines(str(tmp_path), "wikitext-2-v1")


def test_a_file_instead_of_a_directory_is_refused(tmp_path):
    file = write_tokens(tmp_path, LINES) / "wiki.train.tokens"
    with pytest.raises(BuildError, match="is a file: pass the directory that holds it"):
        load_lines(str(file), "wikitext-2-v1")


def test_missing_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuildError, match=r"--source \./nope does not exist: pass a directory"):
        load_lines("./nope", "wikitext-2-v1")


def test_directory_without_wikitext_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not wikitext\n")
    with pytest.raises(BuildError, match="holds no WikiText files: it needs wiki.train.tokens"):
        load_lines(str(tmp_path), "wikitext-2-v1")


def test_an_empty_token_file_beside_others_adds_no_lines(tmp_path):
    write_tokens(tmp_path, LINES)
    (tmp_path / "wiki.test.tokens").write_bytes(b"")
    assert load_lines(str(tmp_path), "wikitext-2-v1")["text"] == LINES["train"] + LINES["validation"]


@pytest.mark.parametrize("content", [b"", b" \n\n \n"], ids=["empty files", "blank lines"])
def test_source_without_text_is_refused(tmp_path, content):
    write_tokens(tmp_path, LINES)
    for name in TOKEN_FILE.values():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(BuildError, match="holds no text: point it at a non-empty WikiText copy"):
        load_lines(str(tmp_path), "wikitext-2-v1")


def test_source_of_blank_lines_only_is_refused(tmp_path):
    write_tokens(tmp_path, {split: [" ", "", " "] for split in LINES})
    with pytest.raises(BuildError, match="holds no text: point it at a non-empty WikiText copy"):
        load_lines(str(tmp_path), "wikitext-2-v1")


def test_bytes_that_are_not_utf8_are_named_by_file_and_line(tmp_path):
    write_tokens(tmp_path, LINES)
    bad = tmp_path / "wiki.valid.tokens"
    bad.write_bytes(b" = Beta = \n \n caf\xe9 latin-1 \n")
    with pytest.raises(BuildError) as refused:
        load_lines(str(tmp_path), "wikitext-2-v1")
    assert f"{bad} line 3 is not UTF-8" in str(refused.value)
    assert "re-encode the file as UTF-8" in str(refused.value)


def break_file(file: Path, how: str) -> None:
    file.unlink()
    if how == "a dangling symlink":
        file.symlink_to(file.parent / "gone.tokens")
    elif how == "a symlink loop":
        file.symlink_to(file)
    else:
        file.mkdir()


@pytest.mark.parametrize("how", ["a dangling symlink", "a symlink loop", "a directory"])
def test_an_archive_file_that_cannot_be_read_is_named_not_skipped(tmp_path, how):
    bad = write_tokens(tmp_path, LINES) / "wiki.valid.tokens"
    break_file(bad, how)
    with pytest.raises(BuildError, match=f"{bad} is a (symlink to nothing readable|directory)"):
        load_lines(str(tmp_path), "wikitext-2-v1")


def test_archive_and_parquet_files_together_are_refused_naming_both(tmp_path):
    write_parquet(write_tokens(tmp_path, LINES), LINES)
    with pytest.raises(BuildError, match=r"both WikiText archive files \(wiki.train.tokens\) and parquet files "
                                         r"\(test-00000-of-00001.parquet\): pass a folder holding only one"):
        load_lines(str(tmp_path), "wikitext-2-v1")


@pytest.mark.parametrize("column, says", [
    (pa.array([1, 2, 3]), "a 'text' column of int64, not of strings"),
    (pa.array([b" = Alpha = ", b" text "]), "a 'text' column of binary, not of strings"),
    (pa.array([None, " = Alpha = ", " text "], pa.string()), "1 null values in its 'text' column"),
], ids=["int", "binary", "starts with a null"])
def test_a_parquet_text_column_that_is_not_lines_of_text_is_refused(tmp_path, column, says):
    pq.write_table(pa.table({"text": column}), tmp_path / "train-00000-of-00001.parquet")
    with pytest.raises(BuildError, match=f"train-00000-of-00001.parquet has {says}"):
        load_lines(str(tmp_path), "wikitext-2-v1")
