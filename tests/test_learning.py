"""Small learning checks: each algorithm must actually learn the 200-step Pendulum-v1 swing-up.

The threshold -300 is far above a random or untrained policy (about -1200) and below an optimal
one (about -150). Settings are shrunk to fit a 2-core CI machine; the budget stays within 15k
env steps, as the issue asks.
"""
import csv

import pytest

from conftest import tiny_online_config
from mbdpo_jax.train.runner import run_online

PENDULUM = dict(env="toy/pendulum", num_envs=1, updates_per_step=1.0, batch_size=128, num_samples=64,
                num_elites=8, num_pi_trajs=4, seed_steps=500, eval_every=1000, eval_episodes=8, buffer_size=15_000)
PLANNER = {"tdmpc2": dict(iterations=4), "mbdpo": dict(diffusion_steps=8)}


def _eval_returns(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["eval_return"]) for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["tdmpc2", "mbdpo"])
def test_agent_swings_up_the_pendulum(algo, tmp_path):
    """Within 5k env steps (of the 15k allowed) the agent reaches an eval return of at least -300."""
    cfg = tiny_online_config(algo=algo, steps=5000, run_dir=str(tmp_path / algo), **PENDULUM, **PLANNER[algo])
    returns = _eval_returns(run_online(cfg))
    assert returns[0] < -600  # the untrained agent fails
    assert max(returns) >= -300, returns


@pytest.mark.slow
def test_pwm_online_swings_up_the_pendulum(tmp_path):
    """PWM online (tiny world model, the laptop preset's actor-critic, a quarter update per env step)
    reaches an eval return of at least -300 within 3.6k env steps (of the 15k allowed). Measured with
    these settings: -1110 / -945 / -1062 / -118 at 0 / 1.2k / 2.4k / 3.6k env steps; half the batch at
    half an update per env step stayed at -688 at 2.4k, so the budget is not shrunk further."""
    planner = ("num_samples", "num_elites", "num_pi_trajs")
    settings = dict({k: v for k, v in PENDULUM.items() if k not in planner}, num_envs=4, updates_per_step=0.25,
                    batch_size=64, actor_hidden=(128, 64), critic_hidden=(128, 128), eval_every=1200, seed_steps=1000)
    cfg = tiny_online_config(algo="pwm", steps=3600, run_dir=str(tmp_path / "pwm"), **settings)
    returns = _eval_returns(run_online(cfg))
    assert returns[0] < -600
    assert max(returns) >= -300, returns
