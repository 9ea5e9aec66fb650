"""Throughput of the pieces of online training, as one JSON object.

    python -m benchmarks.throughput tdmpc2 --env dmc/cartpole-swingup --num-envs 8 --model-size 5M

Reports the device, the config, compile seconds (first call) apart from steady-state timing, and
env steps per second of: physics alone (random actions), planning alone (one plan per env step),
updates alone (at one update per env step, i.e. updates per second), and end to end (a jitted
training chunk with planning and updates at the configured update-to-data ratio).

For planning and updates it also reports the matmul FLOPs of one call (`benchmarks.flops`: counted from
the program, loops times their trip counts) and `share_of_peak`, their rate over the float32 matmul peak
measured in the same run at the preset's own shapes (`device.matmul_peak_gflops`: the best of
(envs x candidates, mlp) @ (mlp, mlp) and (batch x horizon, mlp) @ (mlp, mlp)).
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

from benchmarks.flops import matmul_flops, matmul_peak
from mbdpo_jax.data import replay
from mbdpo_jax.models.world_model import PRESETS
from mbdpo_jax.envs import step_batch
from mbdpo_jax.train.config import LoopOptions, OnlineConfig, flat_fields, get_flat
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


def batched_plan(trainer: Any, carry: Any, key: jax.Array) -> tuple[Callable, tuple]:
    """The training-time plan of every env of `carry` as one function (the agent's act vmapped over the
    envs; not jitted) and its arguments."""
    act = trainer.agent.act
    plan = jax.vmap(lambda o, p, k: act(carry.agent, o, p, k, False)[:2])
    return plan, (carry.env.obs, carry.act, jax.random.split(key, carry.env.obs.shape[0]))


def preset_matmul_peaks(agent_cfg: Any, num_envs: int) -> dict[str, float]:
    """GFLOP/s of float32 matmuls at the shapes the preset's planner and update multiply most (an agent
    without planner candidates, e.g. PWM's actor, acts on one row per env)."""
    names = flat_fields(agent_cfg)
    setting = lambda name: get_flat(agent_cfg, name) if name in names else 1
    mlp = PRESETS[setting("model_size")][1]
    rows = {"planning": num_envs * setting("num_samples"), "updates": setting("batch_size") * setting("horizon")}
    return {f"{name} ({m} x {mlp}) @ ({mlp} x {mlp})": matmul_peak(m, mlp, mlp) / 1e9 for name, m in rows.items()}


def with_share_of_peak(result: dict, flops: int, seconds: float, peak_gflops: float) -> dict:
    """`result` plus the matmul FLOPs of one call, their rate and its share of the run's matmul peak."""
    gflops = flops / seconds / 1e9
    return dict(result, matmul_gflop_per_call=flops / 1e9, matmul_gflops=gflops, share_of_peak=gflops / peak_gflops)


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
    peaks = preset_matmul_peaks(agent_cfg, n)
    peak = max(peaks.values())

    @jax.jit
    def physics(state, k):
        def body(s, kk):
            a = jax.random.uniform(kk, (n, env.spec.action_size), minval=-1, maxval=1)
            return step_batch(env, s, a), None
        return jax.lax.scan(body, state, jax.random.split(k, b.physics_steps))[0]

    compile_s, steady = timed(physics, carry.env, key, repeats=b.repeats)
    results["physics"] = {"compile_s": compile_s, "env_steps_per_s": n * b.physics_steps / steady}

    plan, plan_args = batched_plan(trainer, carry, key)
    compile_s, steady = timed(jax.jit(plan), *plan_args, repeats=b.repeats)
    results["planning"] = with_share_of_peak(
        {"compile_s": compile_s, "env_steps_per_s": n / steady, "ms_per_plan_call": 1e3 * steady},
        matmul_flops(plan, *plan_args), steady, peak)

    # Fill the replay with a chunk of random experience so updates sample real data.
    seeding = OffPolicyTrainer(agent, env, dataclasses.replace(trainer.cfg, seed_steps=10**9))
    filled = jax.jit(seeding.train_chunk)(carry)[0]
    batch = jax.jit(lambda s, k: replay.sample_sequences(trainer.buffer, s, k))(filled.buffer, key)
    update = jax.jit(agent.update)
    compile_s, steady = timed(update, filled.agent, batch, key, repeats=b.repeats)
    results["updates"] = with_share_of_peak(
        {"compile_s": compile_s, "updates_per_s": 1 / steady, "ms_per_update": 1e3 * steady},
        matmul_flops(agent.update, filled.agent, batch, key), steady, peak)

    chunk = jax.jit(trainer.train_chunk)
    compile_s, steady = timed(chunk, filled, repeats=b.repeats)
    results["end_to_end"] = {"compile_s": compile_s, "env_steps_per_s": b.chunk_steps / steady}
    config = {"algo": online.algo, "agent": dataclasses.asdict(agent_cfg), "bench": dataclasses.asdict(b)}
    device = dict(device_info(), matmul_peak_gflops=peak, matmul_peak_gflops_by_shape=peaks)
    return {"benchmark": "throughput", "device": device, "config": config, "results": results}


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
