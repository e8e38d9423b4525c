"""Reading a saved dataset the way users do: shuffled batches, interpolation, statistics."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk
from torch.utils.data import DataLoader

from elm_wikitext.training.loading import (arrow_batch_to_torch, lerp, shuffled_batches, slerp, split_statistics,
                                           statistics)

DIM = 64
ROWS = {"train": 300, "validation": 40, "test": 45}  # 300 = 4 x 64 + 44: the last batch is short
FEATURES = Features({
    "text_id": Value("string"), "text": Value("string"), "article": Value("string"),
    "token_count": Value("int32"), "char_count": Value("int32"),
    "embedding": List(Value("float32"), length=DIM)})
WORDS = "the river album season army storm church war film café naïve 1 @,@ 000 , . ( )".split()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_elm.py"


def random_columns(rng: np.random.Generator, rows: int, first: int) -> dict:
    """Columns of `rows` paragraphs: unit vectors, random-word texts, 8-paragraph articles."""
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"paragraph {first + i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(5, 60))))
             for i in range(rows)]
    return {"text_id": [f"{first + i:016x}" for i in range(rows)], "text": texts,
            "article": [f"Article {(first + i) // 8}" for i in range(rows)],
            "token_count": rng.integers(100, 2000, rows).astype(np.int32),
            "char_count": np.array([len(text) for text in texts], dtype=np.int32),
            "embedding": vectors}


@pytest.fixture(scope="module")
def source() -> dict[str, dict]:
    rng, first, splits = np.random.default_rng(0), 0, {}
    for name, rows in ROWS.items():
        splits[name] = random_columns(rng, rows, first)
        first += rows
    return splits


@pytest.fixture(scope="module")
def saved(source, tmp_path_factory) -> Path:
    """The splits written by save_to_disk, as build.py publishes them."""
    def dataset(columns: dict) -> Dataset:
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(columns["embedding"].ravel()), DIM)
        return Dataset.from_dict({**columns, "embedding": vectors}, features=FEATURES)

    path = tmp_path_factory.mktemp("elm") / "elm-wikitext2"
    # Several shards, as on the Hub: a batch then gathers rows from several Arrow chunks.
    DatasetDict({name: dataset(columns) for name, columns in source.items()}).save_to_disk(
        str(path), num_shards={"train": 3, "validation": 1, "test": 2})
    return path


@pytest.fixture(scope="module")
def splits(saved) -> DatasetDict:
    return load_from_disk(str(saved))


def epoch_ids(batches) -> list[str]:
    return [text_id for batch in batches for text_id in batch["text_id"]]


def test_batches_hold_an_embedding_matrix_and_texts(splits):
    batches = list(shuffled_batches(splits["train"], batch_size=64, seed=0))
    assert [len(batch["text"]) for batch in batches] == [64, 64, 64, 64, 44]
    for batch in batches:
        assert set(batch) == {"text", "embedding"}
        assert batch["embedding"].dtype == torch.float32
        assert batch["embedding"].shape == (len(batch["text"]), DIM)
        assert all(isinstance(text, str) for text in batch["text"])


def test_an_epoch_reads_every_row_once_with_its_own_vector(splits, source):
    train = source["train"]
    row_of = {text_id: row for row, text_id in enumerate(train["text_id"])}
    batches = shuffled_batches(splits["train"], 64, seed=0, columns=["text_id", "text", "embedding"])
    seen = []
    for batch in batches:
        rows = [row_of[text_id] for text_id in batch["text_id"]]
        assert batch["text"] == [train["text"][row] for row in rows]
        np.testing.assert_array_equal(batch["embedding"].numpy(), train["embedding"][rows])
        seen += rows
    assert sorted(seen) == list(range(ROWS["train"]))


def test_order_is_shuffled_new_each_epoch_and_fixed_by_the_seed(splits):
    def loader(seed: int):
        return shuffled_batches(splits["train"], 64, seed=seed, columns=["text_id"])

    batches = loader(seed=1)
    first, second = epoch_ids(batches), epoch_ids(batches)
    assert first != sorted(first)
    assert second != first and sorted(second) == sorted(first)
    again = loader(seed=1)
    assert [epoch_ids(again), epoch_ids(again)] == [first, second]
    assert epoch_ids(loader(seed=2)) != first


def test_worker_processes_give_the_same_batches(splits):
    def ids(workers: int) -> list[str]:
        return epoch_ids(shuffled_batches(splits["train"], 64, seed=3, columns=["text_id"],
                                          num_workers=workers))

    assert ids(2) == ids(0)


@pytest.mark.parametrize("rows", [[5, 0, 299, 17, 17, 150], slice(98, 103), slice(103, 108)],
                         ids=["gather", "slice across shards", "slice"])
def test_batches_equal_what_the_torch_format_gives(splits, rows):
    fast = arrow_batch_to_torch(splits["train"].with_format("arrow")[rows])
    reference = splits["train"].with_format("torch")[rows]
    assert fast.keys() == reference.keys()
    for name, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert fast[name].dtype == value.dtype and torch.equal(fast[name], value), name
        else:
            assert fast[name] == value, name


def test_plain_dataloader_over_the_torch_format_also_stacks_vectors(splits):
    batch = next(iter(DataLoader(splits["train"].with_format("torch"), batch_size=64)))
    assert batch["embedding"].shape == (64, DIM) and batch["embedding"].dtype == torch.float32
    assert len(batch["text"]) == 64 and isinstance(batch["text"][0], str)


def test_lerp_gives_the_endpoints_and_the_midpoint():
    a, b = torch.randn(8, DIM), torch.randn(8, DIM)
    torch.testing.assert_close(lerp(a, b, 0.0), a)
    torch.testing.assert_close(lerp(a, b, 1.0), b)
    torch.testing.assert_close(lerp(a, b, 0.5), (a + b) / 2)
    per_row = torch.linspace(0, 1, 8)
    torch.testing.assert_close(lerp(a, b, per_row), a + per_row[:, None] * (b - a))


def test_slerp_stays_on_the_sphere_and_ends_at_the_endpoints():
    a = torch.nn.functional.normalize(torch.randn(16, DIM), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(16, DIM), dim=-1)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    between = slerp(a, b, torch.rand(16))
    torch.testing.assert_close(between.norm(dim=-1), torch.ones(16))


def test_slerp_of_an_orthogonal_pair_at_half_is_their_bisector():
    a, b = torch.eye(DIM)[0], torch.eye(DIM)[1]
    torch.testing.assert_close(slerp(a, b, 0.5), (a + b) / math.sqrt(2))
    torch.testing.assert_close(slerp(3 * a, b, 0.5), (a + b) / math.sqrt(2))  # between directions
    assert lerp(a, b, 0.5).norm() < 0.75  # what slerp is for


def test_slerp_moves_at_constant_angular_speed():
    angle, t = 2.0, torch.tensor([0.0, 0.3, 0.7, 1.0])
    a, b = torch.zeros(DIM), torch.zeros(DIM)
    a[0], b[0], b[1] = 1.0, math.cos(angle), math.sin(angle)
    path = slerp(a, b, t)  # one pair, four fractions: a (4, DIM) path
    torch.testing.assert_close(path[:, 0], torch.cos(t * angle))
    torch.testing.assert_close(path[:, 1], torch.sin(t * angle))


def test_slerp_of_nearly_parallel_vectors_is_finite_and_unit():
    a = torch.nn.functional.normalize(torch.randn(4, DIM), dim=-1)
    near = torch.nn.functional.normalize(a + 1e-6 * torch.randn(4, DIM), dim=-1)
    for b in (a.clone(), near):
        middle = slerp(a, b, 0.5)
        assert torch.isfinite(middle).all()
        torch.testing.assert_close(middle.norm(dim=-1), torch.ones(4))
        torch.testing.assert_close(middle, a, atol=1e-5, rtol=0)


def test_statistics_match_numpy(splits, source):
    stats = split_statistics(splits)
    assert stats.keys() == ROWS.keys()
    for name, columns in source.items():
        counts, norms = columns["token_count"], np.linalg.norm(columns["embedding"], axis=1)
        assert stats[name]["rows"] == ROWS[name]
        assert stats[name]["articles"] == len(set(columns["article"]))
        assert stats[name]["tokens"] == counts.sum()
        assert stats[name]["token_count"] == pytest.approx(
            {"min": counts.min(), "mean": counts.mean(), "median": np.median(counts), "max": counts.max()})
        assert stats[name]["char_count"]["max"] == max(len(text) for text in columns["text"])
        assert stats[name]["embedding"] == pytest.approx(
            {"dim": DIM, "norm_mean": norms.mean(), "norm_min": norms.min(), "norm_max": norms.max(),
             "mean_vector_norm": np.linalg.norm(columns["embedding"].mean(axis=0))}, rel=1e-5)


def test_statistics_of_one_split_are_those_of_its_dataset_dict_entry(splits):
    # load_dataset(..., split="test") names its split; load_from_disk(...)["test"] does not.
    named = Dataset.from_dict(splits["test"][:], features=splits["test"].features, split="test")
    assert split_statistics(named) == {"test": split_statistics(splits)["test"]}
    assert split_statistics(splits["test"]) == {"split": split_statistics(splits)["test"]}


def test_statistics_follow_a_selection_and_missing_columns(splits, source):
    rows = np.random.default_rng(1).permutation(ROWS["train"])[:50]
    selected = statistics(splits["train"].select(rows))
    counts = source["train"]["token_count"][rows]
    assert selected["rows"] == 50 and selected["tokens"] == counts.sum()
    assert selected["token_count"]["median"] == np.median(counts)
    text_only = statistics(splits["test"].remove_columns("embedding"))
    assert "embedding" not in text_only and text_only["rows"] == ROWS["test"]


def test_the_example_trains_on_a_saved_dataset(saved, capsys):
    spec = importlib.util.spec_from_file_location("train_elm", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses, _ = example.train(example.TrainArgs(dataset=str(saved), max_steps=7, width=16))
    assert len(losses) == 7 and all(math.isfinite(loss) for loss in losses)  # past one epoch of 5
    example.main(["--dataset", str(saved), "--max-steps", "2", "--width", "16", "--text-bytes", "24"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 steps in ")
    assert lines[1].startswith("validation loss: ") and math.isfinite(float(lines[1].split()[-1]))
    assert lines[2].startswith("text:    'paragraph 300: ")  # the first validation row
    assert lines[3].startswith("decoded: '") and lines[3].endswith("(from its embedding alone)")


def test_the_example_refuses_a_missing_dataset_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where no build wrote data/elm-wikitext2
    spec = importlib.util.spec_from_file_location("train_elm", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for missing in (str(tmp_path / "never-built"), "data/elm-wikitext2"):
        with pytest.raises(SystemExit) as refused:
            example.open_dataset(missing, None)
        err = capsys.readouterr().err
        assert refused.value.code == 2
        assert err.startswith(f"error: --dataset {missing} does not exist: run build.py first")
        assert len(err.splitlines()) == 1


def test_the_example_says_what_to_do_when_the_hub_is_out_of_reach(monkeypatch, capsys):
    class HubOutOfReach:
        def repo_info(self, repo_id, revision=None, repo_type=None, timeout=None):
            raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr("elm_wikitext.core.locations.HfApi", HubOutOfReach)
    spec = importlib.util.spec_from_file_location("train_elm", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(example.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(SystemExit) as refused:
        example.open_dataset("org/elm-wikitext2", None)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and len(err.splitlines()) == 1
    # Not "pass a Hub dataset id", which is what was passed: what to do without the Hub.
    assert err.startswith("error: cannot reach --dataset org/elm-wikitext2 on the Hub (ConnectionRefusedError")
    assert "pass build.py's --output, or a copy fetched where the Hub is reachable (hf download org/elm-wikitext2" in err


def test_the_example_reads_a_downloaded_copy_of_the_hub_repo(saved, tmp_path):
    from datasets import load_from_disk

    spec = importlib.util.spec_from_file_location("train_elm", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    copy = tmp_path / "elm-wikitext2"  # the Hub layout, as `hf download --repo-type dataset` leaves it
    (copy / "data").mkdir(parents=True)
    for name, split in load_from_disk(str(saved)).items():
        split.to_parquet(copy / "data" / f"{name}-00000-of-00001.parquet")
    splits = example.load_splits(str(copy), None)
    assert {name: len(split) for name, split in splits.items()} == ROWS
