"""Wall time of the light commands (`exgra models`, `--help`, `--version`), side by side with a baseline.

Run from the repository root:  python bench/cli_startup.py [--baseline DIR] [--repeats 5]

``--baseline`` is another source tree of exgra (e.g. ``git archive c5b2ca0 | tar -x -C /tmp/base``, the
commit before the torch-free registry); each command runs as a fresh ``python -m exgra`` process in each
tree, interleaved so both see the same machine load. Each cell is the median of ``--repeats``; the last
column is baseline / this tree. "torch" says whether the command imported torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (("models",), ("--help",), ("--version",))
# Runs the command like the console script, then says whether torch was imported.
_WRAPPER = (
    "import sys\nfrom exgra.cli import main\nsys.argv = ['exgra', *sys.argv[1:]]\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\nsys.stderr.write('torch=%s' % ('torch' in sys.modules))"
)


def _run(tree: Path, args: tuple[str, ...]) -> tuple[float, bool]:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    start = time.perf_counter()
    # cwd=tree: python -c puts the working folder first on sys.path, so it must be the tree measured.
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *args], cwd=tree, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}: {done.stderr[-500:]}")
    return seconds, done.stderr.endswith("torch=True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another exgra source tree to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    trees = {"this tree": Path.cwd()}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()

    print(f"{'command':<12}" + "".join(f"{name + ' s':>14}{'torch':>7}" for name in trees) + "   baseline ×")
    for command in COMMANDS:
        times: dict[str, list[float]] = {name: [] for name in trees}
        torch_loaded: dict[str, bool] = {}
        for _ in range(args.repeats):
            for name, tree in trees.items():
                seconds, torch_loaded[name] = _run(tree, command)
                times[name].append(seconds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        cells = "".join(f"{medians[name]:>14.2f}{'yes' if torch_loaded[name] else 'no':>7}" for name in trees)
        ratio = f"{medians['baseline'] / medians['this tree']:>13.1f}" if "baseline" in medians else ""
        print(f"{' '.join(command):<12}{cells}{ratio}")


if __name__ == "__main__":
    main()
