"""Train an agent online: `python -m experiments.online [ALGO] --env dmc/cartpole-swingup [flags]`.

`python -m experiments.online ALGO --help` lists every setting of ALGO with its default. Rerunning
with the same --run-dir resumes.
"""
from __future__ import annotations

import sys

from experiments.common import parse_config, run_or_explain, split_algorithm

DEFAULT_ALGORITHM = "mbdpo"
PROG = "python -m experiments.online"


def main(argv: list[str] | None = None) -> int:
    from mbdpo_jax.train.config import LoopOptions, OnlineConfig

    algo, args = split_algorithm(argv, DEFAULT_ALGORITHM, PROG, __doc__)
    agent, loop = parse_config(algo, "loop", LoopOptions(), args, PROG, __doc__)
    from mbdpo_jax.train.runner import run_online

    return run_or_explain(lambda: run_online(OnlineConfig(agent=agent, loop=loop)))


if __name__ == "__main__":
    sys.exit(main())
