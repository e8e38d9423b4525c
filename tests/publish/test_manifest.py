"""The manifest's typed records read back exactly the JSON a build wrote, older builds' too."""

import json

from elm_wikitext.core.records import EmbedStats, Manifest, TextStats
from elm_wikitext.publish.output import MANIFEST_FILE


def test_a_manifest_reads_back_as_the_json_it_was(embedded_output):
    written = json.loads((embedded_output / MANIFEST_FILE).read_text())
    manifest = Manifest.from_json(written)
    embed = manifest.stats.embed["embedding"]  # one record per embedding column
    assert isinstance(manifest.stats.text, TextStats) and isinstance(embed, EmbedStats)
    assert embed.dim == 64 and embed.key == written["stats"]["embed"]["embedding"]["key"]
    assert embed.recipe()["pooling"] == "lasttoken" and embed.recipe()["normalize"] is True
    assert manifest.splits["train"].rows == written["splits"]["train"]["rows"]
    assert manifest.to_json() == written


def test_an_older_manifest_keeps_what_it_lacked_and_what_this_version_does_not_know(text_output):
    written = json.loads((text_output / MANIFEST_FILE).read_text())
    del written["stats"]["text"]["tokenizer_revision"], written["splits"]["train"]["files"]
    written["stats"]["text"]["a_later_count"] = 3
    manifest = Manifest.from_json(written)
    assert manifest.stats.embed is None and "embed" not in manifest.to_json()["stats"]
    text = manifest.stats.text
    assert text.tokenizer_revision is None and not text.recorded("tokenizer_revision") and text.recorded("source")
    assert manifest.splits["train"].files is None
    assert manifest.to_json() == written
    assert text.replaced(seconds=1.0).to_json() == {**written["stats"]["text"], "seconds": 1.0}


def test_a_manifest_of_one_column_from_before_columns_reads_as_the_embedding_column(embedded_output):
    written = json.loads((embedded_output / MANIFEST_FILE).read_text())
    record = written["stats"]["embed"].pop("embedding")
    del record["pooling"]  # as builds wrote it before the recipe held the pooling
    written["stats"]["embed"] = record
    manifest = Manifest.from_json(written)
    assert list(manifest.stats.embed) == ["embedding"] and manifest.stats.dims() == {"embedding": 64}
    assert manifest.stats.embed["embedding"].recipe()["pooling"] == "lasttoken"  # its only pooling then
    assert manifest.to_json() == written  # written back in the shape it was read (its checksum holds)
