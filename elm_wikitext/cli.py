"""The command line of the build (`python build.py`, or `elm-wikitext` once installed).

    python build.py                      # text and embeddings -> data/elm-wikitext2
    python build.py --help               # every option
"""

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

# Only what parsing the options needs: torch, datasets and transformers load after it, so that
# --help and a refused option answer at once.
from elm_wikitext.core.errors import BuildError
from elm_wikitext.options import BuildOptions, parse_options


class TerminalOnly(logging.Filter):
    """Keep records marked `log_file_only` (an error's traceback) out of the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "log_file_only", False)


def start_logging() -> Path:
    """Log to the terminal and to a file of this run under logs/ (one per process)."""
    import datasets.utils.logging
    import huggingface_hub.utils.logging
    import transformers.utils.logging

    path = Path("logs") / f"build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.parent.mkdir(exist_ok=True)
        to_file = logging.FileHandler(path)
    except OSError as err:  # logs is a file, or the folder is read-only
        raise BuildError(f"cannot write this run's log {path} ({err}): make logs/ a writable folder "
                         "here, or run build.py from a folder where it can be") from None
    terminal = logging.StreamHandler()
    terminal.addFilter(TerminalOnly())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[terminal, to_file], force=True)
    # These libraries print to stderr through handlers of their own: let ours show each record
    # once, and log it. transformers can drop its handler; datasets and huggingface_hub have no
    # helper for that, so their handler is removed here.
    transformers.utils.logging.disable_default_handler()
    for library in (transformers, datasets, huggingface_hub):
        library.utils.logging.enable_propagation()
    for name in ("datasets", "huggingface_hub"):
        logging.getLogger(name).handlers.clear()
    return path


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` removes what it was writing."""


def _terminate(signum, frame):
    raise Terminated()


def summary(stats: dict, output: str, log_path: Path, column: str = "embedding") -> str:
    """The run's closing table: rows and tokens per split, drops, time and speed of the column
    this run embedded, where it is."""
    text, embed = stats.get("text", {}), (stats.get("embed") or {}).get(column)
    lines = [f"{'split':<12}{'rows':>10}{'tokens':>14}"]
    lines += [f"{name:<12}{rows:>10,}{text.get('tokens', {}).get(name, 0):>14,}"
              for name, rows in text.get("splits", {}).items()]
    lines.append("dropped:    " + ", ".join(f"{reason} {count:,}" for reason, count in text.get("dropped", {}).items()))
    timing = f"time:       text {text.get('seconds', 0):.1f} s"
    if embed and embed.get("reused"):
        timing += f", embed {embed['seconds']:.1f} s (the output was up to date: its {column} vectors were reused)"
    elif embed:
        compiled = ", compiled" if embed["compiled"] else ""
        timing += (f", embed {column} {embed['seconds']:.1f} s ({embed['tokens_per_second']:,} tokens/s computed "
                   f"here in {embed['embedding_seconds']:.1f} s of batches, padding {embed['padding_share']:.1%}, "
                   f"{embed['processes']} process(es) on {embed['device']}{compiled})")
    neighbors = (stats.get("neighbors") or {}).get(column)
    if neighbors:
        timing += f", neighbours {neighbors['seconds']:.1f} s ({neighbors['k']} per row, exact, on {neighbors['device']})"
    lines.append(timing)
    check = (embed or {}).get("reference")
    if check:
        lines.append(f"checked:    {check['rows']} rows of {column} against sentence-transformers (seed {check['seed']}): "
                     f"lowest cosine {check['lowest_cosine']}, floor {check['min_cosine']}; {check['seconds']:.1f} s, "
                     f"and {check['load_seconds']:.1f} s loading its model")
    lines += [f"output:     {output}", f"load:       datasets.load_from_disk({output!r})",
              f"log:        {log_path}"]
    if "published" in stats:
        lines.append(f"published:  {stats['published']}")
    if "staged" in stats:
        lines += staged_summary(stats["staged"])
    return "\n".join(lines)


def staged_summary(staged: dict) -> list[str]:
    """--hub-folder's closing lines: the folder, and how to publish it from another machine."""
    folder, repo_id, version = staged["folder"], staged["repo_id"], staged["version"]
    return [f"staged:     {folder}, what --push would upload as {repo_id} {version} "
            f"(it loads as load_dataset({folder!r}))",
            "To publish it, copy the folder unchanged to a machine with the Hub, log in (hf auth login), "
            f"check that {repo_id} has no tag {version} yet (hf repos tag list {repo_id} --repo-type dataset), "
            "then run:",
            *(f"  {command}" for command in staged["commands"])]


def verify_summary(report: dict) -> str:
    """--verify's closing lines: what passed, and on what."""
    return "\n".join([
        f"verified:   {report['verified']}: every gate passed",
        "rows:       " + ", ".join(f"{name} {rows:,}" for name, rows in report["rows"].items()),
        f"columns:    {', '.join(report['columns'])}",
        f"gates:      {', '.join(gate.split()[0] for gate in report['gates'])}",
        f"sample:     {report['sample_rows']} rows embedded again by sentence-transformers (seed "
        f"{report['sample_seed']}), lowest cosine {report['lowest_sample_cosine']} (at least "
        + ", ".join(f"{column} {floor}" for column, floor in report["min_cosine_allowed"].items())
        + f"); {report['reference_seconds']:.1f} s, and {report['reference_load_seconds']:.1f} s loading the model"])


def duration(seconds: float | None) -> str:
    """A time to read at a glance; a short one is never shown as 0."""
    if seconds is None:
        return "unknown (a GPU whose peak this build does not know)"
    if seconds < 1:
        return "< 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f} days"


def plan_summary(plan: dict) -> str:
    """--dry-run's plan: what the text stage keeps and what embedding it would take."""
    def setting(compiled: bool) -> str:
        return "compiled" if compiled else "eager"

    chunks = f"{plan['chunks']:,} chunk{'s' if plan['chunks'] != 1 else ''}"
    lines = [f"source:     {plan['source']}", f"model:      {plan['model']}",
             "paragraphs: " + ", ".join(f"{name} {rows:,}" for name, rows in plan["paragraphs"].items()),
             "dropped:    " + ", ".join(f"{reason} {count:,}" for reason, count in plan["dropped"].items()),
             f"tokens:     {plan['tokens']:,} in {chunks}",
             f"compute:    {plan['tflop']:.3g} TFLOP",
             f"{'here:':<12}{duration(plan['device_seconds'])} on {plan['device']}"
             + (f" (its matrix products at {plan['cpu_flops'] / 1e9:,.1f} GFLOP/s, this CPU's rate measured just "
                "now; a small model's batches spend most of their time elsewhere)" if plan["device"] == "cpu"
                else f" ({setting(plan['device_compiled'])})"),
             f"{'cluster:':<12}{duration(plan['gpus_seconds'])} on {plan['gpus']} x {plan['gpu']} "
             f"({setting(plan['gpus_compiled'])}; the busiest GPU embeds {plan['gpus_chunks']} of {chunks})",
             "(the batches alone: loading the model, and compiling it, come on top)"]
    if "neighbors_tflop" in plan:
        lines.append(f"{'neighbours:':<12}{plan['neighbors_tflop']:.3g} TFLOP: {duration(plan['neighbors_device_seconds'])} "
                     f"on {plan['device']}, {duration(plan['neighbors_gpus_seconds'])} on {plan['gpus']} x {plan['gpu']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_options(argv)
        log_path = start_logging()
    except BuildError as err:
        print("error:", " ".join(str(err).split()), file=sys.stderr)
        return 2
    from elm_wikitext.core import processes

    on_sigterm = signal.signal(signal.SIGTERM, _terminate)
    try:
        stats = run(options)
    except (BuildError, OSError, KeyboardInterrupt) as err:
        return fail(err, log_path)
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
        processes.finish()  # under a launcher; the work together is over either way
    if stats is None:  # not the main process: it printed nothing to summarise
        return 0
    if options.dry_run:
        print(plan_summary(stats["plan"]))
        print(f"log:        {log_path}")
    elif options.verify:
        logging.getLogger("build").info("verify report: %s", json.dumps(stats),  # for scripts: in the log only
                                        extra={"log_file_only": True})
        print(verify_summary(stats))
        print(f"log:        {log_path} (the report as JSON)")
    else:
        print(summary(stats, options.output, log_path, options.column))
    return 0


def run(options) -> dict | None:
    from elm_wikitext.pipeline import build
    from elm_wikitext.publish.verify import verify

    if options.verify:  # --model, if given, points at the weights where they are now
        model = options.model if options.model != BuildOptions().model else None
        return verify(options.verify, model, option="--verify", column=options.column)
    return build(options)


def fail(err: BaseException, log_path: Path) -> int:
    """The one line on the terminal, the traceback in the log; the exit status."""
    if isinstance(err, KeyboardInterrupt):
        how, status = ("SIGTERM", 143) if isinstance(err, Terminated) else ("Ctrl-C", 130)
        message = (f"the build stopped ({how}); nothing half-written was left: rerun the same command "
                   "to resume, finished work is kept")
    elif isinstance(err, OSError):  # a place the build needs (a cache, a folder) it cannot use
        what = f"cannot use {err.filename} ({err.strerror})" if err.filename else str(err)
        message, status = (f"{what}: make that path a writable folder with free space, then rerun "
                           f"(details in {log_path})"), 2
    else:
        message, status = str(err), 2
    message = " ".join(message.split())  # one line whatever the message wraps
    logging.getLogger("build").error("error: %s", message, exc_info=err, extra={"log_file_only": True})
    print("error:", message, file=sys.stderr)
    return status
