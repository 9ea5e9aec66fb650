"""Per-env cost of batched planning, as one JSON object: with N envs the planner is one program (the plan
vmapped over the envs), so its cost per env should fall, or at worst stay flat, as N grows.

    python -m benchmarks.batched_planning mbdpo --env dmc/cartpole-swingup --model-size tiny --envs 1 4 16 64

For each N: compile seconds, the steady-state median of one batched plan call, ms per env, the matmul
FLOPs of the call (`benchmarks.flops`) and their share of the float32 matmul peak measured in the same run
at the largest batch's shape, and `per_env_cost_vs_fewest_envs` (the ms per env over that of the smallest
N, 1 by default; above 1 means something scales worse than linearly).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional

import jax

from benchmarks.flops import matmul_flops, matmul_peak
from benchmarks.throughput import batched_plan, device_info, emit_report, timed
from mbdpo_jax.models.world_model import PRESETS
from mbdpo_jax.train.config import LoopOptions, OnlineConfig, get_flat
from mbdpo_jax.train.runner import build_trainer


@dataclasses.dataclass(frozen=True)
class BatchedPlanningBench:
    """Which batch sizes to time; the agent's settings come from its own config (`ALGO --help`)."""

    env: str = "dmc/cartpole-swingup"
    envs: tuple[int, ...] = (1, 4, 16, 64)
    """Numbers of envs planned for in one call."""
    repeats: int = 5
    out: Optional[str] = None


def plan_call(agent_cfg: Any, env: str, num_envs: int) -> tuple[Any, tuple]:
    """The batched plan over `num_envs` fresh envs of a freshly initialised agent, and its arguments."""
    loop = LoopOptions(env=env, num_envs=num_envs, seed_steps=0, eval_every=num_envs, buffer_size=1000)
    trainer = build_trainer(OnlineConfig(agent=agent_cfg, loop=loop))
    key = jax.random.PRNGKey(0)
    return batched_plan(trainer, jax.jit(trainer.init)(key), key)


def measure(agent_cfg: Any, b: BatchedPlanningBench) -> dict:
    """Per-env cost of one batched plan call for each number of envs in `b.envs`."""
    if not b.envs or min(b.envs) < 1:
        raise ValueError(f"invalid --envs {list(b.envs)}; allowed: one or more env counts >= 1")
    mlp = PRESETS[get_flat(agent_cfg, "model_size")][1]
    rows = max(b.envs) * get_flat(agent_cfg, "num_samples")
    peak = matmul_peak(rows, mlp, mlp)
    cases = []
    for n in sorted(b.envs):
        plan, args = plan_call(agent_cfg, b.env, n)
        compile_s, steady = timed(jax.jit(plan), *args, repeats=b.repeats)
        flops = matmul_flops(plan, *args)
        cases.append({"num_envs": n, "compile_s": compile_s, "ms_per_call": 1e3 * steady,
                      "ms_per_env": 1e3 * steady / n, "matmul_gflop_per_call": flops / 1e9,
                      "share_of_peak": flops / steady / peak})
    for case in cases:
        case["per_env_cost_vs_fewest_envs"] = case["ms_per_env"] / cases[0]["ms_per_env"]
    device = dict(device_info(), matmul_peak_gflops=peak / 1e9, matmul_peak_shape=f"({rows} x {mlp}) @ ({mlp} x {mlp})")
    config = {"agent": dataclasses.asdict(agent_cfg), "bench": dataclasses.asdict(b)}
    return {"benchmark": "batched_planning", "device": device, "config": config, "results": cases}


def main(argv: list[str] | None = None) -> int:
    from experiments.common import parse_config, split_algorithm

    prog = "python -m benchmarks.batched_planning"
    algo, args = split_algorithm(argv, "tdmpc2", prog, __doc__)
    if algo not in ("tdmpc2", "mbdpo"):
        raise SystemExit(f"{prog}: algorithm {algo!r} does not plan; allowed: tdmpc2, mbdpo")
    agent_cfg, bench = parse_config(algo, "bench", BatchedPlanningBench(), args, prog, __doc__)
    try:
        report = measure(agent_cfg, bench)
    except ValueError as error:
        raise SystemExit(f"{prog}: {error}")
    emit_report(report, bench.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
