"""examples/train_elm_lm.py: an ELM from a causal LM trains on the built sample, writes and is scored."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Qwen3ForCausalLM

from elm_wikitext.tiny import tiny_qwen3_config
from elm_wikitext.training.consistency import main as consistency_main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_elm_lm.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_elm_lm", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@pytest.fixture(scope="module")
def causal_lm_dir(tiny_model, tmp_path_factory) -> str:
    """A tiny random Qwen3 causal LM saved as a model directory, loaded the way --lm
    Qwen/Qwen3-0.6B is (its tokenizer copied from the tiny embedding model: no rebuild)."""
    directory = tmp_path_factory.mktemp("causal-lm") / "tiny-qwen3-lm"
    torch.manual_seed(0)
    Qwen3ForCausalLM(tiny_qwen3_config()).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(directory)
    return str(directory)


def test_the_causal_lm_elm_learns_writes_and_is_scored(embedded_output, causal_lm_dir, tmp_path, capsys):
    predictions = tmp_path / "predictions.jsonl"
    # A few small steps: the 151,669-token vocabulary is the cost. The random LM learns from
    # scratch, hence a from-scratch learning rate.
    load_example().main(["--dataset", str(embedded_output), "--lm", causal_lm_dir, "--lm-lr", "3e-3",
                         "--max-steps", "5", "--batch-size", "4",
                         "--text-tokens", "24", "--eval-rows", "3", "--max-new-tokens", "6",
                         "--predictions", str(predictions)])
    out = capsys.readouterr().out
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < first - 0.1  # the mean loss of the last steps is below that of the first
    assert "semantic consistency of 3 predictions" in out and re.search(r"\nmean +-?[\d.]+ +-?[\d.]+", out)
    assert f"saved 3 predictions to {predictions}" in out  # said, not only done
    written = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(written) == 3 and all(row["text"] for row in written)
    # The file it wrote is what the consistency CLI reads.
    assert consistency_main(["--dataset", str(embedded_output), "--predictions", str(predictions),
                             "--split", "test"]) == 0


def test_only_the_text_tokens_carry_loss(embedded_output):
    """Padding and the soft prompt are not predicted: a row's loss does not change with the
    padding its batch adds after it. (`--lm tiny`, the example's default LM.)"""
    example = load_example()
    torch.manual_seed(0)
    lm, tokenizer = example.load_lm("tiny", torch.device("cpu"))
    elm = example.EmbeddingLM(lm, 64, prompt_tokens=2).eval()
    vector = torch.nn.functional.normalize(torch.randn(1, 64), dim=-1)
    alone = example.text_batch(["A short text."], tokenizer, 16, torch.device("cpu"))
    padded = example.text_batch(["A short text.", "A much longer text that pads the first row."], tokenizer, 16,
                                torch.device("cpu"))
    assert padded[1][0].sum() < padded[1].shape[1]  # the first row is padded
    with torch.no_grad():
        loss_alone = elm(vector, *alone)
        loss_padded_row = elm(vector, padded[0][:1], padded[1][:1])
    torch.testing.assert_close(loss_alone, loss_padded_row)
