"""Text-stage speed and memory: `build.py --stage text` on a synthetic WikiText, as a user runs it.

Each run writes the synthetic corpus (benchmarks/synthetic_wikitext.py) at the given scale, then
times `python build.py --stage text` in a child process from its start to its end, with a fresh
datasets cache (so nothing is reused from an earlier run). It reports also the stage's own
"seconds" from the output's statistics, and the child's peak memory (max RSS) from `wait4`.
The goals: at scale 1 (WikiText-2's size) the stage takes at most 30 s once the source is on
disk; at scale 10 its peak memory stays within 2 GiB.

With `--baseline DIR` (another checkout of this project, e.g. `git worktree add DIR COMMIT`),
each scale also runs that checkout's `build.py` on the same corpus, taking turns with this one, so
that a change is measured against its baseline in the same run on the same machine.

    python benchmarks/text_speed.py [--scale 1 10] [--baseline DIR --repeats 2]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic_wikitext import write_corpus

ROOT = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 30  # at scale 1
GOAL_MIB = 2048  # at scale 10


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
        # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux), not a running max
        # over every child this process has had.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"build.py failed ({code}); its log:\n{(work / 'build.log').read_text()[-4000:]}")
    stats = read_stats(output)
    return {"lines": stats["lines"], "kept": stats["kept"], "wall_s": wall,
            "stage_s": stats["seconds"], "peak_mib": usage.ru_maxrss / 1024}


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

    print(f"{'scale':>5} {'code':>9} {'lines':>9} {'kept':>8} {'wall s':>8} {'stage s':>8} {'peak RSS MiB':>13}")
    for (scale, name), runs in results.items():
        for r in runs:
            print(f"{scale:>5g} {name:>9} {r['lines']:>9,} {r['kept']:>8,} {r['wall_s']:>8.1f} "
                  f"{r['stage_s']:>8.1f} {r['peak_mib']:>13,.0f}")
    results = {scale: min(runs, key=lambda r: r["wall_s"]) for (scale, name), runs in results.items()
               if name == "this"}
    if 1 in results:
        wall = results[1]["wall_s"]
        print(f"goal: scale 1 in at most {GOAL_SECONDS} s wall: {'met' if wall <= GOAL_SECONDS else 'not met'} "
              f"({wall:.1f} s)")
    if 10 in results:
        peak = results[10]["peak_mib"]
        print(f"goal: scale 10 peak RSS within {GOAL_MIB} MiB: {'met' if peak <= GOAL_MIB else 'not met'} "
              f"({peak:,.0f} MiB)")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
