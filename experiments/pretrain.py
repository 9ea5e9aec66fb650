"""Pretrain one (multi-task) world model offline on datasets:

    python -m experiments.pretrain [ALGO] --data DIR1 DIR2 --model-size 5M --steps 20000 --run-dir R

One task per distinct env among the datasets (observations and actions zero-padded to the largest,
task embeddings and action masks when there are several). Every evaluation runs each task in its
real env. Rerun with the same --run-dir to resume.
"""
from __future__ import annotations

import sys

from experiments.common import parse_config, run_or_explain, split_algorithm

PROG = "python -m experiments.pretrain"


def main(argv: list[str] | None = None) -> int:
    from mbdpo_jax.train.config import PretrainConfig, PretrainOptions

    algo, args = split_algorithm(argv, "mbdpo", PROG, __doc__)
    agent, offline = parse_config(algo, "offline", PretrainOptions(), args, PROG, __doc__)
    from mbdpo_jax.train.offline import pretrain

    return run_or_explain(lambda: pretrain(PretrainConfig(agent=agent, offline=offline)))


if __name__ == "__main__":
    sys.exit(main())
