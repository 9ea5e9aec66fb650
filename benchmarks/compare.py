"""MBDPO next to TD-MPC2 (same env, model size and envs), and offline pretraining speed by model size.

    python -m benchmarks.compare --env dmc/cartpole-swingup --num-envs 8 --model-size 1M \
        --pretrain-sizes tiny 1M 5M --out benchmarks/results/compare.json

One JSON object: device, config, and for each algorithm the planner calls per second (one call
plans for all envs) and env steps per second of planning alone and end to end (compile time
reported apart); then gradient updates per second of multi-task offline pretraining (2 tasks,
task embeddings) for each model size.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import tyro

from benchmarks.throughput import BenchConfig, device_info, emit_report, measure, timed
from mbdpo_jax.train.config import AgentOptions
from mbdpo_jax.train.offline import TaskSet, build_agent


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    env: str = "dmc/cartpole-swingup"
    num_envs: int = 8
    model_size: str = "5M"
    batch_size: int = 256
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    iterations: int = 6
    diffusion_steps: int = 20
    chunk_steps: int = 64
    pretrain_sizes: tuple[str, ...] = ("1M", "5M")
    """Model sizes whose offline update speed is measured."""
    online: bool = True
    """Measure the online algorithms (--no-online: offline pretraining speed only)."""
    repeats: int = 3
    out: Optional[str] = None


def pretrain_updates_per_s(size: str, batch_size: int, repeats: int) -> dict:
    """Updates/s of a 2-task MBDPO model (obs 24 and 17 -> padded 24, actions 6 and 1 -> 6)."""
    tasks = TaskSet(("a", "b"), (24, 17), (6, 1), (500, 500), (2, 2))
    agent = build_agent(AgentOptions(algo="mbdpo", model_size=size, batch_size=batch_size), tasks)
    state = agent.init(jax.random.PRNGKey(0))
    h, b = agent.cfg.horizon, batch_size
    key = jax.random.PRNGKey(1)
    batch = {"obs": jax.random.normal(key, (h, b, 24)), "next_obs": jax.random.normal(key, (h, b, 24)),
             "action": jnp.zeros((h, b, 6)), "plan_action": jnp.zeros((h, b, 6)), "planned": jnp.zeros((h, b)),
             "reward": jnp.ones((h, b)), "done": jnp.zeros((h, b)), "end": jnp.zeros((h, b)),
             "task": jnp.arange(b) % 2}
    compile_s, steady = timed(jax.jit(agent.update), state, batch, key, repeats=repeats)
    return {"model_size": size, "compile_s": compile_s, "updates_per_s": 1 / steady, "ms_per_update": 1e3 * steady}


def main(argv: list[str] | None = None) -> int:
    c = tyro.cli(CompareConfig, args=argv, description=__doc__)
    shared = {f.name for f in dataclasses.fields(BenchConfig)} & {f.name for f in dataclasses.fields(CompareConfig)}
    algos = {}
    for algo in ("tdmpc2", "mbdpo") if c.online else ():
        result = measure(BenchConfig(algo=algo, **{k: getattr(c, k) for k in shared if k != "out"}))["results"]
        algos[algo] = {"planner_calls_per_s": 1e3 / result["planning"]["ms_per_plan_call"],
                       "planning": result["planning"], "end_to_end": result["end_to_end"],
                       "updates": result["updates"]}
    report = {"benchmark": "compare", "device": device_info(), "config": dataclasses.asdict(c), "online": algos,
              "pretrain": [pretrain_updates_per_s(s, c.batch_size, c.repeats) for s in c.pretrain_sizes]}
    emit_report(report, c.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
