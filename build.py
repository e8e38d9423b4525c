"""Build the elm-wikitext dataset: WikiText-2 paragraphs paired with their embeddings.

    python build.py                      # text and embeddings -> data/elm-wikitext2
    python build.py --help               # every option

The command lives in elm_wikitext/cli.py; installed, it is also the `elm-wikitext` command.
"""

import sys

from elm_wikitext.cli import main, start_logging, summary  # noqa: F401 (this script's public names)

if __name__ == "__main__":
    sys.exit(main())
