"""Extract one PWM policy per task from a frozen pretrained world model (PWM's multi-task protocol):

    python -m experiments.pwm --checkpoint R [--tasks dmc/a dmc/b] [--data DIR ...] [--updates 10000]

R is a run directory of `experiments.pretrain` (tdmpc2, mbdpo or pwm). Each task's policy learns from
start states of that task's own data, through the world model, which is not fine-tuned; the tasks run
together as one vmapped program. Every --eval-every updates each policy is evaluated in its real env.
<run-dir>/results.json holds each task's eval-return curve, its final return and the extraction wall
time per task (the vmapped program's time divided by the tasks; compile time apart); metrics.csv,
checkpoints/ and learning_curve.png as in the other experiments. --preset picks the defaults: `paper`
(PWM's: 10k updates of 512 start states, actor [400, 200, 100], critics [400, 200]), `laptop` (a
setting for a 2-core CPU) or `auto` (the default: paper on a GPU/TPU, laptop on a CPU); flags given on
the command line override it. Rerunning with the same --run-dir resumes.
"""
from __future__ import annotations

import sys

PROG = "python -m experiments.pwm"


def describe(preset: str, cfg) -> str:
    """The first line a run prints: the preset chosen and the settings it sets, as this run has them."""
    import jax

    from mbdpo_jax.train import extract, presets

    name = presets.resolve(preset)
    chosen = f"preset {name}" + (f" (auto: {jax.default_backend()})" if preset == "auto" else "")
    values = {**{k: getattr(cfg, k) for k in extract.LAPTOP},
              **{k: getattr(cfg.actor_critic, k) for k in extract.LAPTOP_ACTOR_CRITIC}}
    text = ", ".join(f"{k}={v}" for k, v in values.items())
    other = "--preset paper for the published ones" if name == "laptop" else "--preset laptop for a small CPU setting"
    return f"pwm extraction: {chosen} ({text}); {other}"


def main(argv: list[str] | None = None) -> int:
    import tyro

    from experiments.common import pop_option, run_or_explain
    from mbdpo_jax.train import presets
    from mbdpo_jax.train.extract import ExtractConfig, extract, preset_config

    args = list(sys.argv[1:] if argv is None else argv)
    preset, args = pop_option(args, "--preset", "auto", presets.PRESETS)
    cfg = tyro.cli(ExtractConfig, default=preset_config(preset), args=args, prog=PROG, description=__doc__,
                   config=(tyro.conf.OmitArgPrefixes,))
    print(describe(preset, cfg), flush=True)
    return run_or_explain(lambda: extract(cfg))


if __name__ == "__main__":
    sys.exit(main())
