"""The manifest's typed records read back exactly the JSON a build wrote; a manifest of another
format or shape is refused in one line, with the advice to rebuild it."""

import json

import pytest

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.manifest import read_manifest
from elm_wikitext.core.records import OUTPUT_FORMAT, EmbedStats, Manifest, TextStats
from elm_wikitext.publish.output import MANIFEST_FILE, manifest_checksum
from elm_wikitext.publish.verify import verify


def test_a_manifest_reads_back_as_the_json_it_was(embedded_output):
    written = json.loads((embedded_output / MANIFEST_FILE).read_text())
    manifest = Manifest.from_json(written)
    embed = manifest.stats.embed["embedding"]  # one record per embedding column
    assert isinstance(manifest.stats.text, TextStats) and isinstance(embed, EmbedStats)
    assert embed.dim == 64 and embed.key == written["stats"]["embed"]["embedding"]["key"]
    assert embed.recipe()["pooling"] == "lasttoken" and embed.recipe()["normalize"] is True
    assert manifest.splits["train"].rows == written["splits"]["train"]["rows"]
    assert manifest.to_json() == written


def test_a_text_stage_manifest_records_no_columns_and_no_card_command(text_output):
    written = json.loads((text_output / MANIFEST_FILE).read_text())
    assert written["stats"]["embed"] == {} and written["stats"]["neighbors"] == {}
    assert written["published_command"] is None and written["elm_wikitext_output"] == OUTPUT_FORMAT
    assert Manifest.from_json(written).to_json() == written


def sealed(manifest: dict) -> dict:
    """`manifest` with its checksum made anew, as a build of that content would have sealed it."""
    return {**manifest, "manifest_sha256": manifest_checksum(manifest)}


def format_one(manifest: dict) -> None:
    manifest["elm_wikitext_output"] = 1


def without_a_key(manifest: dict) -> None:
    del manifest["stats"]["text"]["tokenizer_revision"]


def with_an_unknown_key(manifest: dict) -> None:
    manifest["stats"]["embed"]["embedding"]["a_later_count"] = 3


def a_column_in_the_old_shape(manifest: dict) -> None:
    manifest["stats"]["embed"] = manifest["stats"]["embed"]["embedding"]  # one record, not one per column


def a_value_of_another_type(manifest: dict) -> None:
    manifest["splits"]["train"]["rows"] = "12"


@pytest.mark.parametrize("change, says", [
    (format_one, f"its manifest.json is of output format 1, and this version of elm-wikitext reads format {OUTPUT_FORMAT} only"),
    (without_a_key, "does not hold the records of format 2: stats.text lacks tokenizer_revision"),
    (with_an_unknown_key, "stats.embed.embedding has a_later_count, which this format does not know"),
    (a_column_in_the_old_shape, r"stats.embed.paragraphs is int, not dict"),
    (a_value_of_another_type, "splits.train.rows is str, not int"),
])
def test_a_manifest_of_another_format_is_refused_with_the_rebuild_advice(embedded_output, tmp_path, change, says):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    change(manifest)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(sealed(manifest)))
    with pytest.raises(BuildError, match=f"{tmp_path} is not a whole output of this build \\(.*{says}.*\\): nothing "
                                         f"its manifest.json says is trusted.*--stage all --drop-columns --output {tmp_path}"):
        read_manifest(tmp_path)


def test_verify_refuses_an_output_of_another_format_before_reading_its_data(text_output_copy):
    manifest = json.loads((text_output_copy / MANIFEST_FILE).read_text())
    format_one(manifest)
    (text_output_copy / MANIFEST_FILE).write_text(json.dumps(sealed(manifest)))
    with pytest.raises(BuildError, match=f"{text_output_copy} is not a whole output of this build .*output "
                                         f"format 1.*python build.py --stage all --drop-columns --output {text_output_copy}"):
        verify(str(text_output_copy))
