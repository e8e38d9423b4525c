"""The keys that name the build's data: a paragraph's `text_id`, and the cache key of each
`Dataset.map` step, of any stage.

Stages share these without importing one another: the text stage makes `text_id`, the gates
check it; every stage's maps are keyed by `step_fingerprint`.
"""

import hashlib

from datasets import Dataset
from datasets.fingerprint import Hasher


def text_id(text: str) -> str:
    """The same paragraph gets the same id on any machine and in any run."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def step_fingerprint(ds: Dataset, step, version: int, *params) -> str:
    """datasets' cache key for `step` applied to `ds` with `params`.

    datasets hashes a function imported from a package by its name alone, so an edited step would
    reuse stale cached results; this key adds the `version` of the step's stage (text.TEXT_VERSION,
    encode.EMBED_VERSION), bumped when a step's output changes. It also spares datasets pickling
    what the step is given (a 151k-entry tokenizer hashes slowly).
    """
    # datasets keeps a dataset's fingerprint in `_fingerprint` only: it has no public name.
    return Hasher.hash([ds._fingerprint, step.__module__, step.__qualname__, version, *params])
