"""Split stage: paragraphs -> train/validation/test, deterministic for a seed.

By default whole articles go to one split: paragraphs of one article share names, facts and
phrasing, so a plain paragraph shuffle would leak an article's text from train into test.
"""

import numpy as np
from datasets import Dataset, DatasetDict

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.schema import SPLIT_NAMES
from elm_wikitext.text.params import TextParams
from elm_wikitext.text.rows import take_rows


def split_by_article(paragraphs: Dataset, ratios, seed: int) -> DatasetDict:
    """Shuffle the articles (by `article_id`: two articles of one title stay two), then fill the
    splits in order up to their share of rows.

    Each boundary lands within one article of its target, which on WikiText-2 (about 600
    articles of about 20 kept paragraphs) is well under one percentage point of rows.
    """
    # Read through the arrow format, not `.data`: a selected or filtered dataset's `.data` is the
    # whole underlying table, not its rows.
    articles = paragraphs.with_format("arrow")["article_id"].to_numpy(zero_copy_only=False)
    names, article_of_row, rows_per_article = np.unique(articles, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    ends = np.cumsum(rows_per_article[order])
    targets = np.cumsum(ratios)[:-1] * len(paragraphs)
    # The split of each article, in shuffled order: how many boundaries its midpoint has passed.
    midpoints = ends - rows_per_article[order] / 2
    split_of_shuffled = np.searchsorted(targets, midpoints)
    split_of_article = np.empty(len(names), dtype=int)
    split_of_article[order] = split_of_shuffled
    return _select(paragraphs, split_of_article[article_of_row])


def split_by_paragraph(paragraphs: Dataset, ratios, seed: int) -> DatasetDict:
    """A plain seeded shuffle of paragraphs (articles may straddle splits)."""
    order = np.random.default_rng(seed).permutation(len(paragraphs))
    bounds = np.round(np.cumsum(ratios)[:-1] * len(paragraphs)).astype(int)
    split_of_row = np.empty(len(paragraphs), dtype=int)
    split_of_row[order] = np.searchsorted(bounds, np.arange(len(paragraphs)), side="right")
    return _select(paragraphs, split_of_row)


def _select(paragraphs: Dataset, split_of_row: np.ndarray) -> DatasetDict:
    """Each split's rows, in the paragraphs' order, written out whole."""
    empty = [name for index, name in enumerate(SPLIT_NAMES) if not (split_of_row == index).any()]
    if empty:
        raise BuildError(f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty "
                         f"({len(paragraphs)} paragraphs): "
                         "use a larger source or give each split a larger --split ratio")
    return DatasetDict({name: take_rows(paragraphs, split_of_row == index, f"Writing the {name} split")
                        for index, name in enumerate(SPLIT_NAMES)})


def make_splits(paragraphs: Dataset, params: TextParams) -> DatasetDict:
    split = split_by_article if params.split_by == "article" else split_by_paragraph
    return split(paragraphs, params.ratios, params.seed)
