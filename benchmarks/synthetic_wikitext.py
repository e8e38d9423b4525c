"""A synthetic corpus in WikiText's format and with its size and line-length profile.

WikiText-2 has 44,836 lines (36,718 + 3,760 + 4,358) and about 2.5M words. Its layout: a blank
line before and after each heading, and a section's paragraphs on consecutive lines, one per
line, with no blank line between them; so roughly half the lines are paragraphs, of about 115
words on average with a long tail. The words here are random, drawn from a small vocabulary with WikiText's artifacts
(`@-@`, `@,@`, `@.@`, `<unk>`, spaced punctuation), so that every step of the text stage has the
same kind of work to do as on the real corpus.

    python benchmarks/synthetic_wikitext.py DIR [--scale 10]
"""

import argparse
from pathlib import Path

import numpy as np

WORDS = ("the of and in to a was is for on as with by he at from his an were are which this "
         "also be had first one their its new after who they has her but two been other when there "
         "all during into school time may years more most only over city some world would where "
         "later up such used many can state about national out known university united then made "
         "river album song season army game team ship storm church war government series film "
         "1 @,@ 000 2 @.@ 5 state @-@ of @-@ the @-@ art , , , . . ( ) \" ; : 's don 't ' 18 : 05 "
         "Knights ' – $ 5").split()
# Lines of WikiText-2 per source file (the raw archive's names).
LINES = {"wiki.train.raw": 36718, "wiki.valid.raw": 3760, "wiki.test.raw": 4358}


def paragraph(rng: np.random.Generator) -> str:
    words = int(np.clip(rng.lognormal(mean=4.55, sigma=0.6), 5, 1500))
    return " " + " ".join(rng.choice(WORDS, size=words)) + " "


def article_lines(rng: np.random.Generator, number: int) -> list[str]:
    lines = [f" = Article {number} = ", " "]
    lines += [paragraph(rng) for _ in range(int(rng.integers(1, 5)))]  # the lead
    for section in range(int(rng.integers(2, 7))):
        lines += [" ", f" = = Section {section} = = ", " "]
        lines += [paragraph(rng) for _ in range(int(rng.integers(1, 6)))]
    return lines + [" "]


def write_corpus(directory: str | Path, scale: float = 1.0, seed: int = 0, tokens: bool = False) -> Path:
    """Write wiki.{train,valid,test}.raw (and .tokens) with `scale` times WikiText-2's line counts."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    number = 0
    for name, count in LINES.items():
        lines = [" "]
        while len(lines) < count * scale:
            number += 1
            lines += article_lines(rng, number)
        text = "\n".join(lines[:int(count * scale)]) + "\n"
        (directory / name).write_text(text, encoding="utf-8")
        if tokens:
            (directory / name).with_suffix(".tokens").write_text(text, encoding="utf-8")
    return directory


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--tokens", action="store_true", help="also write the same lines as wiki.*.tokens")
    args = parser.parse_args()
    write_corpus(args.directory, args.scale, tokens=args.tokens)
