"""How often each detokenizer gives back a line's original prose exactly.

    pip install sacremoses
    python benchmarks/detok_agreement.py [--real ../shared/real/wiki.valid.tokens]

The held-out set, `detok_heldout.jsonl`, holds paragraphs written for this project as Wikipedia
would print them (`original`) beside WikiText's tokenization of them (`tokenized`); it was written
by someone who had not seen our rules. Compared:

- ours: `elm_wikitext.text.detokenize`;
- sacremoses: its Moses detokenizer, after joining WikiText's `@,@ @.@ @-@` marks;
- sacremoses + steps: the same, then our closing-up of times, ranges, symbols and slashes.

With `--real FILE` (a WikiText `.tokens` or `.raw` file), it also counts, on every paragraph line
of FILE, the tokenization each method leaves behind (a space before `,.;:!?)`, a split clitic,
a spaced time), and how many lines the methods detokenize differently.
"""

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

from sacremoses import MosesDetokenizer

from elm_wikitext.text.detokenize import CLOSED_UP, JOIN_MARK, detokenize

HELDOUT = Path(__file__).with_name("detok_heldout.jsonl")
MOSES = MosesDetokenizer("en")
LEFTOVERS = {
    "space before punctuation": re.compile(r" [,.;:!?)\]](?!\.\.)"),
    "split clitic": re.compile(r" '(?:s|t|m|d|re|ve|ll)\b| ’ (?:s|t|m)\b"),
    "spaced time": re.compile(r"\d : \d"),
    "spaced range": re.compile(r"\d – \d"),
    "join mark": re.compile(r"@.@"),
}


def sacremoses(line: str) -> str:
    return MOSES.detokenize(JOIN_MARK.sub(r"\1", " ".join(line.split())).split())


def sacremoses_with_steps(line: str) -> str:
    text = sacremoses(line)
    for trigger, pattern, replacement in CLOSED_UP:
        if trigger in text:
            text = pattern.sub(replacement, text)
    return text


METHODS = {"ours": detokenize, "sacremoses": sacremoses, "sacremoses + steps": sacremoses_with_steps}


def agreement(rows: list[dict]) -> None:
    print(f"held-out set: {len(rows)} paragraphs ({HELDOUT.name})")
    by_case = {name: Counter() for name in METHODS}
    for name, method in METHODS.items():
        for row in rows:
            by_case[name][row["case"]] += method(row["tokenized"]) == row["original"]
    cases = Counter(row["case"] for row in rows)
    print(f"{'case':<26}{'rows':>5}" + "".join(f"{name:>20}" for name in METHODS))
    for case, total in sorted(cases.items()):
        print(f"{case:<26}{total:>5}" + "".join(f"{by_case[name][case]:>20}" for name in METHODS))
    print(f"{'exact match, all':<26}{len(rows):>5}" + "".join(
        f"{sum(by_case[name].values()) / len(rows):>20.1%}" for name in METHODS))


def real_text(path: Path) -> None:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    paragraphs = [line for line in lines if line and not line.startswith("= ")]
    outputs = {}
    for name, method in METHODS.items():
        started = time.perf_counter()
        outputs[name] = [method(line) for line in paragraphs]
        seconds = time.perf_counter() - started
        left = {what: sum(bool(pattern.search(text)) for text in outputs[name])
                for what, pattern in LEFTOVERS.items()}
        print(f"{name:<20} {seconds:5.2f} s; lines with leftover tokenization: {left}")
    differ = sum(a != b for a, b in zip(outputs["ours"], outputs["sacremoses + steps"]))
    print(f"{path.name}: {len(paragraphs)} paragraph lines; ours and sacremoses + steps differ on {differ}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, help="a WikiText .tokens or .raw file to scan as well")
    args = parser.parse_args()
    agreement([json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines()])
    if args.real:
        real_text(args.real)


if __name__ == "__main__":
    main()
