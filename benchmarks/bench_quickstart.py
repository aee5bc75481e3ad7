"""Does `tresnet-ft fit --recipe quickstart` meet its goal (val top-1 >= 0.9 in < 5 min)? One row per seed.

Runs the real command, once per seed, each in a fresh temporary folder, and reads the final
validation top-1 from the run's metrics.csv. Wall time includes everything the user waits for:
start-up, training, validation, checkpoints and plots. Time it alone on the machine: any other
busy process slows every step.

    python benchmarks/bench_quickstart.py --seeds 0 1 2

Exits with 1 when a seed misses the goal.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_TOP1, GOAL_SECONDS = 0.9, 300.0


def run_seed(seed: int, extra: list[str]) -> tuple[float, float]:
    """(final val top-1, wall seconds) of one quickstart fit."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-c", "from tresnet_ft.cli.command import main; raise SystemExit(main())",
                   "fit", "--recipe", "quickstart", "--logger", "csv", "--seed_everything", str(seed),
                   "--trainer.enable_progress_bar", "false", *extra]
        start = time.perf_counter()
        subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        metrics = next(Path(folder).glob("runs/quickstart/version_*/metrics.csv"))
        top1 = [float(row["val/top1"]) for row in csv.DictReader(metrics.open()) if row.get("val/top1")]
    return top1[-1], seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("extra", nargs="*", help="more `tresnet-ft fit` flags, after --")
    args = parser.parse_args()
    missed = 0
    print(f"{'seed':>4}  {'val top-1':>9}  {'wall time':>9}  goal")
    for seed in args.seeds:
        top1, seconds = run_seed(seed, args.extra)
        met = top1 >= GOAL_TOP1 and seconds < GOAL_SECONDS
        missed += not met
        print(f"{seed:>4}  {top1:>9.2f}  {int(seconds // 60)} min {seconds % 60:2.0f} s  {'met' if met else 'MISSED'}",
              flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
