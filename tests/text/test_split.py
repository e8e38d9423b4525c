import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.schema import SPLIT_NAMES
from elm_wikitext.options import BuildOptions
from elm_wikitext.pipeline import text_params
from elm_wikitext.text.split import make_splits, split_by_article, split_by_paragraph

RATIOS = (0.8, 0.1, 0.1)


@pytest.fixture(scope="module")
def paragraphs() -> Dataset:
    """300 articles of 1 to 40 paragraphs each (about 6,000 rows), articles in corpus order; their
    titles repeat (30 titles), as real titles can, but each has its own article_id."""
    sizes = np.random.default_rng(0).integers(1, 41, size=300)
    ids = [a for a, size in enumerate(sizes, start=1) for _ in range(size)]
    return Dataset.from_dict({
        "text_id": [f"{i:016x}" for i in range(len(ids))],
        "text": [f"paragraph {i} of article {a}" for i, a in enumerate(ids)],
        "article_id": ids, "article": [f"Title {a % 30}" for a in ids], "section": [""] * len(ids)})


def articles_of(splits) -> dict[str, set]:
    return {name: set(split["article_id"]) for name, split in splits.items()}


def test_articles_of_one_title_are_split_as_separate_articles(paragraphs):
    # Grouped by title, the 300 articles would be 30, and each boundary a whole title off.
    titles = {name: set(split["article"]) for name, split in split_by_article(paragraphs, RATIOS, 42).items()}
    assert titles["train"] & titles["test"]


def texts_of(splits) -> dict[str, list]:
    return {name: list(split["text"]) for name, split in splits.items()}


def test_split_by_article_keeps_each_article_in_one_split(paragraphs):
    splits = split_by_article(paragraphs, RATIOS, seed=42)
    assert list(splits) == list(SPLIT_NAMES)
    articles = articles_of(splits)
    assert not articles["train"] & articles["validation"]
    assert not articles["train"] & articles["test"]
    assert not articles["validation"] & articles["test"]
    # Every row lands in exactly one split.
    assert sorted(t for texts in texts_of(splits).values() for t in texts) == sorted(paragraphs["text"])


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_split_by_article_sizes_are_within_a_point_of_the_ratios(paragraphs, seed):
    splits = split_by_article(paragraphs, RATIOS, seed)
    for name, ratio in zip(SPLIT_NAMES, RATIOS):
        assert abs(len(splits[name]) / len(paragraphs) - ratio) <= 0.01, (name, len(splits[name]))


def test_split_by_article_is_deterministic_for_a_seed(paragraphs):
    first = texts_of(split_by_article(paragraphs, RATIOS, seed=42))
    assert texts_of(split_by_article(paragraphs, RATIOS, seed=42)) == first
    assert texts_of(split_by_article(paragraphs, RATIOS, seed=43)) != first


def test_split_by_article_reads_the_rows_of_a_filtered_dataset(paragraphs):
    # A selection keeps the whole table underneath; the split must see only the selected rows.
    odd_articles = paragraphs.filter(lambda row: row["article_id"] % 2 == 1)
    splits = split_by_article(odd_articles, RATIOS, seed=42)
    assert sum(len(split) for split in splits.values()) == len(odd_articles)
    assert set().union(*articles_of(splits).values()) == set(odd_articles["article_id"])


def test_split_by_paragraph_gives_the_exact_ratios(paragraphs):
    splits = split_by_paragraph(paragraphs, RATIOS, seed=42)
    for name, ratio in zip(SPLIT_NAMES, RATIOS):
        assert abs(len(splits[name]) - ratio * len(paragraphs)) <= 1, (name, len(splits[name]))
    assert sorted(t for texts in texts_of(splits).values() for t in texts) == sorted(paragraphs["text"])


def test_split_by_paragraph_is_deterministic_for_a_seed(paragraphs):
    first = texts_of(split_by_paragraph(paragraphs, RATIOS, seed=42))
    assert texts_of(split_by_paragraph(paragraphs, RATIOS, seed=42)) == first
    assert texts_of(split_by_paragraph(paragraphs, RATIOS, seed=43)) != first


@pytest.mark.parametrize("split_by", ["article", "paragraph"])
@pytest.mark.parametrize("ratios, empty", [("1,0,0", "validation and test splits are"),
                                           ("0.9,0.1,0", "test split is")])
def test_an_empty_split_is_refused(paragraphs, split_by, ratios, empty):
    options = BuildOptions(split=ratios, split_by=split_by)
    with pytest.raises(BuildError, match=rf"the {empty} empty .*give each split a larger --split ratio"):
        make_splits(paragraphs, text_params(options))


def test_the_sample_shares_no_article_and_no_text_between_splits(text_output):
    splits = load_from_disk(str(text_output))
    assert [len(split) for split in splits.values()] == [46, 6, 5]  # every split holds rows to compare
    articles, texts = articles_of(splits), {name: set(t) for name, t in texts_of(splits).items()}
    for first, second in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not articles[first] & articles[second], (first, second)
        assert not texts[first] & texts[second], (first, second)
