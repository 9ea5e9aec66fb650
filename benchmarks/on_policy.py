"""On-policy learners side by side on one MJX env, next to brax's PPO, as one JSON object.

    python -m benchmarks.on_policy --env dmc/cartpole-balance --num-envs 32 --num-steps 64

Every learner runs the same work per iteration: num_envs x num_steps env steps (action repeat 1), then
epochs x minibatches gradient steps on that rollout; a timed chunk is `iterations` such iterations, as
one compiled program. For each of our learners (`--algos`, built by `train.runner.build_trainer`, so
exactly what `experiments.online <algo>` runs) the report gives the chunk's compile seconds apart from
its steady-state median and env steps/s, and for one minibatch gradient step its matmul FLOPs
(`benchmarks.flops`) and their share of the float32 matmul peak measured in this run. Learners with a
diffusion chain are timed once per `--diffusion-steps` K, and their cost per denoising step is given
relative to their Gaussian baseline's whole step (`BASELINE`).

`brax_ppo` is brax's own PPO trainer (`brax.training.agents.ppo.train`) on the same MuJoCo Playground
task built the same way (`impl="jax"`), with the same envs, unroll length, epochs, minibatch size and
network widths: `batch_size x num_minibatches = num_envs`, so one brax training step is one of our
iterations. Its figure is brax's own `training/sps` of the epochs after the first (the first
includes compilation; its excess over the steady epoch is reported as compile seconds). brax 0.14.2
calls `jax.device_put_replicated`, which jax 0.10 removed; a one-device equivalent is installed for it
(a leading axis of length 1 per local device), nothing else of brax is changed.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp

from benchmarks.first_order import matmul_peak, timed, with_share
from benchmarks.throughput import device_info, emit_report
from mbdpo_jax.agents import config_class
from mbdpo_jax.train.config import LoopOptions, OnlineConfig, flat_fields, replace_flat
from mbdpo_jax.train.runner import build_trainer


@dataclasses.dataclass(frozen=True)
class OnPolicyBench:
    env: str = "dmc/cartpole-balance"
    algos: tuple[str, ...] = ("ppo", "da-mdp-ppo", "reppo", "da-mdp-reppo", "da-mdp-wpo")
    """Our on-policy learners to time (a diffusion learner is compared with its Gaussian baseline, BASELINE)."""
    diffusion_steps: tuple[int, ...] = (4, 8, 16)
    """K of the learners that have a diffusion chain (one timing per K)."""
    num_envs: int = 32
    num_steps: int = 64
    """Env steps per env per iteration (brax: unroll_length)."""
    epochs: int = 4
    minibatches: int = 8
    iterations: int = 4
    """Iterations per timed chunk (brax: training steps per epoch)."""
    policy_hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the Gaussian policy (PPO's policy, REPPO's actor) and of a diffusion policy's score net."""
    value_hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the value (PPO) or Q critic (REPPO)."""
    brax: bool = True
    """Also time brax's PPO."""
    repeats: int = 3
    matmul_size: int = 1024
    out: Optional[str] = None


BASELINE = {"da-mdp-ppo": "ppo", "da-mdp-reppo": "reppo", "da-mdp-wpo": "reppo"}
"""The Gaussian learner each diffusion learner is costed against (issue target: <= 1.2x per denoising step)."""


def our_config(b: OnPolicyBench, algo: str, diffusion_steps: int | None) -> OnlineConfig:
    cfg = OnlineConfig(agent=config_class(algo)(), loop=LoopOptions())
    settings = dict(env=b.env, action_repeat=1, num_envs=b.num_envs, num_steps=b.num_steps, epochs=b.epochs,
                    minibatches=b.minibatches, eval_every=b.iterations * b.num_envs * b.num_steps,
                    policy_hidden=b.policy_hidden, actor_hidden=b.policy_hidden, score_hidden=b.policy_hidden,
                    value_hidden=b.value_hidden, critic_hidden=b.value_hidden, progress=False,
                    diffusion_steps=diffusion_steps)
    names = flat_fields(cfg)
    return replace_flat(cfg, **{k: v for k, v in settings.items() if k in names and v is not None})


def time_chunk(trainer: Any, repeats: int) -> dict:
    """Compile seconds of `train_chunk`, then the median of `repeats` steady calls, each continuing the
    carry (so the timed work is training, not a replay of one state)."""
    carry = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = jax.jit(trainer.train_chunk).lower(carry).compile()
    compile_s = time.perf_counter() - t0
    carry, _ = jax.block_until_ready(compiled(carry))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        carry, _ = jax.block_until_ready(compiled(carry))
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    return {"compile_s": compile_s, "seconds": seconds, "env_steps_per_s": trainer.cfg.steps_per_chunk / seconds,
            "carry": carry}


def time_update(trainer: Any, carry: Any, repeats: int, peak: float) -> dict:
    """One minibatch gradient step (`agent.update`) on a prepared rollout: its FLOPs (XLA's count, exact
    here since the step has no loop; a whole chunk's count would take each loop body once) and the share
    of the matmul peak it reaches."""
    key = jax.random.PRNGKey(1)
    _, trajectory = jax.jit(trainer.collect)(carry.agent, carry.env, key)
    prepared = jax.jit(trainer.agent.prepare)(carry.agent, trajectory)
    rows = trainer.cfg.minibatch_size
    minibatch = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:rows], prepared)
    return with_share(timed(trainer.agent.update, (carry.agent, minibatch, key), repeats), peak)


def ours(b: OnPolicyBench, peak: float) -> dict:
    results: dict[str, Any] = {}
    for algo in b.algos:
        has_chain = "diffusion_steps" in flat_fields(OnlineConfig(agent=config_class(algo)(), loop=LoopOptions()))
        for k in (b.diffusion_steps if has_chain else (None,)):
            name = algo if k is None else f"{algo}_K{k}"
            trainer = build_trainer(our_config(b, algo, k))
            chunk = time_chunk(trainer, b.repeats)
            carry = chunk.pop("carry")
            results[name] = {**chunk, "update": time_update(trainer, carry, b.repeats, peak)}
            if k is not None:
                results[name]["diffusion_steps"] = k
    for name, r in results.items():
        baseline = BASELINE.get(name.rsplit("_K", 1)[0])
        if baseline in results and "diffusion_steps" in r:
            r["baseline"] = baseline
            r["cost_per_denoising_step_vs_baseline"] = r["seconds"] / r["diffusion_steps"] / results[baseline]["seconds"]
    return results


def install_device_put_replicated() -> None:
    """What brax 0.14.2 needs of the jax API that jax 0.10 removed: x stacked once per device."""
    if hasattr(jax, "device_put_replicated"):
        return

    def device_put_replicated(x: Any, devices: list) -> Any:
        stacked = jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * len(devices)), x)
        return jax.device_put(stacked, devices[0]) if len(devices) == 1 else stacked

    jax.device_put_replicated = device_put_replicated


def brax_ppo(b: OnPolicyBench) -> dict:
    """brax's PPO on the same Playground task; steady env steps/s from its own `training/sps`."""
    import functools

    from brax.training.agents.ppo import networks, train as ppo_train
    from mujoco_playground import registry, wrapper

    from mbdpo_jax.envs import playground

    install_device_put_replicated()
    family, task = b.env.split("/", 1)
    if family != "dmc":
        return {"skipped": f"brax_ppo is timed on dmc/ tasks only, got {b.env}"}
    if task not in playground.TASKS:
        raise ValueError(f"unknown dmc task {task!r}; known: {sorted(playground.TASKS)}")
    env = registry.load(playground.TASKS[task], config_overrides={"impl": "jax"})
    minibatch_envs = b.num_envs // b.minibatches
    per_epoch = b.iterations * b.num_envs * b.num_steps
    epochs: list[tuple[float, float]] = []

    def progress(step: int, metrics: dict) -> None:
        epochs.append((float(metrics["training/sps"]), time.perf_counter()))

    t0 = time.perf_counter()
    ppo_train.train(
        environment=env, wrap_env_fn=wrapper.wrap_for_brax_training, num_timesteps=per_epoch * (b.repeats + 1),
        num_evals=b.repeats + 2, run_evals=False, episode_length=env._config.episode_length, action_repeat=1,
        num_envs=b.num_envs, unroll_length=b.num_steps, batch_size=minibatch_envs, num_minibatches=b.minibatches,
        num_updates_per_batch=b.epochs, normalize_observations=True, reward_scaling=1.0, discounting=0.99,
        learning_rate=1e-3, entropy_cost=1e-2, max_grad_norm=1.0, seed=0,
        network_factory=functools.partial(networks.make_ppo_networks, policy_hidden_layer_sizes=b.policy_hidden,
                                          value_hidden_layer_sizes=b.value_hidden),
        progress_fn=progress)
    total_s = time.perf_counter() - t0
    steady = sorted(sps for sps, _ in epochs[1:])
    sps = steady[len(steady) // 2]
    return {"env_steps_per_s": sps, "seconds": per_epoch / sps, "first_epoch_env_steps_per_s": epochs[0][0],
            "compile_s": per_epoch / epochs[0][0] - per_epoch / sps, "total_s": total_s,
            "epochs_timed": len(steady)}


def measure(b: OnPolicyBench) -> dict:
    if b.num_envs % b.minibatches:
        raise ValueError(f"minibatches={b.minibatches} must divide num_envs={b.num_envs} (brax's minibatches are "
                         "whole env trajectories)")
    peak = matmul_peak(b.matmul_size, b.repeats)
    results: dict[str, Any] = {"matmul_peak_flops_per_s": peak, **ours(b, peak)}
    if b.brax:
        results["brax_ppo"] = brax_ppo(b)
        if "ppo" in results and "env_steps_per_s" in results["brax_ppo"]:
            results["ppo_speedup_vs_brax_ppo"] = results["ppo"]["env_steps_per_s"] / results["brax_ppo"]["env_steps_per_s"]
    return {"benchmark": "on_policy", "device": device_info(), "config": dataclasses.asdict(b), "results": results}


def main(argv: list[str] | None = None) -> int:
    import tyro

    bench = tyro.cli(OnPolicyBench, args=argv, prog="python -m benchmarks.on_policy", description=__doc__)
    emit_report(measure(bench), bench.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
