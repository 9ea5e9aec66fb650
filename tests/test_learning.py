"""Small learning checks: each algorithm must actually learn the 200-step Pendulum-v1 swing-up.

A random or untrained policy scores about -1200 and an optimal one about -150; the thresholds (-400 for
the planners, -300 for PWM) sit well above the first and were set from the measured curves quoted in
each test. Settings are shrunk to fit a 2-core CI machine; the budget stays within 15k env steps, as
the issue asks.
"""
import csv

import pytest

from conftest import tiny_online_config
from mbdpo_jax.train.runner import run_online

PENDULUM = dict(env="toy/pendulum", num_envs=2, updates_per_step=0.5, batch_size=128, num_samples=64,
                num_elites=8, num_pi_trajs=4, seed_steps=500, eval_every=1000, eval_episodes=8, buffer_size=15_000)
PLANNER = {"tdmpc2": dict(iterations=4), "mbdpo": dict(diffusion_steps=8)}


def _eval_returns(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["eval_return"]) for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["tdmpc2", "mbdpo"])
def test_agent_swings_up_the_pendulum(algo, tmp_path):
    """Within 4k env steps (2 envs, half an update per env step; of the 15k allowed) the agent reaches an
    eval return of at least -400. Measured (2026-12-03, eval every 1k from step 0): TD-MPC2 -1289, -1179,
    -629, -292, -477; MBDPO -1337, -1250, -646, -322, -350 (seed 1: best -144). One env at one update per
    env step reached -250 by 3k, with 2.6x the updates."""
    cfg = tiny_online_config(algo=algo, steps=4000, run_dir=str(tmp_path / algo), **PENDULUM, **PLANNER[algo])
    returns = _eval_returns(run_online(cfg))
    assert returns[0] < -600  # the untrained agent fails
    assert max(returns) >= -400, returns


@pytest.mark.slow
def test_pwm_online_swings_up_the_pendulum(tmp_path):
    """PWM online (tiny world model, the laptop preset's actor-critic with 4 critic iterations instead of
    8, a quarter update per env step) reaches an eval return of at least -300 within 3.6k env steps (of
    the 15k allowed). Measured with these settings (2026-12-03): -1110 / -1095 / -973 / -120 at 0 / 1.2k /
    2.4k / 3.6k env steps (8 critic iterations: -118 at 3.6k); half the batch at half an
    update per env step stayed at -688 at 2.4k, so the budget is not shrunk further."""
    planner = ("num_samples", "num_elites", "num_pi_trajs")
    settings = dict({k: v for k, v in PENDULUM.items() if k not in planner}, num_envs=4, updates_per_step=0.25,
                    batch_size=64, actor_hidden=(128, 64), critic_hidden=(128, 128), eval_every=1200, seed_steps=1000,
                    critic_iterations=4)
    cfg = tiny_online_config(algo="pwm", steps=3600, run_dir=str(tmp_path / "pwm"), **settings)
    returns = _eval_returns(run_online(cfg))
    assert returns[0] < -600
    assert max(returns) >= -300, returns
