"""Build the elm-wikitext dataset: WikiText-2 paragraphs paired with their embeddings.

    python build.py                      # text and embeddings -> data/elm-wikitext2
    python build.py --stage text --help  # every option
"""

import json
import logging
import sys

from elm_wikitext.errors import BuildError
from elm_wikitext.options import parse_options
from elm_wikitext.pipeline import build


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = parse_options(argv)
        stats = build(options)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if stats is not None:
        print(json.dumps(stats, indent=2))
        print(f"wrote {options.output}: datasets.load_from_disk({options.output!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
