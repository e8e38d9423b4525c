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
from elm_wikitext.verify import verify


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = parse_options(argv)
        stats = verify(options.verify, None) if options.verify else build(options)
    except BuildError as err:
        # One line whatever the message wraps: some library errors it quotes span several.
        print("error:", " ".join(str(err).split()), file=sys.stderr)
        return 2
    if stats is not None:
        print(json.dumps(stats, indent=2))
        if not options.verify:
            print(f"wrote {options.output}: datasets.load_from_disk({options.output!r})")
        if "published" in stats:
            print(f"published: {stats['published']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
