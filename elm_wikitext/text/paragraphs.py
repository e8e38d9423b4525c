"""Text stage: WikiText lines -> clean paragraphs with their article and section, filtered.

One pass over the lines finds the headings (a level per line); then each step is a `Dataset.map`
over batches, given only the parameters it reads: clean and label the paragraphs, count their
tokens, describe them (id, length), and a filter per reason (quality, length), each writing only
its own columns. Duplicates are then found from a 16-character id per paragraph. What is kept of
the whole corpus in memory is a few numbers per line, so memory does not grow with the text.
Every drop has a reason, and the reasons are counted.
"""

import itertools
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value, concatenate_datasets

from elm_wikitext.core.tokens import token_ids
from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.keys import step_fingerprint, text_id
from elm_wikitext.text.detokenize import detokenize
from elm_wikitext.text.params import TextParams
from elm_wikitext.text.rows import take_rows

log = logging.getLogger(__name__)

# What each step adds to a paragraph, in the order the output holds them (`OUTPUT_COLUMNS`).
PARAGRAPH_FEATURES = {"text": Value("string"), "article_id": Value("int32"), "article": Value("string"),
                      "section": Value("string")}
DESCRIPTION_FEATURES = {"text_id": Value("string"), "char_count": Value("int32"), "unknown_words": Value("int32")}
COUNT_FEATURES = {"token_count": Value("int32")}
TOKEN_FEATURES = {**COUNT_FEATURES, "input_ids": List(Value("int32"))}
OUTPUT_COLUMNS = (*PARAGRAPH_FEATURES, "text_id", "token_count", "char_count", "input_ids")
DROP_REASONS = ("empty", "low_quality", "unknown_words", "duplicate", "too_short", "too_long")
# Part of every text step's cache key (keys.step_fingerprint): bump it when a step's output
# changes (not for comments or refactors), so that no cached result of the old code is reused.
# tests/text/test_paragraphs.py holds a digest of the sample's cleaned paragraphs tied to this number, and
# fails until both agree.
TEXT_VERSION = 2

# Never text: control characters (NUL included; tabs and line ends are spaces) and the byte-order
# mark, which would hide a heading at the start of a file from the heading pattern.
NOT_TEXT = r"[\x{00}-\x{1f}\x{7f}-\x{9f}\x{feff}]"
NOT_LETTER = r"[^\p{L}]+"  # runs: fewer matches, the same letters left
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
# Cleaning and tokenizing are Python, a row at a time: on a large source, worker processes share
# them among the cores (WikiText-103 at 1.8M lines); on WikiText-2 (45k lines) starting them costs
# what they save.
WORKERS_FROM_LINES = 100_000
MAX_WORKERS = 8


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
    # Only the headings' titles go into the title column's buffer (an if_else would carry every
    # line's text along: a second copy of the corpus on disk, read back whole).
    titles = pc.utf8_trim(pc.filter(stripped, is_heading), "= ").combine_chunks()
    title = pc.replace_with_mask(pa.nulls(len(lines), pa.string()), is_heading.combine_chunks(), titles)
    return pa.table({"level": pc.cast(kind, pa.int16()), "title": title})


def outline(level: np.ndarray) -> dict[str, np.ndarray]:
    """For each line: its kind (see `line_kinds`), its article's id (1 for the first title line
    of the pooled files, 0 before any), the line of its article's title and of its section's
    heading (-1 for none: before any title, or in an article's lead)."""
    lines = np.arange(len(level))
    is_title = level == 1
    title_line = np.maximum.accumulate(np.where(is_title, lines, -1)) if len(level) else lines
    heading_line = np.maximum.accumulate(np.where(level > 0, lines, -1)) if len(level) else lines
    return {"level": level, "article_id": np.cumsum(is_title, dtype=np.int32), "article_line": title_line,
            "section_line": np.where(heading_line > title_line, heading_line, -1)}


def outline_corpus(lines: Dataset) -> tuple[dict, dict]:
    """Where each paragraph stands: its line, article and section (see `outline`), the headings'
    titles by line; and the count of each kind of line.

    Each non-empty line that is not a heading is one Wikipedia paragraph (WikiText puts a
    paragraph on a line, with blank lines only around headings), labelled with its article
    (` = Title = `) and the nearest section heading above it (` = = Section = = `, deeper too).
    An article is known by its place in the source, `article_id`, not by its title: titles can
    repeat, or clean to nothing. The lines are read a batch at a time; what is kept of the whole
    corpus is a few numbers per line and the headings' titles."""
    kinds = lines.with_format("arrow").map(
        line_kinds, batched=True, batch_size=BATCH_LINES, remove_columns=lines.column_names,
        features=LINE_KINDS, desc="Finding headings",
        new_fingerprint=step_fingerprint(lines, line_kinds, TEXT_VERSION))
    level = kinds.data.column("level").to_numpy()
    headings = np.flatnonzero(level > 0)
    labels = outline(level)
    labels["titles"] = dict(zip(headings.tolist(), kinds.data.column("title").take(headings).to_pylist()))
    counts = {"lines": len(level), "blank_lines": int((level < 0).sum()), "heading_lines": len(headings),
              "paragraph_lines": int((level == 0).sum())}
    return labels, counts


def clean_text(text: str) -> str:
    """WikiText's tokenized line -> prose, whitespace collapsed (see `detokenize`)."""
    return detokenize(text)


def article_name(title: str, article_id: int) -> str:
    """The clean title, or a readable stand-in where it cleans to nothing."""
    return clean_text(title) or f"Untitled article {article_id}"


def quality_reasons(column: pa.Array) -> pa.Array:
    """Why each clean paragraph is dropped, or '' to keep it; counted in Arrow, a batch at once.
    `<unk>` counts as a word, but neither its letters nor its brackets as visible text."""
    length = pc.utf8_length(column).to_numpy()
    spaces = pc.count_substring(column, " ").to_numpy()
    unknown = pc.count_substring(column, UNK).to_numpy()
    letters = pc.utf8_length(pc.replace_substring_regex(column, NOT_LETTER, "")).to_numpy() - 3 * unknown
    visible = length - spaces - len(UNK) * unknown
    reasons = np.select([length == 0, letters < MIN_LETTER_SHARE * visible, unknown > MAX_UNK_SHARE * (spaces + 1)],
                        ["empty", "low_quality", "unknown_words"], "")
    return pa.array(reasons, pa.string())


def quality_reason(text: str) -> str:
    return quality_reasons(pa.array([text], pa.string()))[0].as_py()


def clean_labels(article_id: np.ndarray, article_line: np.ndarray, section_line: np.ndarray,
                 titles: dict[int, str]) -> tuple[list[str], list[str]]:
    """Each row's clean article name and section title. A title repeats on every paragraph under
    it: each is cleaned once."""
    articles = {line: article_name(titles.get(line, ""), number)
                for line, number in set(zip(article_line.tolist(), article_id.tolist()))}
    section_titles = [titles.get(line, "") for line in section_line.tolist()]
    sections = {title: clean_text(title) for title in set(section_titles)}
    return [articles[line] for line in article_line.tolist()], [sections[title] for title in section_titles]


def token_column(texts: list[str], tokenizer) -> pa.ListArray:
    """Token ids as the model will consume them (end-of-text appended), as one Arrow column."""
    ids = token_ids(texts, tokenizer)
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in ids], out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def clean_paragraphs(lines: pa.Table, indices: list[int], level: np.ndarray, article_id: np.ndarray,
                     article_line: np.ndarray, section_line: np.ndarray, titles: dict[int, str]) -> pa.Table:
    """A batch of lines -> its paragraphs: the clean text, the article's id and name, the section
    (the other arguments are the corpus's `outline`, by line)."""
    at = np.asarray(indices)
    is_paragraph = level[at] == 0
    at = at[is_paragraph]
    texts = [clean_text(text) for text in visible_text(lines.filter(pa.array(is_paragraph))).to_pylist()]
    articles, sections = clean_labels(article_id[at], article_line[at], section_line[at], titles)
    return pa.table({"text": pa.array(texts, pa.string()), "article_id": pa.array(article_id[at]),
                     "article": articles, "section": sections})


def count_tokens(paragraphs: pa.Table, tokenizer, keep_ids: bool) -> pa.Table:
    """Each paragraph's token count (and with `keep_ids` its token ids, for an embed stage in this
    process)."""
    ids = token_column(paragraphs.column("text").to_pylist(), tokenizer)
    counts = pa.table({"token_count": pc.list_value_length(ids)})
    return counts.append_column("input_ids", ids) if keep_ids else counts


def describe_paragraphs(paragraphs: pa.Table) -> pa.Table:
    """Each paragraph's id (`text_id`), length in characters and number of `<unk>` words."""
    column = paragraphs.column("text")
    return pa.table({"text_id": [text_id(text) for text in column.to_pylist()],
                     "char_count": pc.cast(pc.utf8_length(column), pa.int32()),
                     "unknown_words": pc.cast(pc.count_substring(column, UNK), pa.int32())})


def quality_filter(paragraphs: pa.Table) -> pa.Table:
    """Why each paragraph is dropped for its text ('' to keep it): see `quality_reasons`."""
    return pa.table({"quality": quality_reasons(paragraphs.column("text"))})


def length_filter(paragraphs: pa.Table, min_tokens: int, max_tokens: int) -> pa.Table:
    """Why each paragraph is dropped for its length in tokens ('' to keep it)."""
    counts = paragraphs.column("token_count")
    return pa.table({"length": pc.if_else(pc.less(counts, min_tokens), "too_short",
                                          pc.if_else(pc.greater(counts, max_tokens), "too_long", ""))})


def prepare_paragraphs(lines: Dataset, tokenizer, params: TextParams, keep_ids: bool = False) -> tuple[Dataset, dict]:
    """Every paragraph of the lines, labelled, cleaned, counted and with the reasons to drop it
    for its own sake (each filter's column, '' to keep it; duplicates are found across batches
    afterwards, `final_reasons`); and the count of each kind of line."""
    labels, counts = outline_corpus(lines)
    if not counts["paragraph_lines"]:  # datasets skips a map over no rows: no columns would follow
        raise BuildError(f"--source {params.source} holds no paragraph, only headings and blank lines: "
                         "point it at WikiText's articles")
    workers = params.num_proc or default_workers(len(lines))  # for the steps that run Python a row at a time
    paragraphs = text_step(lines, clean_paragraphs, PARAGRAPH_FEATURES, "Cleaning paragraphs", labels, (), workers,
                           with_indices=True)
    tokenizer_key = (tokenizer.name_or_path, len(tokenizer), params.model_revision, keep_ids)
    paragraphs = with_step(paragraphs, count_tokens, TOKEN_FEATURES if keep_ids else COUNT_FEATURES,
                           "Counting tokens", {"tokenizer": tokenizer, "keep_ids": keep_ids}, tokenizer_key, workers)
    paragraphs = with_step(paragraphs, describe_paragraphs, DESCRIPTION_FEATURES, "Describing paragraphs", {}, ())
    paragraphs = with_step(paragraphs, quality_filter, {"quality": Value("string")}, "Judging the text", {}, ())
    lengths = {"min_tokens": params.min_tokens, "max_tokens": params.max_tokens}
    paragraphs = with_step(paragraphs, length_filter, {"length": Value("string")}, "Judging the length", lengths,
                           tuple(lengths.values()))
    return paragraphs, counts


def text_step(ds: Dataset, step, features: dict, desc: str, params: dict, key: tuple, workers: int | None = None,
              **map_kwargs) -> Dataset:
    """The columns `step` makes of `ds`, a batch at a time, given only `params`; `key` is what of
    them names the result in datasets' cache (beside `ds` and the step: the outline, made of `ds`,
    needs none; a tokenizer is named, not hashed)."""
    return ds.with_format("arrow").map(
        step, batched=True, batch_size=BATCH_LINES, num_proc=workers, remove_columns=ds.column_names,
        features=Features(features), desc=desc, fn_kwargs=params,
        new_fingerprint=step_fingerprint(ds, step, TEXT_VERSION, *key), **map_kwargs).with_format(None)


def with_step(ds: Dataset, step, features: dict, desc: str, params: dict, key: tuple,
              workers: int | None = None) -> Dataset:
    """`ds` with the columns `step` adds to each row; only they are written, beside its own."""
    return concatenate_datasets([ds, text_step(ds, step, features, desc, params, key, workers)], axis=1)


def default_workers(lines: int) -> int | None:
    """Worker processes for a source of this many lines when --num-proc is not given."""
    if lines <= WORKERS_FROM_LINES:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_WORKERS) if cores > 1 else None


def final_reasons(paragraphs: Dataset) -> np.ndarray:
    """Each paragraph's drop reason, '' to keep it: its quality reason first, then its length
    reason, except that a paragraph whose text (by `text_id`) already passed the quality filter
    earlier is a duplicate. Reads short columns, never the text."""
    quality, length = (paragraphs.data.column(name).to_numpy(zero_copy_only=False).astype(object)
                       for name in ("quality", "length"))
    passed = np.flatnonzero(quality == "")
    reasons = np.where(quality == "", length, quality)
    ids = paragraphs.data.column("text_id").take(pa.array(passed)).to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    repeated = np.ones(len(passed), dtype=bool)
    repeated[first] = False
    reasons[passed[repeated]] = "duplicate"
    return reasons


def build_paragraphs(lines: Dataset, tokenizer, params: TextParams, keep_ids: bool = False) -> tuple[Dataset, dict]:
    """Lines -> kept paragraphs with text_id, text, article_id, article, section, token_count,
    char_count (and input_ids with `keep_ids`, for an embed stage in this process); and the
    statistics of what was dropped and why."""
    paragraphs, stats = prepare_paragraphs(lines, tokenizer, params, keep_ids)
    reasons = final_reasons(paragraphs)
    kept = reasons == ""
    stats["paragraphs"] = len(paragraphs)
    stats["dropped"] = {reason: int((reasons == reason).sum()) for reason in DROP_REASONS}
    stats["kept"] = int(kept.sum())
    if not stats["kept"]:
        raise BuildError(f"no paragraph is left after filtering ({stats['dropped']} dropped): widen "
                         f"--min-tokens {params.min_tokens} / --max-tokens {params.max_tokens}")
    unknown = paragraphs.data.column("unknown_words").to_numpy()[kept]
    stats["unknown_words"] = {"words": int(unknown.sum()), "paragraphs": int((unknown > 0).sum())}
    assert stats["paragraphs"] == stats["kept"] + sum(stats["dropped"].values())
    columns = [name for name in OUTPUT_COLUMNS if name in paragraphs.column_names]
    return take_rows(paragraphs.select_columns(columns), kept, "Keeping"), stats
