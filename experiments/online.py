"""Train an agent online: `python -m experiments.online --algo tdmpc2 --env dmc/cartpole-swingup`.

Every option (with its default) is listed by `--help`. Rerunning with the same --run-dir resumes.
"""
from __future__ import annotations

import sys

import tyro

from mbdpo_jax.train.config import OnlineConfig


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(OnlineConfig, args=argv, description=__doc__)
    from experiments.common import run_or_explain
    from mbdpo_jax.train.runner import run_online

    return run_or_explain(lambda: run_online(cfg))


if __name__ == "__main__":
    sys.exit(main())
