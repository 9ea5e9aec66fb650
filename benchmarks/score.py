"""Cost of MBDPO's amortised score network: planning with it alone vs the Monte-Carlo planner, and
updates with and without training it.

    python -m benchmarks.score --env dmc/cartpole-swingup --num-envs 4 --model-size tiny --batch-size 128 \
        --diffusion-steps 8 --num-samples 64 --num-elites 8 --num-pi-trajs 4 --out results.json

One JSON object: device, config, and for each variant the compile seconds (first call) apart from the
median steady-state milliseconds of one plan call (all envs, vmapped, real env observations) and of
one update (a batch of the configured size; the arrays are synthetic, the shapes and the program are
those of training). Variants: 'monte_carlo' (default MBDPO), 'score_network' (MBDPO training s_phi,
acting with the Monte-Carlo planner, so only its update is timed) and 'score_only' (acting with s_phi
alone; its update is that of 'score_network').
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import tyro

from benchmarks.throughput import device_info, emit_report, timed
from mbdpo_jax import envs
from mbdpo_jax.agents import make_agent
from mbdpo_jax.envs.wrappers import reset_batch
from mbdpo_jax.train.config import AgentOptions


@dataclasses.dataclass(frozen=True)
class ScoreBenchConfig:
    env: str = "dmc/cartpole-swingup"
    num_envs: int = 8
    model_size: str = "5M"
    batch_size: int = 256
    diffusion_steps: int = 20
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    score_samples: int = 64
    """Monte-Carlo candidates per score target."""
    repeats: int = 5
    """Timed calls after the compiling one; the median is reported."""
    out: Optional[str] = None
    """Also write the JSON here."""


def synthetic_batch(key: jax.Array, horizon: int, batch: int, obs_size: int, action_size: int) -> dict:
    """A training batch with the shapes the online loop samples (time-major sequences)."""
    k_obs, k_act = jax.random.split(key)
    obs = jax.random.normal(k_obs, (horizon + 1, batch, obs_size))
    action = jax.random.uniform(k_act, (horizon, batch, action_size), minval=-1, maxval=1)
    zeros = jnp.zeros((horizon, batch))
    return {"obs": obs[:-1], "next_obs": obs[1:], "action": action, "plan_action": action, "planned": zeros + 1,
            "reward": jnp.ones((horizon, batch)), "done": zeros, "end": zeros}


def measure_variant(b: ScoreBenchConfig, env, obs: jax.Array, plan: bool, update: bool, **score_options) -> dict:
    """Timings of one agent variant: plan call and/or update, each as compile_s and ms."""
    opts = AgentOptions(algo="mbdpo", model_size=b.model_size, batch_size=b.batch_size,
                        diffusion_steps=b.diffusion_steps, num_samples=b.num_samples, num_elites=b.num_elites,
                        num_pi_trajs=b.num_pi_trajs, score_samples=b.score_samples, **score_options)
    opts.validate()
    agent = make_agent(opts, env.spec)
    key = jax.random.PRNGKey(0)
    state = agent.init(key)
    result = {}
    if plan:
        plans = jnp.zeros((b.num_envs,) + agent.initial_plan_state().shape)
        act = jax.jit(jax.vmap(lambda o, p, k: agent.act(state, o, p, k, False)[:2]))
        compile_s, steady = timed(act, obs, plans, jax.random.split(key, b.num_envs), repeats=b.repeats)
        result["plan"] = {"compile_s": compile_s, "ms_per_plan_call": 1e3 * steady}
    if update:
        batch = synthetic_batch(key, agent.cfg.horizon, b.batch_size, env.spec.obs_size, env.spec.action_size)
        compile_s, steady = timed(jax.jit(agent.update), state, batch, key, repeats=b.repeats)
        result["update"] = {"compile_s": compile_s, "ms_per_update": 1e3 * steady}
    return result


def measure(b: ScoreBenchConfig) -> dict:
    env = envs.make(b.env)
    obs = reset_batch(env, jax.random.PRNGKey(1), b.num_envs).obs
    variants = {
        "monte_carlo": measure_variant(b, env, obs, plan=True, update=True),
        "score_network": measure_variant(b, env, obs, plan=False, update=True, use_score_network=True),
        "score_only": measure_variant(b, env, obs, plan=True, update=False, use_score_network=True, score_only=True),
    }
    mc_plan, so_plan = variants["monte_carlo"]["plan"], variants["score_only"]["plan"]
    mc_up, sn_up = variants["monte_carlo"]["update"], variants["score_network"]["update"]
    summary = {"plan_speedup_score_only": mc_plan["ms_per_plan_call"] / so_plan["ms_per_plan_call"],
               "update_slowdown_score_training": sn_up["ms_per_update"] / mc_up["ms_per_update"]}
    return {"benchmark": "score", "device": device_info(), "config": dataclasses.asdict(b), "variants": variants,
            "summary": summary}


def main(argv: list[str] | None = None) -> int:
    b = tyro.cli(ScoreBenchConfig, args=argv, description=__doc__)
    emit_report(measure(b), b.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
