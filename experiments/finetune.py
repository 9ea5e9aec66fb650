"""Fine-tune a pretrained model online:

    python -m experiments.finetune --checkpoint R --env dmc/<task> --steps 40000

On one of the pretraining tasks the agent keeps that task's embedding; on a new task (multi-task
models only) it gets a new embedding, initialised to the mean of the others. The first
evaluation (env step 0) is the pretrained model's, unchanged. The agent's settings are the
pretrained run's.
"""
from __future__ import annotations

import sys

import tyro

from mbdpo_jax.train.config import FinetuneConfig


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(FinetuneConfig, args=argv, description=__doc__, config=(tyro.conf.OmitArgPrefixes,))
    from experiments.common import run_or_explain
    from mbdpo_jax.train.offline import finetune

    return run_or_explain(lambda: finetune(cfg))


if __name__ == "__main__":
    sys.exit(main())
