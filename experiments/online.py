"""Train an agent online: `python -m experiments.online [ALGO] [--preset P] --env dmc/cartpole-swingup [flags]`.

`python -m experiments.online ALGO --help` lists every setting of ALGO with its default. --preset
picks the defaults: `laptop` (small settings that learn on a 2-core CPU in minutes), `paper` (the
published settings) or `auto` (the default: paper on a GPU/TPU, laptop on a CPU); flags given
on the command line override the preset. Rerunning with the same --run-dir resumes.
"""
from __future__ import annotations

import sys

from experiments.common import parse_config, pop_option, run_or_explain, split_algorithm

DEFAULT_ALGORITHM = "mbdpo"
PROG = "python -m experiments.online"


def main(argv: list[str] | None = None) -> int:
    from mbdpo_jax.train import presets
    from mbdpo_jax.train.config import OnlineConfig

    algo, args = split_algorithm(argv, DEFAULT_ALGORITHM, PROG, __doc__)
    preset, args = pop_option(args, "--preset", "auto", presets.PRESETS)
    agent_default, loop_default = presets.preset_defaults(preset, algo)
    agent, loop = parse_config(algo, "loop", loop_default, args, PROG, __doc__, agent_default)
    from mbdpo_jax.train.runner import run_online

    cfg = presets.finalize(preset, OnlineConfig(agent=agent, loop=loop))
    print(presets.describe(preset, cfg), flush=True)
    return run_or_explain(lambda: run_online(cfg))


if __name__ == "__main__":
    sys.exit(main())
