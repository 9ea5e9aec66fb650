"""Pretrain one (multi-task) world model offline on datasets:

    python -m experiments.pretrain --algo mbdpo --data DIR1 DIR2 --model-size 5M --steps 20000 --run-dir R

One task per distinct env among the datasets (observations and actions zero-padded to the largest,
task embeddings and action masks when there are several). Every evaluation runs each task in its
real env. Rerun with the same --run-dir to resume.
"""
from __future__ import annotations

import sys

import tyro

from mbdpo_jax.train.config import PretrainConfig


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(PretrainConfig, args=argv, description=__doc__)
    from experiments.common import run_or_explain
    from mbdpo_jax.train.offline import pretrain

    return run_or_explain(lambda: pretrain(cfg))


if __name__ == "__main__":
    sys.exit(main())
