"""Text-stage speed and memory: `build.py --stage text` on a synthetic WikiText, as a user runs it.

Each run writes the synthetic corpus (benchmarks/synthetic_wikitext.py) at the given scale, then
times `python build.py --stage text` in a child process from its start to its end, with a fresh
datasets cache (so nothing is reused from an earlier run). It reports also the stage's own
"seconds" from the output's statistics and two peaks of memory: the largest max RSS of the build
process and of its worker processes, each on its own (from `wait4`, which counts the workers the
build reaped; pages a worker shares with the build count in both), and the largest sum of
proportional set sizes (PSS) over the build and its workers together, sampled four times a
second (a page two processes share counts once): what they hold between them.
The goals, once the source is on disk: at scale 1 (WikiText-2's size) at most 30 s; at scale 10
at most 2 GiB; at scale 50 (WikiText-103's size) at most 4 minutes and 3 GiB.

With `--baseline DIR` (another checkout of this project, e.g. `git worktree add DIR COMMIT`),
each scale also runs that checkout's `build.py` on the same corpus, taking turns with this one, so
that a change is measured against its baseline in the same run on the same machine.

    python benchmarks/text_speed.py [--scale 1 10 50] [--baseline DIR --repeats 2]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # accelerate's dependency
from synthetic_wikitext import write_corpus

ROOT = Path(__file__).resolve().parent.parent
GOALS = {1: {"wall_s": 30}, 10: {"peak_mib": 2048, "pss_mib": 2048},
         50: {"wall_s": 240, "peak_mib": 3072, "pss_mib": 3072}}


def make_model(directory: Path) -> str:
    subprocess.run([sys.executable, "-m", "elm_wikitext.tiny", str(directory)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return str(directory)


def read_stats(output: Path) -> dict:
    """The text stage's statistics: in stats.json, or in manifest.json's "stats" where the
    output carries a manifest instead."""
    if (output / "stats.json").is_file():
        return json.loads((output / "stats.json").read_text())["text"]
    return json.loads((output / "manifest.json").read_text())["stats"]["text"]


def run_text_stage(source: Path, model: str, work: Path, root: Path = ROOT) -> dict:
    """One `build.py --stage text` of the checkout `root`, in a child with its own empty
    datasets cache, importing that checkout's package."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_DATASETS_CACHE": str(work / "hf" / "datasets"),
           "PYTHONPATH": str(root)}
    output = work / "out"
    command = [sys.executable, "build.py", "--stage", "text", "--source", str(source),
               "--model", model, "--output", str(output)]
    with open(work / "build.log", "w") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        pss = PssSampler(child.pid)
        # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux), not a running max
        # over every child this process has had.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        pss.stop()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"build.py failed ({code}); its log:\n{(work / 'build.log').read_text()[-4000:]}")
    stats = read_stats(output)
    return {"lines": stats["lines"], "kept": stats["kept"], "wall_s": wall,
            "stage_s": stats["seconds"], "peak_mib": usage.ru_maxrss / 1024, "pss_mib": pss.peak / 2**20}


class PssSampler(threading.Thread):
    """The largest sum of PSS over a process and its descendants, sampled until `stop`."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.done = psutil.Process(pid), 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.25):
            total = 0
            try:
                for process in [self.process, *self.process.children(recursive=True)]:
                    total += process.memory_full_info().pss
            except psutil.Error:  # a worker that ended between the listing and the reading
                continue
            self.peak = max(self.peak, total)

    def stop(self) -> None:
        self.done.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0])
    parser.add_argument("--model", help="a model directory (default: the tiny model, built here)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, output)")
    parser.add_argument("--baseline", type=Path, help="another checkout to time on the same corpus")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each checkout per scale")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="text-speed-"))
    model = args.model or make_model(work / "tiny-model")
    roots = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    results = {}
    for scale in args.scale:
        source = write_corpus(work / f"source-{scale:g}", scale, tokens=args.baseline is not None)
        for repeat in range(args.repeats):
            order = list(roots.items()) if repeat % 2 == 0 else list(roots.items())[::-1]
            for name, root in order:  # taking turns: a change in the machine's load hits both
                result = run_text_stage(source, model, work / "run", root)
                results.setdefault((scale, name), []).append(result)
                print(f"scale {scale:g} {name} done: {result}", file=sys.stderr, flush=True)

    print(f"{'scale':>5} {'code':>9} {'lines':>9} {'kept':>8} {'wall s':>8} {'stage s':>8} "
          f"{'peak RSS MiB':>13} {'peak PSS MiB':>13}")
    for (scale, name), runs in results.items():
        for r in runs:
            print(f"{scale:>5g} {name:>9} {r['lines']:>9,} {r['kept']:>8,} {r['wall_s']:>8.1f} "
                  f"{r['stage_s']:>8.1f} {r['peak_mib']:>13,.0f} {r['pss_mib']:>13,.0f}")
    for (scale, name), runs in results.items():
        for measure, goal in GOALS.get(scale, {}).items() if name == "this" else ():
            best = min(r[measure] for r in runs)
            print(f"goal: scale {scale:g} {measure} at most {goal:,}: {'met' if best <= goal else 'not met'} "
                  f"({best:,.1f})")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
