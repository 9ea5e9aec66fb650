"""Check that a refactoring kept training bit-for-bit: run TD-MPC2 on toy/pendulum with a fixed seed
at two git revisions and compare their metrics.csv row for row (wall-clock columns excluded).

    python -m benchmarks.reshape_equality --before c5eff7d --after HEAD

Each revision is checked out in a temporary git worktree and run with the same Python; the command
line style of each revision is detected (the flat `--algo tdmpc2` CLI before the per-algorithm
subcommands). Exit status 0 when the files agree, 1 otherwise (the first differing cells are printed).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WALL_CLOCK = {"wall_time", "env_steps_per_s", "updates_per_s"}
RUN_FLAGS = ["--env", "toy/pendulum", "--steps", "1200", "--num-envs", "2", "--model-size", "tiny",
             "--batch-size", "32", "--eval-every", "400", "--eval-episodes", "2", "--seed-steps", "200",
             "--buffer-size", "2000", "--iterations", "2", "--num-samples", "32", "--num-elites", "4",
             "--num-pi-trajs", "2", "--seed", "0", "--no-progress"]


def checkout(repo: Path, rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)
    return where


def run_at(tree: Path, run_dir: Path) -> Path:
    """Train with the revision in `tree`; returns its metrics.csv."""
    subcommands = "split_algorithm" in (tree / "experiments" / "common.py").read_text()
    algo = ["tdmpc2"] if subcommands else ["--algo", "tdmpc2"]
    cmd = [sys.executable, "-m", "experiments.online", *algo, *RUN_FLAGS, "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return run_dir / "metrics.csv"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(f)]


def differences(before: list[dict[str, str]], after: list[dict[str, str]]) -> list[str]:
    """Human-readable differences: row count, column sets, then differing cells."""
    out = []
    if len(before) != len(after):
        out.append(f"{len(before)} rows before, {len(after)} after")
    if before and after and set(before[0]) != set(after[0]):
        out.append(f"columns only before: {sorted(set(before[0]) - set(after[0]))}; "
                   f"only after: {sorted(set(after[0]) - set(before[0]))}")
    for i, (a, b) in enumerate(zip(before, after)):
        out += [f"row {i} {k}: {a[k]} -> {b.get(k)}" for k in a if k in b and a[k] != b[k]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision before the change")
    parser.add_argument("--after", default="HEAD", help="git revision after the change")
    parser.add_argument("--out", default="", help="optional JSON report path")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {name: checkout(repo, rev, tmp / name) for name, rev in (("before", args.before), ("after", args.after))}
        try:
            rows = {name: read_rows(run_at(tree, tmp / f"run-{name}")) for name, tree in trees.items()}
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)
    diffs = differences(rows["before"], rows["after"])
    report = {"before": args.before, "after": args.after, "rows": len(rows["after"]),
              "columns_compared": sorted(rows["after"][0]) if rows["after"] else [], "equal": not diffs,
              "differences": diffs[:20], "flags": RUN_FLAGS}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
