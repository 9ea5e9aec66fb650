"""Cost of MBDPO's amortised score network: planning with it alone vs the Monte-Carlo planner, and
updates with and without training it.

    python -m benchmarks.score --env dmc/cartpole-swingup --num-envs 4 --model-size tiny --batch-size 128 \
        --diffusion-steps 8 --num-samples 64 --num-elites 8 --num-pi-trajs 4 --out results.json

One JSON object: device, config, and for each variant the compile seconds (first call) apart from the
median steady-state milliseconds of one plan call (all envs, vmapped, real env observations) and of
one update (a batch of the configured size; the arrays are synthetic, the shapes and the program are
those of training). Variants: 'monte_carlo' (MBDPO without s_phi), 'score_network' (MBDPO training
s_phi, acting with the Monte-Carlo planner, so only its update is timed) and 'score_only' (acting
with s_phi alone; its update is that of 'score_network').

The agent settings are MBDPO's own flags and defaults (`python -m experiments.online mbdpo --help`);
each variant is that config with `use_score_network` and `score_only` set as it needs.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp

from benchmarks.throughput import device_info, emit_report, timed
from mbdpo_jax import envs
from mbdpo_jax.agents import make_agent
from mbdpo_jax.envs.wrappers import reset_batch
from mbdpo_jax.train.config import replace_flat

ALGO = "mbdpo"
VARIANTS = {
    # name: (flag settings of the variant, time the plan call, time the update)
    "monte_carlo": (dict(use_score_network=False, score_only=False), True, True),
    "score_network": (dict(use_score_network=True, score_only=False), False, True),
    "score_only": (dict(use_score_network=True, score_only=True), True, False),
}


@dataclasses.dataclass(frozen=True)
class ScoreBenchOptions:
    """What to measure; the agent's settings are MBDPO's flags."""

    env: str = "dmc/cartpole-swingup"
    num_envs: int = 8
    repeats: int = 5
    """Timed calls after the compiling one; the median is reported."""
    out: Optional[str] = None
    """Also write the JSON here."""


def synthetic_batch(key: jax.Array, horizon: int, batch: int, obs_size: int, action_size: int,
                    extras: dict) -> dict:
    """A training batch with the shapes the online loop samples (time-major sequences); `extras` are
    the agent's replay extras {name: per-step shape} (the planner's outputs, here the actions)."""
    k_obs, k_act = jax.random.split(key)
    obs = jax.random.normal(k_obs, (horizon + 1, batch, obs_size))
    action = jax.random.uniform(k_act, (horizon, batch, action_size), minval=-1, maxval=1)
    zeros = jnp.zeros((horizon, batch))
    out = {"obs": obs[:-1], "next_obs": obs[1:], "action": action, "reward": jnp.ones((horizon, batch)),
           "done": zeros, "end": zeros}
    for name, shape in extras.items():
        out[name] = action if name == "plan_action" else jnp.ones((horizon, batch) + shape)
    return out


def measure_variant(agent_cfg: Any, b: ScoreBenchOptions, env, obs: jax.Array, plan: bool, update: bool) -> dict:
    """Timings of one agent variant: plan call and/or update, each as compile_s and ms."""
    agent = make_agent(agent_cfg, env.spec)
    key = jax.random.PRNGKey(0)
    state = agent.init(key)
    result = {}
    if plan:
        carries = jnp.zeros((b.num_envs,) + agent.initial_act_carry().shape)
        act = jax.jit(jax.vmap(lambda o, p, k: agent.act(state, o, p, k, False)[:2]))
        compile_s, steady = timed(act, obs, carries, jax.random.split(key, b.num_envs), repeats=b.repeats)
        result["plan"] = {"compile_s": compile_s, "ms_per_plan_call": 1e3 * steady}
    if update:
        batch = synthetic_batch(key, agent.horizon, agent.batch_size, env.spec.obs_size, env.spec.action_size,
                                agent.replay_extras)
        compile_s, steady = timed(jax.jit(agent.update), state, batch, key, repeats=b.repeats)
        result["update"] = {"compile_s": compile_s, "ms_per_update": 1e3 * steady}
    return result


def measure(agent_cfg: Any, b: ScoreBenchOptions) -> dict:
    env = envs.make(b.env)
    obs = reset_batch(env, jax.random.PRNGKey(1), b.num_envs).obs
    variants = {}
    for name, (settings, plan, update) in VARIANTS.items():
        cfg = replace_flat(agent_cfg, **settings)
        cfg.validate()
        variants[name] = measure_variant(cfg, b, env, obs, plan, update)
    mc_plan, so_plan = variants["monte_carlo"]["plan"], variants["score_only"]["plan"]
    mc_up, sn_up = variants["monte_carlo"]["update"], variants["score_network"]["update"]
    summary = {"plan_speedup_score_only": mc_plan["ms_per_plan_call"] / so_plan["ms_per_plan_call"],
               "update_slowdown_score_training": sn_up["ms_per_update"] / mc_up["ms_per_update"]}
    config = {"algo": ALGO, "agent": dataclasses.asdict(agent_cfg), "bench": dataclasses.asdict(b),
              "variants": {name: settings for name, (settings, _, _) in VARIANTS.items()}}
    return {"benchmark": "score", "device": device_info(), "config": config, "variants": variants,
            "summary": summary}


def main(argv: list[str] | None = None) -> int:
    from experiments.common import parse_config

    prog = "python -m benchmarks.score"
    args = list(sys.argv[1:] if argv is None else argv)
    agent_cfg, bench = parse_config(ALGO, "bench", ScoreBenchOptions(), args, prog, __doc__)
    emit_report(measure(agent_cfg, bench), bench.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
