import json

import pyarrow as pa
import pytest
from datasets import load_from_disk

from elm_wikitext.text import clean_text, label_paragraphs, quality_reason


@pytest.mark.parametrize("raw, clean", [
    ("a population of 1 @,@ 204 in 2 @.@ 5 km", "a population of 1,204 in 2.5 km"),
    ("a state @-@ of @-@ the @-@ art ship", "a state-of-the-art ship"),
    ("the <unk> river , near <unk> .", "the river, near."),
    ("he said \" it is done \" ; then ( briefly ) left !", 'he said "it is done"; then (briefly) left!'),
    ("John 's boat did n't sink : it 's fine ?", "John's boat didn't sink: it's fine?"),
    ("  spaced   out  ", "spaced out"),
    ("the <unk> @-@ based design , a pre @-@ <unk> form", "the based design, a pre form"),
    # An odd number of quotes (here an inch mark) is left unpaired rather than paired wrongly.
    ('a 5 \' 10 " man said " go " twice', 'a 5 \' 10 " man said " go " twice'),
])
def test_clean_text_reads_as_prose(raw, clean):
    assert clean_text(raw) == clean


def test_quality_reasons():
    assert quality_reason("") == "empty"
    assert quality_reason("1,204; 3.5; 77 – 12, 9; 10 11 12") == "low_quality"
    assert quality_reason("A river in the north, 120 km long.") == ""


def test_each_line_is_a_paragraph_with_its_article_and_nested_section():
    # WikiText's layout: one paragraph per line, consecutive, blank lines only around headings.
    lines = pa.table({"text": [
        " ", " = Alpha = ", " ", " intro paragraph one ", " intro paragraph two ", " ", " = = History = = ",
        " ", " history text ", " ", " = = = Early days = = = ", " ", " early text ", " ",
        " = Beta = ", " ", " beta text ", " "]})
    out = label_paragraphs(lines).to_pylist()
    assert out == [
        {"text": "intro paragraph one", "article": "Alpha", "section": ""},
        {"text": "intro paragraph two", "article": "Alpha", "section": ""},
        {"text": "history text", "article": "Alpha", "section": "History"},
        {"text": "early text", "article": "Alpha", "section": "Early days"},
        {"text": "beta text", "article": "Beta", "section": ""},
    ]


def test_a_line_that_only_starts_like_a_heading_is_text_of_the_current_article():
    lines = pa.table({"text": [" = Alpha = ", " ", " = not a heading ", " ", " after it ", " "]})
    assert label_paragraphs(lines).to_pylist() == [
        {"text": "= not a heading", "article": "Alpha", "section": ""},
        {"text": "after it", "article": "Alpha", "section": ""},
    ]


def test_text_stage_on_the_sample(text_output):
    splits = load_from_disk(str(text_output))
    stats = json.loads((text_output / "manifest.json").read_text())["stats"]["text"]
    rows = [row for split in splits.values() for row in split]
    assert set(splits["train"].column_names) == {
        "text_id", "text", "article", "section", "token_count", "char_count"}
    # Every line is accounted for, and every paragraph is kept or dropped for a reason.
    assert stats["lines"] == stats["blank_lines"] + stats["heading_lines"] + stats["paragraph_lines"]
    assert stats["paragraphs"] == stats["kept"] + sum(stats["dropped"].values()) == len(rows) + sum(stats["dropped"].values())
    # The sample holds one numbers-only paragraph, one <unk>-and-punctuation one, one duplicate,
    # two short ones and one of over 2,000 tokens.
    assert stats["dropped"] == {"empty": 0, "low_quality": 2, "duplicate": 1, "too_short": 2, "too_long": 1}
    texts = [row["text"] for row in rows]
    assert len(set(texts)) == len(texts) == len({row["text_id"] for row in rows})
    assert all(100 <= row["token_count"] <= 2000 for row in rows)
    assert all(row["char_count"] == len(row["text"]) for row in rows)
    for artifact in ("@,@", "@.@", "@-@", "<unk>", " ,", " .", "( ", " 's", " n't", "  "):
        assert not any(artifact in text for text in texts), artifact
    assert any("Saint-Clément" in row["section"] for row in rows)
    # Each paragraph line is a paragraph, also where no blank line separates two (WikiText's layout).
    assert stats["paragraph_lines"] == stats["paragraphs"]


def test_token_count_includes_the_appended_end_of_text(text_output, tokenizer):
    row = load_from_disk(str(text_output))["train"][0]
    ids = tokenizer(row["text"])["input_ids"]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert row["token_count"] == len(ids)


def test_text_ids_are_stable_across_runs(text_output, options):
    from elm_wikitext.pipeline import text_stage

    options.seed = 7  # another split, same paragraphs
    splits, _ = text_stage(options, __import__("elm_wikitext.encode", fromlist=["x"]).load_tokenizer(options.model))
    first = {row["text_id"]: row["text"] for split in load_from_disk(str(text_output)).values() for row in split}
    second = {row["text_id"]: row["text"] for split in splits.values() for row in split}
    assert first == second


# A digest of the sample's paragraphs as the text steps of TEXT_VERSION make them. Changing what a
# step outputs fails this test until TEXT_VERSION is bumped (so that no cached result of the old
# code is reused) and the digest goes with it; the failure message gives both new values.
TEXT_REFERENCE_VERSION = 1
TEXT_REFERENCE = "30fd201fe2fcc99d"


def test_paragraphs_changed_only_with_text_version(options, tokenizer):
    import hashlib

    from datasets import Dataset

    from elm_wikitext.source import load_lines
    from elm_wikitext.text import TEXT_VERSION, build_paragraphs

    # Lines held in memory: datasets caches no map of them, so the steps run afresh here.
    lines = Dataset.from_dict({"text": load_lines(options.source, options.source_config)["text"]})
    paragraphs, stats = build_paragraphs(lines, tokenizer, options)
    rows = sorted(zip(paragraphs["text_id"], paragraphs["text"], paragraphs["article"],
                      paragraphs["section"], paragraphs["token_count"]))
    digest = hashlib.sha256(json.dumps([rows, stats], sort_keys=True).encode()).hexdigest()[:16]
    assert TEXT_VERSION == TEXT_REFERENCE_VERSION, (
        "TEXT_VERSION was bumped: set TEXT_REFERENCE_VERSION and TEXT_REFERENCE to the new values")
    assert digest == TEXT_REFERENCE, (
        f"the paragraphs changed: bump TEXT_VERSION in elm_wikitext/text.py, then set "
        f"TEXT_REFERENCE_VERSION = {TEXT_VERSION + 1} and TEXT_REFERENCE = {digest!r}")
