"""Text stage: WikiText lines -> clean paragraphs with their article and section, filtered.

Each step is a `Dataset.map` over batches. The two steps that need to see across rows keep only a
few numbers per row of the whole corpus: labelling paragraphs with the headings above them (a
heading level per line), and dropping duplicates (a 16-character id per paragraph). So memory
does not grow with the text. Every filter says why it drops a row; `Drops` counts them.
"""

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value

from .detokenize import detokenize
from .errors import BuildError
from .keys import step_fingerprint, text_id

log = logging.getLogger(__name__)

PARAGRAPH_FEATURES = Features({
    "text": Value("string"), "article_id": Value("int32"), "article": Value("string"),
    "section": Value("string")})
DROP_REASONS = ("empty", "low_quality", "unknown_words", "duplicate", "too_short", "too_long")
# Part of every text step's cache key (keys.step_fingerprint): bump it when a step's output
# changes (not for comments or refactors), so that no cached result of the old code is reused.
# tests/test_text.py holds a digest of the sample's cleaned paragraphs tied to this number, and
# fails until both agree.
TEXT_VERSION = 2

# Never text: control characters (NUL included; tabs and line ends are spaces) and the byte-order
# mark, which would hide a heading at the start of a file from the heading pattern.
NOT_TEXT = r"[\x{00}-\x{1f}\x{7f}-\x{9f}\x{feff}]"
NOT_LETTER = r"[^\p{L}]"
UNK = "<unk>"
# A paragraph with fewer letters than this share of its non-space characters is mostly
# punctuation or digits (tables, score lines): nothing an embedding should learn from.
MIN_LETTER_SHARE = 0.5
# The tokenized configs write `<unk>` for rare words (5.5% of WikiText-2's words, in 91% of its
# paragraphs). It stays as a visible placeholder; a paragraph with more than this share of its
# words unknown reads as holes and is dropped (`unknown_words`: 398 of the 1,841 paragraphs of
# WikiText-2's real validation file).
MAX_UNK_SHARE = 0.1
BATCH_LINES = 10_000


class Drops(Counter):
    """Rows dropped per reason; `apply` counts a `drop` column and keeps the rows where it is ''."""

    def apply(self, ds: Dataset) -> Dataset:
        reasons = ds.data.column("drop")
        for entry in pc.value_counts(reasons).to_pylist():
            if entry["values"]:
                self[entry["values"]] += entry["counts"]
        keep = np.flatnonzero(pc.equal(reasons, "").to_numpy(zero_copy_only=False))
        return ds.select(keep).remove_columns("drop").flatten_indices()


LINE_KINDS = Features({"level": Value("int16"), "title": Value("string")})


def heading_levels(stripped: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Each line's heading level (1 for ` = Title = `, 2 for ` = = Section = = `, ...; null for
    other lines) and whether it is a heading."""
    equals = pc.struct_field(pc.extract_regex(stripped, r"^(?P<eq>(?:= )+)"), [0])
    level = pc.divide(pc.utf8_length(equals), 2)
    return level, pc.and_(pc.greater(level, 0), pc.ends_with(stripped, " ="))


def visible_text(lines: pa.Table) -> pa.ChunkedArray:
    """Each line without control characters or byte-order marks, trimmed."""
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(lines.column("text"), NOT_TEXT, " "))


def line_kinds(lines: pa.Table) -> pa.Table:
    """Per line: its heading level (1 for ` = Title = `, 2 for ` = = Section = = `, deeper
    more), 0 for a paragraph, -1 for a blank line; and a heading's title."""
    stripped = visible_text(lines)
    level, is_heading = heading_levels(stripped)
    is_heading = pc.fill_null(is_heading, False)
    kind = pc.if_else(is_heading, level, pc.if_else(pc.equal(stripped, ""), -1, 0))
    return pa.table({"level": pc.cast(kind, pa.int16()),
                     "title": pc.if_else(is_heading, pc.utf8_trim(stripped, "= "), pa.scalar(None, pa.string()))})


def outline(level: np.ndarray) -> dict[str, np.ndarray]:
    """For each paragraph line: its position, its article's id (1 for the first title line of
    the pooled files, 0 before any), the line of its article's title and of its section's
    heading (-1 for none: before any title, or in an article's lead)."""
    lines = np.arange(len(level))
    is_title = level == 1
    title_line = np.maximum.accumulate(np.where(is_title, lines, -1)) if len(level) else lines
    heading_line = np.maximum.accumulate(np.where(level > 0, lines, -1)) if len(level) else lines
    rows = np.flatnonzero(level == 0)
    return {"rows": rows, "article_id": np.cumsum(is_title, dtype=np.int32)[rows],
            "article_line": title_line[rows],
            "section_line": np.where(heading_line > title_line, heading_line, -1)[rows]}


def label_batch(lines: pa.Table, indices: list[int], article_id, article_line, section_line,
                titles: dict[int, str]) -> pa.Table:
    at = np.asarray(indices)
    return pa.table({"text": visible_text(lines), "article_id": pa.array(article_id[at]),
                     "article": [titles.get(line, "") for line in article_line[at].tolist()],
                     "section": [titles.get(line, "") for line in section_line[at].tolist()]})


def label_paragraphs(lines: Dataset) -> tuple[Dataset, dict]:
    """Each non-empty line that is not a heading is one Wikipedia paragraph (WikiText puts a
    paragraph on a line, with blank lines only around headings), labelled with its article
    (` = Title = `) and the nearest section heading above it (` = = Section = = `, deeper too).
    Also return the count of each kind of line.

    An article is known by its place in the source, `article_id`, not by its title: titles can
    repeat, or clean to nothing. Both passes read the lines a batch at a time; what is kept of
    the whole corpus is a few numbers per line and the headings' titles, so memory does not grow
    with the text."""
    kinds = lines.with_format("arrow").map(
        line_kinds, batched=True, batch_size=BATCH_LINES, remove_columns=lines.column_names,
        features=LINE_KINDS, desc="Finding headings",
        new_fingerprint=step_fingerprint(lines, line_kinds, TEXT_VERSION))
    level = kinds.data.column("level").to_numpy()
    headings = np.flatnonzero(level > 0)
    titles = dict(zip(headings.tolist(), kinds.data.column("title").take(headings).to_pylist()))
    labels = outline(level)
    paragraphs = lines.select(labels.pop("rows")).with_format("arrow").map(
        label_batch, batched=True, batch_size=BATCH_LINES, with_indices=True,
        remove_columns=lines.column_names, features=PARAGRAPH_FEATURES, desc="Labelling paragraphs",
        fn_kwargs={**labels, "titles": titles}, new_fingerprint=step_fingerprint(lines, label_batch, TEXT_VERSION))
    counts = {"lines": len(level), "blank_lines": int((level < 0).sum()), "heading_lines": len(headings),
              "paragraph_lines": int((level == 0).sum())}
    return paragraphs.with_format(None), counts


def clean_text(text: str) -> str:
    """WikiText's tokenized line -> prose, whitespace collapsed (see `detokenize`)."""
    return detokenize(text)


def article_name(title: str, article_id: int) -> str:
    """The clean title, or a readable stand-in where it cleans to nothing."""
    return clean_text(title) or f"Untitled article {article_id}"


def quality_reasons(texts: list[str]) -> list[str]:
    """Why each clean paragraph is dropped, or '' to keep it; counted in Arrow, a batch at once.
    `<unk>` counts as a word, but neither its letters nor its brackets as visible text."""
    column = pa.array(texts, pa.string())
    length = pc.utf8_length(column).to_numpy()
    spaces = pc.count_substring(column, " ").to_numpy()
    unknown = pc.count_substring(column, UNK).to_numpy()
    letters = pc.utf8_length(pc.replace_substring_regex(column, NOT_LETTER, "")).to_numpy() - 3 * unknown
    visible = length - spaces - len(UNK) * unknown
    reasons = np.select([length == 0, letters < MIN_LETTER_SHARE * visible, unknown > MAX_UNK_SHARE * (spaces + 1)],
                        ["empty", "low_quality", "unknown_words"], "")
    return reasons.tolist()


def quality_reason(text: str) -> str:
    return quality_reasons([text])[0]


def clean_batch(batch: dict) -> dict:
    texts = [clean_text(text) for text in batch["text"]]
    # A title repeats on every paragraph under it: clean each once.
    articles = {key: article_name(*key) for key in set(zip(batch["article"], batch["article_id"]))}
    sections = {title: clean_text(title) for title in set(batch["section"])}
    return {
        "text": texts,
        "article": [articles[key] for key in zip(batch["article"], batch["article_id"])],
        "section": [sections[title] for title in batch["section"]],
        "text_id": [text_id(text) for text in texts],
        "drop": quality_reasons(texts),
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
    paragraphs, stats = label_paragraphs(lines)
    stats["paragraphs"] = len(paragraphs)
    if not paragraphs:  # datasets skips a map over no rows, so the steps below would find no columns
        raise BuildError(f"--source {options.source} holds no paragraph, only headings and blank lines: "
                         "point it at WikiText's articles")
    drops = Drops()
    cleaned = paragraphs.map(
        clean_batch, batched=True, num_proc=options.num_proc, desc="Cleaning",
        features=Features({**PARAGRAPH_FEATURES, "text_id": Value("string"), "drop": Value("string")}),
        new_fingerprint=step_fingerprint(paragraphs, clean_batch, TEXT_VERSION))
    cleaned = cleaned.with_format("arrow").map(
        mark_duplicates, batched=True, batch_size=None, desc="Finding duplicates",
        new_fingerprint=step_fingerprint(cleaned, mark_duplicates, TEXT_VERSION)).with_format(None)
    kept = drops.apply(cleaned)
    counted = kept.map(
        count_tokens, batched=True, num_proc=options.num_proc, desc="Counting tokens",
        fn_kwargs={"tokenizer": tokenizer, "min_tokens": options.min_tokens,
                   "max_tokens": options.max_tokens},
        features=Features({**kept.features, "input_ids": List(Value("int32")),
                           "token_count": Value("int32"), "drop": Value("string"),
                           "char_count": Value("int32")}),
        new_fingerprint=step_fingerprint(kept, count_tokens, TEXT_VERSION, tokenizer.name_or_path, len(tokenizer),
                                         options.model_revision, options.min_tokens, options.max_tokens))
    kept = drops.apply(counted)
    if len(kept) == 0:
        raise BuildError(f"no paragraph is left after filtering ({dict(drops)} dropped): widen "
                         f"--min-tokens {options.min_tokens} / --max-tokens {options.max_tokens}")
    stats["dropped"] = {reason: drops.get(reason, 0) for reason in DROP_REASONS}
    stats["kept"] = len(kept)
    unknown = pc.count_substring(kept.data.column("text"), UNK)  # .data: drops.apply flattened it
    stats["unknown_words"] = {"words": pc.sum(unknown).as_py() or 0,
                              "paragraphs": pc.sum(pc.greater(unknown, 0)).as_py() or 0}
    assert stats["paragraphs"] == stats["kept"] + sum(stats["dropped"].values())
    return kept, stats

