"""The published schema, written once: the splits, the text stage's columns, the default embedding
column and the neighbour columns beside it, and the names no embedding column may take.

Imports no heavy library at import time (the CLI's option checks read it before anything loads);
`expected_features` builds the `datasets` Features when it is called.
"""

SPLIT_NAMES = ("train", "validation", "test")
# The text stage's columns and their Arrow types, in the order they are published.
TEXT_TYPES = {"text_id": "string", "text": "string", "article_id": "int32", "article": "string",
              "section": "string", "token_count": "int32", "char_count": "int32"}
TEXT_COLUMNS = list(TEXT_TYPES)
TOKEN_IDS = "input_ids"  # the text stage's token ids, dropped before an output is written
DEFAULT_COLUMN = "embedding"  # the embedding column of a build that names none
# Beside an embedding column C, the neighbours stage writes C + each suffix: no embedding's name ends so.
NEIGHBOR_SUFFIXES = ("_neighbors", "_neighbor_cosines")
# No embedding column may take the text stage's names.
RESERVED_COLUMNS = (*TEXT_COLUMNS, TOKEN_IDS)


def neighbor_columns(column: str) -> tuple[str, str]:
    """The names of `column`'s neighbour columns: the neighbours' text_ids, and their cosines."""
    return column + NEIGHBOR_SUFFIXES[0], column + NEIGHBOR_SUFFIXES[1]


def text_features() -> dict:
    """The text stage's columns as `datasets` feature types."""
    from datasets import Value

    return {name: Value(kind) for name, kind in TEXT_TYPES.items()}


def expected_features(dims: dict[str, int] | None = None, neighbors: dict[str, int] | None = None):
    """The published schema: the text columns, then each embedding column (name: its dim) and,
    where `neighbors` gives it a K, its neighbours' text_ids and cosines."""
    from datasets import Features, List, Value

    features = text_features()
    for column, dim in (dims or {}).items():
        features[column] = List(Value("float32"), length=dim)
        features.update(neighbor_features(column, neighbors[column]) if column in (neighbors or {}) else {})
    return Features(features)


def neighbor_features(column: str, k: int) -> dict:
    """An embedding column's neighbour columns: K text_ids of the same split, and their cosines."""
    from datasets import List, Value

    ids, cosines = neighbor_columns(column)
    return {ids: List(Value("string"), length=k), cosines: List(Value("float32"), length=k)}
