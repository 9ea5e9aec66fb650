"""Throughput of the pieces of online training, as one JSON object.

    python -m benchmarks.throughput tdmpc2 --env dmc/cartpole-swingup --num-envs 8 --model-size 5M

Reports the device, the config, compile seconds (first call) apart from steady-state timing, and
env steps per second of: physics alone (random actions), planning alone (one plan per env step),
updates alone (at one update per env step, i.e. updates per second), and end to end (a jitted
training chunk with planning and updates at the configured update-to-data ratio).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax

from mbdpo_jax.data import replay
from mbdpo_jax.envs import step_batch
from mbdpo_jax.train.config import LoopOptions, OnlineConfig
from mbdpo_jax.train.off_policy import OffPolicyTrainer
from mbdpo_jax.train.runner import build_trainer


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What to measure; the agent's settings come from its own config (`ALGO --help`)."""

    env: str = "dmc/cartpole-swingup"
    num_envs: int = 8
    updates_per_step: float = 1.0
    physics_steps: int = 200
    """Steps per timed physics call (each env)."""
    chunk_steps: int = 64
    """Env steps (all envs) per timed end-to-end chunk."""
    repeats: int = 3
    """Timed calls after the compiling one; the median is reported."""
    out: Optional[str] = None
    """Also write the JSON here."""


def timed(fn: Callable, *args, repeats: int) -> tuple[float, float]:
    """(compile-and-first-call seconds, median steady-state seconds)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, sorted(times)[len(times) // 2]


def device_info() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "num_devices": jax.device_count(),
            "host": platform.node(), "cpu_count": __import__("os").cpu_count(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d")}


def measure(agent_cfg: Any, b: BenchOptions) -> dict:
    """Physics, planning, update and end-to-end throughput of `agent_cfg` on `b.env`."""
    loop = LoopOptions(env=b.env, num_envs=b.num_envs, updates_per_step=b.updates_per_step, eval_every=b.chunk_steps,
                       seed_steps=0, buffer_size=max(10_000, b.chunk_steps * 4))
    online = OnlineConfig(agent=agent_cfg, loop=loop)
    trainer = build_trainer(online)
    env, agent, n = trainer.env, trainer.agent, b.num_envs
    key = jax.random.PRNGKey(0)
    carry = jax.jit(trainer.init)(key)
    results = {}

    @jax.jit
    def physics(state, k):
        def body(s, kk):
            a = jax.random.uniform(kk, (n, env.spec.action_size), minval=-1, maxval=1)
            return step_batch(env, s, a), None
        return jax.lax.scan(body, state, jax.random.split(k, b.physics_steps))[0]

    compile_s, steady = timed(physics, carry.env, key, repeats=b.repeats)
    results["physics"] = {"compile_s": compile_s, "env_steps_per_s": n * b.physics_steps / steady}

    plan = jax.jit(jax.vmap(lambda o, p, k: agent.act(carry.agent, o, p, k, False)[:2]))
    keys = jax.random.split(key, n)
    compile_s, steady = timed(plan, carry.env.obs, carry.act, keys, repeats=b.repeats)
    results["planning"] = {"compile_s": compile_s, "env_steps_per_s": n / steady, "ms_per_plan_call": 1e3 * steady}

    # Fill the replay with a chunk of random experience so updates sample real data.
    seeding = OffPolicyTrainer(agent, env, dataclasses.replace(trainer.cfg, seed_steps=10**9))
    filled = jax.jit(seeding.train_chunk)(carry)[0]
    batch = jax.jit(lambda s, k: replay.sample_sequences(trainer.buffer, s, k))(filled.buffer, key)
    update = jax.jit(agent.update)
    compile_s, steady = timed(update, filled.agent, batch, key, repeats=b.repeats)
    results["updates"] = {"compile_s": compile_s, "updates_per_s": 1 / steady, "ms_per_update": 1e3 * steady}

    chunk = jax.jit(trainer.train_chunk)
    compile_s, steady = timed(chunk, filled, repeats=b.repeats)
    results["end_to_end"] = {"compile_s": compile_s, "env_steps_per_s": b.chunk_steps / steady}
    config = {"algo": online.algo, "agent": dataclasses.asdict(agent_cfg), "bench": dataclasses.asdict(b)}
    return {"benchmark": "throughput", "device": device_info(), "config": config, "results": results}


def emit_report(report: dict, out: str | None) -> None:
    """Print the report as JSON and, if `out` is given, also write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    from experiments.common import parse_config, split_algorithm

    prog = "python -m benchmarks.throughput"
    algo, args = split_algorithm(argv, "tdmpc2", prog, __doc__)
    agent_cfg, bench = parse_config(algo, "bench", BenchOptions(), args, prog, __doc__)
    emit_report(measure(agent_cfg, bench), bench.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
