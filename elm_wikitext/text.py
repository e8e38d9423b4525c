"""Text stage: WikiText lines -> clean paragraphs with their article and section, filtered.

Each step is a `Dataset.map` over batches. The two steps that need to see across rows (labelling
paragraphs with the headings above them, dropping duplicates) work on Arrow arrays of the whole
column, which stay memory-mapped, instead of Python lists. Every filter says why it drops a row;
`Drops` counts them.
"""

import hashlib
import logging
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value
from datasets.fingerprint import Hasher

from .errors import BuildError

log = logging.getLogger(__name__)

PARAGRAPH_FEATURES = Features({
    "text": Value("string"), "article": Value("string"), "section": Value("string")})
DROP_REASONS = ("empty", "low_quality", "duplicate", "too_short", "too_long")
# Part of every text step's cache key: bump it when a step's output changes (not for comments or
# refactors), so that no cached result of the old code is reused. tests/test_text.py holds a
# digest of the sample's cleaned paragraphs tied to this number, and fails until both agree.
TEXT_VERSION = 1

# WikiText splits numbers and hyphenated words around `@x@`: `1 @,@ 000`, `2 @.@ 5`, `a @-@ b`.
SPLIT_NUMBER = re.compile(r" @(.)@ ")
# `<unk>` goes with a join mark beside it: `the <unk> @-@ based` reads `the based`, not `the -based`.
UNK = re.compile(r"(?:@.@ )?<unk>(?: @.@)?")
# Undo the tokenizer's spaces: none before closing punctuation and clitics, none after openers.
SPACE_BEFORE = re.compile(r" (?=[,.;:!?)\]}%]|'s\b|'re\b|'ve\b|'ll\b|'d\b|'m\b|n't\b)")
SPACE_AFTER = re.compile(r"(?<=[(\[{$£€]) ")
QUOTED = re.compile(r'" ?([^"]*?) ?"')
WHITESPACE = re.compile(r"\s+")
LETTER = re.compile(r"[^\W\d_]")
# A paragraph with fewer letters than this share of its non-space characters is mostly
# punctuation or digits (tables, score lines): nothing an embedding should learn from.
MIN_LETTER_SHARE = 0.5


class Drops(Counter):
    """Rows dropped per reason; `apply` counts a `drop` column and keeps the rows where it is ''."""

    def apply(self, ds: Dataset) -> Dataset:
        reasons = ds.data.column("drop")
        for entry in pc.value_counts(reasons).to_pylist():
            if entry["values"]:
                self[entry["values"]] += entry["counts"]
        keep = np.flatnonzero(pc.equal(reasons, "").to_numpy(zero_copy_only=False))
        return ds.select(keep).remove_columns("drop").flatten_indices()


def heading_levels(stripped: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Each line's heading level (1 for ` = Title = `, 2 for ` = = Section = = `, ...; null for
    other lines) and whether it is a heading."""
    equals = pc.struct_field(pc.extract_regex(stripped, r"^(?P<eq>(?:= )+)"), [0])
    level = pc.divide(pc.utf8_length(equals), 2)
    return level, pc.and_(pc.greater(level, 0), pc.ends_with(stripped, " ="))


def label_paragraphs(lines: pa.Table) -> pa.Table:
    """Each non-empty line that is not a heading is one Wikipedia paragraph (WikiText puts a
    paragraph on a line, with blank lines only around headings), labelled with its article
    (` = Title = `) and the nearest section heading above it (` = = Section = = `, deeper too)."""
    stripped = pc.utf8_trim_whitespace(lines.column("text"))
    level, is_heading = heading_levels(stripped)
    title = pc.utf8_trim(stripped, "= ")
    article = pc.fill_null_forward(pc.if_else(pc.and_(is_heading, pc.equal(level, 1)), title, None))
    # A new article resets the section; a deeper heading replaces it.
    section = pc.fill_null_forward(pc.if_else(is_heading, pc.if_else(pc.equal(level, 1), "", title), None))
    is_text = pc.and_(pc.invert(pc.fill_null(is_heading, False)), pc.not_equal(stripped, ""))
    return pa.table({"text": stripped.filter(is_text), "article": pc.fill_null(article, "").filter(is_text),
                     "section": pc.fill_null(section, "").filter(is_text)})


def count_lines(lines: pa.Table) -> dict:
    stripped = pc.utf8_trim_whitespace(lines.column("text"))
    blank = pc.sum(pc.equal(stripped, "")).as_py() or 0
    heading = pc.sum(pc.fill_null(heading_levels(stripped)[1], False)).as_py() or 0
    return {"lines": lines.num_rows, "blank_lines": blank, "heading_lines": heading,
            "paragraph_lines": lines.num_rows - blank - heading}


def clean_text(text: str) -> str:
    """WikiText's tokenized line -> prose: numbers and hyphens joined, `<unk>` removed, spaces
    around punctuation undone, quotes attached to what they quote, whitespace collapsed."""
    text = UNK.sub(" ", text)
    text = SPLIT_NUMBER.sub(r"\1", text)
    text = WHITESPACE.sub(" ", text).strip()
    text = SPACE_BEFORE.sub("", text)
    text = SPACE_AFTER.sub("", text)
    if text.count('"') % 2 == 0:  # an odd count (an inch mark, a quote left open) would pair wrongly
        text = QUOTED.sub(r'"\1"', text)
    return WHITESPACE.sub(" ", text).strip()


def quality_reason(text: str) -> str:
    """Why a clean paragraph is dropped, or '' to keep it."""
    if not text:
        return "empty"
    visible = len(text) - text.count(" ")
    if len(LETTER.findall(text)) < MIN_LETTER_SHARE * visible:
        return "low_quality"
    return ""


def text_id(text: str) -> str:
    """The same paragraph gets the same id on any machine and in any run."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clean_batch(batch: dict) -> dict:
    texts = [clean_text(text) for text in batch["text"]]
    return {
        "text": texts,
        "article": [clean_text(title) for title in batch["article"]],
        "section": [clean_text(title) for title in batch["section"]],
        "text_id": [text_id(text) for text in texts],
        "drop": [quality_reason(text) for text in texts],
    }


def mark_duplicates(table: pa.Table) -> pa.Table:
    """Mark every kept row whose text (by `text_id`) already appeared earlier as a duplicate."""
    ids = table.column("text_id").to_numpy(zero_copy_only=False)
    kept = pc.equal(table.column("drop"), "").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids[kept], return_index=True)
    is_first = np.zeros(kept.sum(), dtype=bool)
    is_first[first] = True
    duplicate = np.zeros(len(ids), dtype=bool)
    duplicate[np.flatnonzero(kept)[~is_first]] = True
    drop = pc.if_else(pa.array(duplicate), "duplicate", table.column("drop"))
    return table.set_column(table.schema.get_field_index("drop"), "drop", drop)


def count_tokens(batch: dict, tokenizer, min_tokens: int, max_tokens: int) -> dict:
    """Token ids as the model will consume them (end-of-text appended), kept for the embed stage."""
    ids = tokenizer(batch["text"], add_special_tokens=True)["input_ids"]
    counts = [len(row) for row in ids]
    drop = ["too_short" if n < min_tokens else "too_long" if n > max_tokens else "" for n in counts]
    return {"input_ids": ids, "token_count": counts, "drop": drop,
            "char_count": [len(text) for text in batch["text"]]}


def build_paragraphs(lines: Dataset, tokenizer, options) -> tuple[Dataset, dict]:
    """Lines -> kept paragraphs with text_id, text, article, section, input_ids, token_count,
    char_count; and the statistics of what was dropped and why."""
    stats = count_lines(lines.data.table)
    paragraphs = lines.with_format("arrow").map(  # one batch: headings label the lines after them
        label_paragraphs, batched=True, batch_size=None, remove_columns=lines.column_names,
        features=PARAGRAPH_FEATURES, desc="Labelling paragraphs",
        new_fingerprint=step_fingerprint(lines, label_paragraphs)).with_format(None)
    stats["paragraphs"] = len(paragraphs)
    drops = Drops()
    cleaned = paragraphs.map(
        clean_batch, batched=True, num_proc=options.num_proc, desc="Cleaning",
        features=Features({**PARAGRAPH_FEATURES, "text_id": Value("string"), "drop": Value("string")}),
        new_fingerprint=step_fingerprint(paragraphs, clean_batch))
    cleaned = cleaned.with_format("arrow").map(
        mark_duplicates, batched=True, batch_size=None, desc="Finding duplicates",
        new_fingerprint=step_fingerprint(cleaned, mark_duplicates)).with_format(None)
    kept = drops.apply(cleaned)
    counted = kept.map(
        count_tokens, batched=True, num_proc=options.num_proc, desc="Counting tokens",
        fn_kwargs={"tokenizer": tokenizer, "min_tokens": options.min_tokens,
                   "max_tokens": options.max_tokens},
        features=Features({**kept.features, "input_ids": List(Value("int32")),
                           "token_count": Value("int32"), "drop": Value("string"),
                           "char_count": Value("int32")}),
        new_fingerprint=step_fingerprint(kept, count_tokens, tokenizer.name_or_path, len(tokenizer),
                                         options.model_revision, options.min_tokens, options.max_tokens))
    kept = drops.apply(counted)
    if len(kept) == 0:
        raise BuildError(f"no paragraph is left after filtering ({dict(drops)} dropped): widen "
                         f"--min-tokens {options.min_tokens} / --max-tokens {options.max_tokens}")
    stats["dropped"] = {reason: drops.get(reason, 0) for reason in DROP_REASONS}
    stats["kept"] = len(kept)
    assert stats["paragraphs"] == stats["kept"] + sum(stats["dropped"].values())
    return kept, stats


def step_fingerprint(ds: Dataset, step, *params) -> str:
    """datasets' cache key for `step` applied to `ds` with `params`.

    datasets hashes a function imported from a package by its name alone, so an edited step would
    reuse stale cached results; this key adds TEXT_VERSION, bumped when a step's output changes
    (a step of another stage passes its own version in `params`). It also spares datasets
    pickling what the step is given (a 151k-entry tokenizer hashes slowly).
    """
    # datasets keeps a dataset's fingerprint in `_fingerprint` only: it has no public name.
    return Hasher.hash([ds._fingerprint, step.__module__, step.__qualname__, TEXT_VERSION, *params])
