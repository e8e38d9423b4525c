"""WikiText's tokenized lines back to the prose they came from.

WikiText puts spaces around every punctuation mark and splits numbers and hyphenated words with
`@,@`, `@.@` and `@-@`: `the Knights ' 46 – 12 win , at 18 : 05 , cost $ 2 @.@ 5 million`. This
module removes exactly the spaces the tokenizer added, and nothing else: no letter, digit or mark
is added, dropped, changed or moved, so the letters and digits of a line are those of its prose
(tested on every line of the sample). Where WikiText kept no trace of the original spacing (a
spaced hyphen, ` ... `), the space stays.

`<unk>` (only in the tokenized configs) is kept as a visible placeholder and treated as a word:
`16 @,@ <unk>` reads `16,<unk>`, never `16` alone, so no number is ever shortened or merged.

Why rules of our own rather than a general detokenizer: sacremoses' Moses detokenizer, measured
on a held-out set of WikiText-format lines with their original prose, left WikiText's times,
ranges, degrees, curly quotes and plural possessives spaced or wrongly attached (figures in
docs/text.md, "Readable prose"); it also runs a Python loop per token, where these are a few compiled
regular expressions per line plus a short pass over the lines that hold quote marks.
"""

import re

# `1 @,@ 000`, `2 @.@ 5`, `state @-@ of @-@ the @-@ art`: the marks join what they stand between.
JOIN_MARK = re.compile(r" @(.)@(?: |$)")
# A clitic or an elided name part attaches to the word before it: `don 't`, `it 's`, `O 'Neil`,
# `Chang 'an`, `<unk> 's`, and the older `do n't`; curly ones too: `I ’ m`; and `U.S. ' s`.
# (Each pattern here starts with its literal space, which the regex engine finds fast; the
# lookbehind after it looks at the character before that space.)
CLITIC = re.compile(r" (?:(?<=[^\W_] )|(?<=[>.] ))(?:(?='[^\W\d_]|n't\b)|(’) (?=(?:s|t|m|d|ll|re|ve)\b))"
                    r"| (?<=\. )(') (?=s\b)")
# Spaces the tokenizer put between marks that the prose writes closed up, each with a string
# that must be in the line for the pattern to be tried at all.
CLOSED_UP = [
    (" : ", re.compile(r" (:) (?<=\d : )(?=\d)"), r"\1"),  # times and ratios: 18:05, 3:1
    (" – ", re.compile(r" (–) (?<=\d – )(?=\d)"), r"\1"),  # ranges: 5–6
    (" / ", re.compile(r" (/) "), r"\1"),  # and/or, Dallas/Fort Worth
    (" ‑ ", re.compile(r" (‑) "), r"\1"),  # a non-breaking hyphen: M‑12
    (" — ", re.compile(r" (—) "), r"\1"),  # Wikipedia's em dash is unspaced
    (" ⁄ ", re.compile(r" (⁄) "), r"\1"),  # 1 1⁄4
    # Coordinates close up (57°53′N); a temperature keeps its space (30 °C), as Wikipedia prints them.
    ("°", re.compile(r" (?:(?<=\d )(?=°(?! [CF]\b))|(?<=° )(?=[\dCF])|(?<=′ )(?=\d))"), ""),
    ("′", re.compile(r" (?:(?<=\d )(?=[′″])|(?<=[′″] )(?=[NSEW]\b))"), ""),
    ("″", re.compile(r" (?:(?<=\d )(?=″)|(?<=″ )(?=[NSEW]\b))"), ""),
    ("− ", re.compile(r"(?<!\S)(−) (?=\d)"), r"\1"),  # a minus sign: −10 °C
    (" & ", re.compile(r" (&) (?<=\b[A-Z] & )(?=[A-Z]\b)"), r"\1"),  # R&B, A&M (not Dr. Hook & the Band)
    ("♭", re.compile(r" (?<=\b[A-G] )(?=♭)"), ""),  # B♭
    ("♯", re.compile(r" (?<=\b[A-G] )(?=♯)"), ""),
    ("US $", re.compile(r" (?<=\bUS )(?=\$)"), ""),  # US$
]
# No space before closing marks (an ellipsis keeps its spaces), none after openers and currency.
SPACE_BEFORE = re.compile(r" (?=[,.;:!?)\]}%])(?!\.\.\.)")
SPACE_AFTER = re.compile(r" (?:(?<=[(\[{~] )|(?<=[$£€¥₤₹] )(?=[\d<]))")
# Feet and inches, `5 ' 10 "`, before the quote marks are paired.
FEET_INCHES = re.compile(r"(?<=\d) (') (\d+) (\")")
# A tokenizer's quote mark stands alone between spaces; this pass decides which way each faces.
QUOTE_TOKENS = {'"', "'", "‘", "’", "“", "”"}
CURLY = {"‘", "’", "“", "”"}  # each faces one way
CLOSING = re.compile(r"^(?:[,;:!?)\]}]|\.(?!\.\.))")  # an ellipsis can open a quote
DECADE = re.compile(r"^\d\d(?:s\b|$)")  # ' 70s, ' 65
WORD_END = re.compile(r"(?:[^\W_]|>)$")
# Words in s that are no plural nouns: a mark after them opens a quote (`its ' spare ' style`).
NOT_PLURAL = {"its", "his", "hers", "ours", "yours", "theirs", "is", "was", "has", "does", "this",
              "thus", "as", "us", "plus", "whereas", "versus", "across", "unless", "perhaps",
              "always", "sometimes", "besides", "towards", "afterwards", "less", "yes"}


def detokenize(line: str) -> str:
    """One WikiText line (or title) as prose: `the Knights ' coach , who did n't` -> `the
    Knights' coach, who didn't`."""
    text = " ".join(line.split())
    text = JOIN_MARK.sub(r"\1", text)
    text = CLITIC.sub(r"\1\2", text)  # the mark, if one was matched
    text = FEET_INCHES.sub(r"\1\2\3", text)
    if any(mark in text for mark in QUOTE_TOKENS):
        text = attach_quotes(text.split(" "))
    for trigger, pattern, replacement in CLOSED_UP:
        if trigger in text:
            text = pattern.sub(replacement, text)
    text = SPACE_BEFORE.sub("", text)
    return SPACE_AFTER.sub("", text)


def attach_quotes(tokens: list[str]) -> str:
    """Join the tokens, closing up each quote mark on the side it faces: an opening mark to the
    word after it, a closing mark, a plural possessive (`Knights '`) to the word before it."""
    glued = set()  # i: no space between token i and i + 1
    for i, role in _quote_roles(tokens).items():
        if role == "open" and i + 1 < len(tokens):
            glued.add(i)
        elif role == "close" and i > 0:
            glued.add(i - 1)
    for i in sorted(glued, reverse=True):  # from the right, so that a run of them joins whole
        tokens[i:i + 2] = [tokens[i] + tokens[i + 1]]
    return " ".join(tokens)


def _quote_roles(tokens: list[str]) -> dict[int, str]:
    """Which way each standalone quote mark faces: `open`, `close`, or `none` (left spaced)."""
    marks = [(i, token) for i, token in enumerate(tokens) if token in QUOTE_TOKENS]
    roles = {i: "open" if token in ("‘", "“") else "close" for i, token in marks if token in CURLY}
    roles.update(_pair_marks(tokens, [i for i, token in marks if token == '"'], apostrophes=False))
    roles.update(_pair_marks(tokens, [i for i, token in marks if token == "'"], apostrophes=True))
    return roles


def _pair_marks(tokens: list[str], positions: list[int], apostrophes: bool) -> dict[int, str]:
    """Pair straight quote marks left to right, each closing the one before it. For `'`, a mark
    after a word in s and before a lower-case word or a number is a plural possessive (`the
    Knights ' coach`) unless it must close a quote, and a mark before a two-digit year elides a
    century (`the ' 70s`). A mark left open after a word in s is a possessive (`the series '
    Rookie of the Year`); any other is a quote that continues past the line."""
    roles, pending = {}, None
    for k, i in enumerate(positions):
        before = tokens[i - 1] if i > 0 else ""
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if apostrophes and _plural(before) and (after[:1].islower() or after[:1].isdigit() or after in QUOTE_TOKENS):
            if pending is None or k + 1 < len(positions):  # a later mark can close the quote
                roles[i] = "close"  # attached to the word before it, as a closing mark is
                continue
        if apostrophes and DECADE.match(after) and not _plural(before):
            roles[i] = "open"
        elif pending is not None and before:
            roles[pending], roles[i], pending = "open", "close", None
        elif after and not CLOSING.match(after):
            pending = i
        else:
            roles[i] = "close" if before else "none"
    if pending is not None:
        roles[pending] = "close" if apostrophes and _plural(tokens[pending - 1] if pending else "") else "open"
    return roles


def _plural(word: str) -> bool:
    """Whether a `'` after `word` can be a plural possessive (an unknown word can be a plural)."""
    return word.endswith("<unk>") or (word.endswith(("s", "S")) and len(word) > 1 and
                                      word.lower() not in NOT_PLURAL and WORD_END.search(word) is not None)
