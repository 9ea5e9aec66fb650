"""Collect an offline dataset from a random or a trained policy.

Example: `python -m experiments.collect --env toy/pendulum --policy random --steps 10000 --out data/pendulum`.

--policy is `random` (uniform actions in [-1, 1]) or a run directory written by `experiments.online`,
whose newest good checkpoint acts in eval mode; --noise-std adds Gaussian noise to those actions
(clipped to [-1, 1]) for medium-quality data. Every option (with its default) is listed by `--help`.
"""
from __future__ import annotations

import sys

import tyro

from mbdpo_jax.train.collect import CollectConfig, run


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(CollectConfig, args=argv, description=__doc__)
    from experiments.common import run_or_explain

    return run_or_explain(lambda: run(cfg))


if __name__ == "__main__":
    sys.exit(main())
