import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import Dataset, load_from_disk

from elm_wikitext.options import BuildOptions
from elm_wikitext.pipeline import text_params
from elm_wikitext.text.paragraphs import (build_paragraphs, clean_text, line_kinds, prepare_paragraphs, quality_reason,
                                          visible_text)
from elm_wikitext.text.source import load_lines


@pytest.mark.parametrize("raw, clean", [
    ("a population of 1 @,@ 204 in 2 @.@ 5 km", "a population of 1,204 in 2.5 km"),
    ("a state @-@ of @-@ the @-@ art ship", "a state-of-the-art ship"),
    ("he said \" it is done \" ; then ( briefly ) left !", 'he said "it is done"; then (briefly) left!'),
    ("John 's boat did n't sink : it 's fine ?", "John's boat didn't sink: it's fine?"),
    ("  spaced   out  ", "spaced out"),
    # WikiText's own clitics and elided names, straight and curly.
    ("we don 't know , they weren 't , Chang 'an , O 'Neil", "we don't know, they weren't, Chang'an, O'Neil"),
    ("I ’ m sure Route 12 ’ s end", "I’m sure Route 12’s end"),
    # Plural possessives, single-quoted phrases, decades; `its` is no plural.
    ("the Knights ' coach , the series ' Rookie of the Year", "the Knights' coach, the series' Rookie of the Year"),
    ("was ' Angel of Death ' , and ' turf ' in the ' 70s", "was 'Angel of Death', and 'turf' in the '70s"),
    ("for its ' spare , patient ' style", "for its 'spare, patient' style"),
    ("“ could have risen ” and ‘ Where It 's At ’ .", "“could have risen” and ‘Where It's At’."),
    # Times, ratios, ranges, currencies, degrees, coordinates, slashes, ampersands, ellipses.
    ("at 18 : 05 , 3 : 1 , 5 – 6 kg", "at 18:05, 3:1, 5–6 kg"),
    ("$ 2 @.@ 5 million , ¥ 500 , ₤ 3 , ( ~ US $ 200 )", "$2.5 million, ¥500, ₤3, (~US$200)"),
    ("90 ° F ( 32 ° C ) at 57 ° 53 ′ N , − 10 ° C", "90 °F (32 °C) at 57°53′N, −10 °C"),
    ("the U.S. ' s entry , Acme Inc. 's ships", "the U.S.'s entry, Acme Inc.'s ships"),
    ("and / or , R & B , Dr. Hook & the Band", "and/or, R&B, Dr. Hook & the Band"),
    ("the water ... [ ... ] and M ‑ 12", "the water ... [...] and M‑12"),
    # Feet and inches are no quotes; an odd quote left open continues past the line.
    ('a 5 \' 10 " man said " go " twice', 'a 5\'10" man said "go" twice'),
    ('" Make You Happy ( Live )', '"Make You Happy (Live)'),
    # `<unk>` (tokenized configs) stays a visible word: no number shortened, no words glued.
    ("at 16 @,@ <unk> vehicles ( 1 @,@ <unk> @.@ 18 km2 ) $ <unk> million",
     "at 16,<unk> vehicles (1,<unk>.18 km2) $<unk> million"),
    ("the <unk> @-@ based design , <unk> 's pre @-@ <unk> form", "the <unk>-based design, <unk>'s pre-<unk> form"),
    ("the <unk> ' practice . The ' tide @-@ <unk> ' are", "the <unk>' practice. The 'tide-<unk>' are"),
])
def test_clean_text_reads_as_prose(raw, clean):
    assert clean_text(raw) == clean


def test_quality_reasons():
    assert quality_reason("") == "empty"
    assert quality_reason("1,204; 3.5; 77 – 12, 9; 10 11 12") == "low_quality"
    assert quality_reason("<unk> <unk>, <unk>. <unk>; <unk>") == "low_quality"
    assert quality_reason("A river in the north, 120 km long.") == ""
    # More than a tenth of the words unknown: holes, not prose.
    assert quality_reason("the <unk> of <unk> rises in the <unk> hills") == "unknown_words"
    assert quality_reason("the <unk> of Brann rises in the high hills north of the old town") == ""


def labelled(lines: pa.Table, tokenizer) -> pa.Table:
    """The paragraphs of these lines, read in batches of two lines: what a heading says reaches
    the paragraphs of later batches."""
    from elm_wikitext.text import paragraphs as text

    text.BATCH_LINES, before = 2, text.BATCH_LINES
    try:
        paragraphs, counts = prepare_paragraphs(Dataset(lines), tokenizer, text_params(BuildOptions()))
    finally:
        text.BATCH_LINES = before
    assert counts["lines"] == counts["blank_lines"] + counts["heading_lines"] + counts["paragraph_lines"]
    assert counts["paragraph_lines"] == len(paragraphs)
    return paragraphs.select_columns(["text", "article_id", "article", "section"]).with_format("arrow")[:]


def test_each_line_is_a_paragraph_with_its_article_and_nested_section(tokenizer):
    # WikiText's layout: one paragraph per line, consecutive, blank lines only around headings.
    lines = pa.table({"text": [
        " ", " = Alpha = ", " ", " intro paragraph one ", " intro paragraph two ", " ", " = = History = = ",
        " ", " history text ", " ", " = = = Early days = = = ", " ", " early text ", " ",
        " = Beta = ", " ", " beta text ", " "]})
    out = labelled(lines, tokenizer).to_pylist()
    assert out == [
        {"text": "intro paragraph one", "article_id": 1, "article": "Alpha", "section": ""},
        {"text": "intro paragraph two", "article_id": 1, "article": "Alpha", "section": ""},
        {"text": "history text", "article_id": 1, "article": "Alpha", "section": "History"},
        {"text": "early text", "article_id": 1, "article": "Alpha", "section": "Early days"},
        {"text": "beta text", "article_id": 2, "article": "Beta", "section": ""},
    ]


def test_a_line_that_only_starts_like_a_heading_is_text_of_the_current_article(tokenizer):
    lines = pa.table({"text": [" = Alpha = ", " ", " = not a heading ", " ", " after it ", " "]})
    assert labelled(lines, tokenizer).to_pylist() == [
        {"text": "= not a heading", "article_id": 1, "article": "Alpha", "section": ""},
        {"text": "after it", "article_id": 1, "article": "Alpha", "section": ""},
    ]


def test_articles_are_told_apart_by_place_and_never_unnamed(tokenizer):
    # Two articles of one title stay two; a title that cleans to nothing gets a readable name.
    lines = pa.table({"text": [" = Twin = ", " one ", " = Twin = ", " two ", " = = ", " three "]})
    rows = labelled(lines, tokenizer).to_pydict()
    assert rows["article_id"] == [1, 2, 3]
    assert rows["article"] == ["Twin", "Twin", "Untitled article 3"]


def test_byte_order_marks_and_control_characters_never_reach_the_text(tokenizer):
    lines = pa.table({"text": ["\ufeff = Alpha = ", " a\x00b \x07 bell\ttab\x1b[0m ", " = Beta\x00 = ", " c "]})
    out = labelled(lines, tokenizer).to_pydict()
    assert list(zip(out["article"], out["text"])) == [("Alpha", "a b bell tab [0m"), ("Beta", "c")]


def test_text_stage_on_the_sample(text_output):
    splits = load_from_disk(str(text_output))
    stats = json.loads((text_output / "manifest.json").read_text())["stats"]["text"]
    rows = [row for split in splits.values() for row in split]
    assert set(splits["train"].column_names) == {
        "text_id", "text", "article_id", "article", "section", "token_count", "char_count"}
    # Every line is accounted for, and every paragraph is kept or dropped for a reason.
    assert stats["lines"] == stats["blank_lines"] + stats["heading_lines"] + stats["paragraph_lines"]
    assert stats["paragraphs"] == stats["kept"] + sum(stats["dropped"].values()) == len(rows) + sum(stats["dropped"].values())
    # The sample holds two numbers-and-punctuation paragraphs, one duplicate, two short ones and
    # one of over 2,000 tokens; the raw config (the default) has no unknown words.
    assert stats["dropped"] == {"empty": 0, "low_quality": 2, "unknown_words": 0, "duplicate": 1,
                                "too_short": 2, "too_long": 1}
    assert stats["raw"] and stats["unknown_words"] == {"words": 0, "paragraphs": 0}
    texts = [row["text"] for row in rows]
    assert len(set(texts)) == len(texts) == len({row["text_id"] for row in rows})
    assert all(100 <= row["token_count"] <= 2000 for row in rows)
    assert all(row["char_count"] == len(row["text"]) for row in rows)
    # (An ellipsis keeps its spaces, and `its 'spare'` opens a quote.)
    for artifact in ("@.@", "<unk>", " ,", r" \.(?!\.\.)", r"\( ", r" 's\b", r" '\w+ '", " n't", r" 't\b", "  "):
        assert not any(re.search(artifact, text) for text in texts), artifact
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
    splits, _ = text_stage(options, __import__("elm_wikitext.core.tokens", fromlist=["x"]).load_tokenizer(options.model))
    first = {row["text_id"]: row["text"] for split in load_from_disk(str(text_output)).values() for row in split}
    second = {row["text_id"]: row["text"] for split in splits.values() for row in split}
    assert first == second


# The sample's last articles hold every case WikiText's tokenization makes hard, in both configs:
# the tokenized one writes these words as <unk>.
BAND = [
    "Orvane Teluk is a folk-rock band formed in the late '70s by three students at the conservatory "
    "in Chang'an Street, a district the locals call 'the Warren'. The band's first manager, Denis "
    "O'Hara, later said that he \"didn't think they'd last a year\", and the members themselves admit "
    "they weren't sure either. The Knights' coach, who lent them a rehearsal room, recalled that "
    "'they played loud but never late'. Critics have described the group's sound as a blend of '60s "
    "harmony pop and the dreln music of the islands, and the players' instruments include a fiddle, "
    "a bouzouki and a kettledrum.",
    "The band's breakthrough came at a festival on 14 August 1981, where they took the stage at 18:05 "
    "and played for 95 minutes to a crowd the organisers put at 16,400. The following tour covered "
    "(1,204.18 km) by bus, earned $12 million in North America and ¥500 million in Japan, and ended "
    "with a charity concert in London that raised ₤3,000 ... or so the press reported. Tickets cost "
    "5–10 dollars, the stage was lit at a ratio of 3:1 front to back, and the hall's temperature "
    "reached 31 °C (88 °F) by the encore.",
    "In a 1999 interview the singer said: “I’m proud of the old songs, but I don’t play them much "
    "now”. Her favourite among them is ‘Salt Road’, a slow ballad in B♭ that the band recorded in "
    "one take. The group's later albums mixed folk with R&B and soul/gospel influences, and the 2004 "
    "record [...] drew praise for its 'spare, patient' arrangements—a change from the fast and/or "
    "loud style of their youth. The band's archive, including tapes, letters and posters, was given "
    "to the university library in 2011, where it fills some 40 boxes of material.",
]
UNKNOWN_IN_TOKENS = re.compile(r"\b(?:Orvane|Teluk|Warren|dreln|kettledrum|400|204|12)\b")
CONFIGS = {"wikitext-2-raw-v1": "raw", "wikitext-2-v1": "tokens"}


@pytest.fixture(scope="module")
def sample_paragraphs(sample_dir, tokenizer, tiny_model):
    """Each config's kept paragraphs of the sample and their statistics, through the text steps.
    The lines are held in memory: datasets caches no map of them, so the steps run afresh here
    (a map cached by an earlier version of the code is never what is tested)."""
    built = {}
    for config, kind in CONFIGS.items():
        options = BuildOptions(source=str(sample_dir), source_config=config, model=tiny_model)
        lines = Dataset.from_dict({"text": load_lines(str(sample_dir), config)["text"]})
        built[kind] = build_paragraphs(lines, tokenizer, text_params(options))
    return built


@pytest.mark.parametrize("kind", CONFIGS.values())
def test_the_sample_reads_exactly_as_its_prose_in_both_configs(sample_paragraphs, kind):
    paragraphs, stats = sample_paragraphs[kind]
    title = "Orvane Teluk" if kind == "raw" else "<unk> <unk>"
    band = [row for row in paragraphs if row["article"] == title]
    expected = BAND if kind == "raw" else [UNKNOWN_IN_TOKENS.sub("<unk>", text) for text in BAND]
    assert [row["text"] for row in band] == expected
    assert [row["section"] for row in band] == ["", "", "Later years"]
    if kind == "tokens":  # counted for the manifest and the card
        assert stats["unknown_words"]["words"] == sum(row["text"].count("<unk>") for row in paragraphs) > 0


def test_worker_processes_make_the_same_paragraphs_as_one_process(sample_paragraphs, sample_dir, tokenizer,
                                                                  tiny_model):
    # A large source is cleaned by worker processes (--num-proc, or one per core by default):
    # each gets a share of the lines, and the headings of every other share.
    from elm_wikitext.text import paragraphs as text

    options = BuildOptions(source=str(sample_dir), model=tiny_model, num_proc=2)
    # Lines held in memory: datasets caches no map of them, so the workers run here.
    lines = Dataset.from_dict({"text": load_lines(str(sample_dir), options.source_config)["text"]})
    text.BATCH_LINES, before = 50, text.BATCH_LINES  # several batches per worker
    try:
        paragraphs, stats = build_paragraphs(lines, tokenizer, text_params(options))
    finally:
        text.BATCH_LINES = before
    one_process, one_stats = sample_paragraphs["raw"]
    assert stats == one_stats
    assert paragraphs.to_list() == one_process.to_list()


def test_articles_of_one_title_stay_two_articles(sample_paragraphs):
    paragraphs, _ = sample_paragraphs["raw"]
    ids = {row["article_id"] for row in paragraphs if row["article"] == "Harrowmere"}
    assert len(ids) == 2
    assert all(row["article"] for row in paragraphs)


def source_lines(sample_dir: Path, kind: str) -> list[str]:
    """The sample's paragraph lines, in the order the text stage pools them."""
    lines = [line for name in ("train", "valid", "test")
             for line in (sample_dir / f"wiki.{name}.{kind}").read_text(encoding="utf-8").split("\n")]
    table = pa.table({"text": lines})
    level = line_kinds(table).column("level").to_numpy()
    return [text for text, kind in zip(visible_text(table).to_pylist(), level) if kind == 0]


def words_and_numbers(text: str) -> Counter:
    return Counter(re.findall(r"[^\W_]+", text))


def test_every_raw_line_keeps_exactly_its_letters_and_digits(sample_dir):
    # No word added, dropped, split, glued or reordered: the runs of letters and digits of each
    # source line are those of its paragraph, in the same order.
    for line in source_lines(sample_dir, "raw"):
        clean = clean_text(line)
        assert re.findall(r"[^\W_]+", clean) == re.findall(r"[^\W_]+", line), line
        assert words_and_numbers(clean) == words_and_numbers(line)


def test_no_number_of_a_tokenized_paragraph_is_missing_from_its_raw_line(sample_dir):
    # A number with an unknown part reads `16,<unk>`: with <unk> standing for the hidden digits,
    # it must be a number of the same line's raw text, never a shorter or merged one.
    number = re.compile(r"(?:\d|<unk>)+(?:[.,:–](?:\d|<unk>)+)*")
    pairs = zip(source_lines(sample_dir, "tokens"), source_lines(sample_dir, "raw"))
    checked = 0
    for tokens_line, raw_line in pairs:
        raw = clean_text(raw_line)
        for found in number.findall(clean_text(tokens_line)):
            if not re.search(r"\d", found):
                continue
            pattern = "[^\\W_]+".join(re.escape(part) for part in found.split("<unk>"))
            assert re.search(rf"(?<![\d.,]){pattern}(?!\d|[.,]\d)", raw), (found, raw_line)
            checked += 1
    assert checked > 100


# A digest of the sample's paragraphs as the text steps of TEXT_VERSION make them. Changing what a
# step outputs fails this test until TEXT_VERSION is bumped (so that no cached result of the old
# code is reused) and the digest goes with it; the failure message gives both new values.
TEXT_REFERENCE_VERSION = 2
TEXT_REFERENCE = "8e9b5f2d72fa6a6a"


def test_paragraphs_changed_only_with_text_version(sample_paragraphs):
    import hashlib

    from elm_wikitext.text.paragraphs import TEXT_VERSION

    paragraphs, stats = sample_paragraphs["raw"]
    rows = sorted(zip(paragraphs["text_id"], paragraphs["text"], paragraphs["article"],
                      paragraphs["section"], paragraphs["token_count"]))
    digest = hashlib.sha256(json.dumps([rows, stats], sort_keys=True).encode()).hexdigest()[:16]
    assert TEXT_VERSION == TEXT_REFERENCE_VERSION, (
        "TEXT_VERSION was bumped: set TEXT_REFERENCE_VERSION and TEXT_REFERENCE to the new values")
    assert digest == TEXT_REFERENCE, (
        f"the paragraphs changed: bump TEXT_VERSION in elm_wikitext/text/paragraphs.py, then set "
        f"TEXT_REFERENCE_VERSION = {TEXT_VERSION + 1} and TEXT_REFERENCE = {digest!r}")
