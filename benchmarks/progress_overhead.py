"""Cost of the in-chunk progress reports (a host callback every few iterations) on end-to-end speed.

    python -m benchmarks.progress_overhead --env dmc/cartpole-swingup --out results.json

Builds the laptop-preset MBDPO off-policy loop twice, with progress reports off and at the rate a
laptop-preset run uses (every `iterations per eval chunk // runner.PROGRESS_REPORTS_PER_CHUNK`
iterations; the timed chunk may be shorter than an eval chunk, the report rate per iteration is the
same), compiles both, then times their chunks alternately (the same carry, `repeats` times each) and
reports the median seconds and the relative overhead. One JSON object with device, config, compile time apart from steady state.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

import jax
import tyro

from benchmarks.throughput import device_info, emit_report
from mbdpo_jax.train import presets, progress
from mbdpo_jax.train.config import OnlineConfig, replace_flat
from mbdpo_jax.train.runner import PROGRESS_REPORTS_PER_CHUNK, build_trainer


@dataclasses.dataclass(frozen=True)
class Options:
    env: str = "dmc/cartpole-swingup"
    algo: str = "mbdpo"
    chunk_steps: int = 1000
    """Env steps per timed chunk (all envs)."""
    repeats: int = 5
    out: Optional[str] = None


def measure(o: Options) -> dict:
    agent, loop = presets.preset_defaults("laptop", o.algo)
    cfg = replace_flat(OnlineConfig(agent=agent, loop=loop), env=o.env, eval_every=o.chunk_steps, seed_steps=0)
    results, chunks = {}, {}
    every = max(1, (loop.eval_every // loop.num_envs) // PROGRESS_REPORTS_PER_CHUNK)
    for name, progress_every in (("off", 0), ("on", every)):
        trainer = build_trainer(cfg)
        trainer.cfg = dataclasses.replace(trainer.cfg, progress_every=progress_every)
        chunk = jax.jit(trainer.train_chunk)
        carry = jax.jit(trainer.init)(jax.random.PRNGKey(0))
        t0 = time.perf_counter()
        jax.block_until_ready(chunk(carry))
        chunks[name] = (chunk, carry)
        results[name] = {"compile_s": time.perf_counter() - t0, "progress_every": progress_every, "times": []}
    reports = []
    with progress.listening(reports.append):
        for _ in range(o.repeats):
            for name, (chunk, carry) in chunks.items():
                t0 = time.perf_counter()
                jax.block_until_ready(chunk(carry))
                results[name]["times"].append(time.perf_counter() - t0)
    for r in results.values():
        r["median_s"] = sorted(r["times"])[len(r["times"]) // 2]
    overhead = results["on"]["median_s"] / results["off"]["median_s"] - 1
    return {"benchmark": "progress_overhead", "device": device_info(), "config": dataclasses.asdict(o),
            "results": {**results, "relative_overhead": overhead, "reports_received": len(reports)}}


def main(argv: list[str] | None = None) -> int:
    o = tyro.cli(Options, args=argv, description=__doc__)
    emit_report(measure(o), o.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
