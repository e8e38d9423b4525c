"""text/rows.py: the rows a mask keeps, and a progress bar that counts them."""

import re

import numpy as np
from datasets import Dataset, load_from_disk

from elm_wikitext.text.rows import take_rows


def test_the_rows_kept_and_the_bar_count_the_split_not_the_source(tmp_path, capsys):
    Dataset.from_dict({"n": list(range(57))}).save_to_disk(str(tmp_path / "all"))
    rows = load_from_disk(str(tmp_path / "all"))  # on disk, as the text stage's are
    mask = np.arange(57) % 10 == 3
    for attempt in ("computed", "cached"):
        taken = take_rows(rows, mask, "Writing the test split")
        assert taken["n"] == [3, 13, 23, 33, 43, 53], attempt
        bars = re.findall(r"Writing the test split: 100%.*?(\d+)/(\d+)", capsys.readouterr().err)
        assert bars == [("6", "6")], attempt  # one bar, of the 6 rows kept (not 57/57 read)
