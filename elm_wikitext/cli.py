"""The command line of the build (`python build.py`, or `elm-wikitext` once installed).

    python build.py                      # text and embeddings -> data/elm-wikitext2
    python build.py --help               # every option
"""

import json
import logging
import os
import sys
import time
from pathlib import Path

# Only what parsing the options needs: torch, datasets and transformers load after it, so that
# --help and a refused option answer at once.
from .errors import BuildError
from .options import parse_options


def start_logging() -> Path:
    """Log to the terminal and to a file of this run under logs/ (one per process)."""
    import datasets.utils.logging
    import huggingface_hub.utils.logging
    import transformers.utils.logging

    path = Path("logs") / f"build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.parent.mkdir(exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(path)], force=True)
    # These libraries print to stderr through handlers of their own: let ours show each record
    # once, and log it. transformers can drop its handler; datasets and huggingface_hub have no
    # helper for that, so their handler is removed here.
    transformers.utils.logging.disable_default_handler()
    for library in (transformers, datasets, huggingface_hub):
        library.utils.logging.enable_propagation()
    for name in ("datasets", "huggingface_hub"):
        logging.getLogger(name).handlers.clear()
    return path


def summary(stats: dict, output: str, log_path: Path) -> str:
    """The run's closing table: rows and tokens per split, drops, time and speed, where it is."""
    text, embed = stats.get("text", {}), stats.get("embed")
    lines = [f"{'split':<12}{'rows':>10}{'tokens':>14}"]
    lines += [f"{name:<12}{rows:>10,}{text.get('tokens', {}).get(name, 0):>14,}"
              for name, rows in text.get("splits", {}).items()]
    lines.append("dropped:    " + ", ".join(f"{reason} {count:,}" for reason, count in text.get("dropped", {}).items()))
    timing = f"time:       text {text.get('seconds', 0):.1f} s"
    if embed:
        compiled = ", compiled" if embed["compiled"] else ""
        timing += (f", embed {embed['seconds']:.1f} s ({embed['tokens_per_second']:,} tokens/s computed "
                   f"here in {embed['embedding_seconds']:.1f} s of batches, padding {embed['padding_share']:.1%}, "
                   f"{embed['processes']} process(es) on {embed['device']}{compiled})")
    lines += [timing, f"output:     {output}", f"load:       datasets.load_from_disk({output!r})",
              f"log:        {log_path}"]
    if "published" in stats:
        lines.append(f"published:  {stats['published']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_options(argv)
    except BuildError as err:
        return refuse(err)
    log_path = start_logging()
    from . import processes
    from .pipeline import build
    from .verify import verify

    try:
        stats = verify(options.verify, None) if options.verify else build(options)
    except BuildError as err:
        return refuse(err)
    finally:
        processes.finish()  # under a launcher; the work together is over either way
    if stats is None:  # not the main process: it printed nothing to summarise
        return 0
    if options.verify or options.dry_run:
        print(json.dumps(stats, indent=2))
        print(f"log: {log_path}")
    else:
        print(summary(stats, options.output, log_path))
    return 0


def refuse(err: BuildError) -> int:
    # One line whatever the message wraps: some library errors it quotes span several.
    # The log file under logs/ keeps the details; the terminal gets the one line.
    print("error:", " ".join(str(err).split()), file=sys.stderr)
    return 2
