"""First-order learners side by side on one env, as one JSON object: PWM's actor-critic update through
the world model next to SHAC's window update through the physics.

    python -m benchmarks.first_order --env dmc/cartpole-swingup --num-envs 16 --model-size tiny

Reports the device, the config, the float32 matmul peak measured in this run, and for each timed
program its compile seconds (first call) apart from the steady-state median, the matmul FLOPs of one
call (`benchmarks.flops`, loops times their trip counts; XLA's `cost_analysis` counts a loop body once)
and the share of the peak that reaches:
  * `pwm_policy_update`: one actor step through H-step imagination plus the critic regression, on a
    frozen world model (the policy-extraction step), for a batch of start states;
  * `pwm_update`: the same after one world-model step on a replayed batch (PWM online);
  * `shac_window`: one SHAC update (a window of num_envs x window env steps through MJX, backward,
    critic regression); also env steps/s.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from benchmarks import flops
from benchmarks.throughput import device_info, emit_report
from mbdpo_jax import envs
from mbdpo_jax.agents.pwm import PWM, PWMConfig
from mbdpo_jax.agents.shac import SHAC, SHACConfig


@dataclasses.dataclass(frozen=True)
class FirstOrderBench:
    env: str = "dmc/cartpole-swingup"
    num_envs: int = 16
    """SHAC's envs per window."""
    model_size: str = "tiny"
    """PWM's world-model preset."""
    batch_size: int = 64
    """PWM's start states per update (and replayed sequences per world-model step)."""
    horizon: int = 16
    window: int = 32
    repeats: int = 3
    matmul_size: int = 1024
    out: Optional[str] = None


def timed(fn: Callable, args: tuple, repeats: int) -> dict:
    """Compile seconds, steady-state median seconds and the matmul FLOPs of one call of jit(fn)(*args) (None
    for programs with while loops, e.g. MJX's solver, whose trip counts are not static)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    try:
        count = float(flops.matmul_flops(fn, *args))
    except ValueError:
        count = None
    return {"compile_s": compile_s, "seconds": sorted(times)[len(times) // 2], "matmul_flops": count}


def matmul_peak(n: int, repeats: int) -> float:
    """FLOP/s of float32 n x n matmuls on the default device (the attainable peak of this run)."""
    return flops.matmul_peak(n, n, n, max(repeats, 5))


def with_share(result: dict, peak: float) -> dict:
    """`result` plus its matmul FLOP rate and that rate's share of `peak` (FLOP/s)."""
    if result["matmul_flops"]:
        result["matmul_flops_per_s"] = result["matmul_flops"] / result["seconds"]
        result["share_of_matmul_peak"] = result["matmul_flops_per_s"] / peak
    return result


def measure(b: FirstOrderBench) -> dict:
    env = envs.make(b.env)
    key = jax.random.PRNGKey(0)
    peak = matmul_peak(b.matmul_size, b.repeats)
    cfg = PWMConfig()
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, model_size=b.model_size,
                                                                batch_size=b.batch_size, horizon=b.horizon))
    pwm = PWM(cfg, env.spec)
    state = pwm.init(key)
    H, B, O, A = b.horizon, b.batch_size, env.spec.obs_size, env.spec.action_size
    ks = jax.random.split(key, 3)
    batch = dict(obs=jax.random.normal(ks[0], (H, B, O)), next_obs=jax.random.normal(ks[1], (H, B, O)),
                 action=jnp.tanh(jax.random.normal(ks[2], (H, B, A))), reward=jnp.zeros((H, B)),
                 done=jnp.zeros((H, B)), end=jnp.zeros((H, B)))
    results: dict[str, Any] = {"matmul_peak_flops_per_s": peak}
    results["pwm_policy_update"] = with_share(timed(
        lambda s, o, k: pwm.policy_update(s, s.learner.params, o, k), (state, batch["obs"][0], key), b.repeats), peak)
    results["pwm_update"] = with_share(timed(pwm.update, (state, batch, key), b.repeats), peak)
    shac_cfg = SHACConfig(window=b.window)
    if env.spec.differentiable:
        shac = SHAC(shac_cfg, env.spec)
        shac_state, env_state = shac.init(key), envs.reset_batch(env, key, b.num_envs)
        window = with_share(timed(lambda s, e, k: shac.update(s, env, e, k), (shac_state, env_state, key), b.repeats),
                            peak)
        window["env_steps_per_s"] = b.num_envs * b.window / window["seconds"]
        results["shac_window"] = window
    else:
        results["shac_window"] = f"{b.env} is not differentiable"
    config = {"bench": dataclasses.asdict(b), "pwm": dataclasses.asdict(cfg), "shac": dataclasses.asdict(shac_cfg)}
    return {"benchmark": "first_order", "device": device_info(), "config": config, "results": results}


def main(argv: list[str] | None = None) -> int:
    import tyro

    bench = tyro.cli(FirstOrderBench, args=argv, prog="python -m benchmarks.first_order", description=__doc__)
    emit_report(measure(bench), bench.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
