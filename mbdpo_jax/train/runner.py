"""Host side of an online run: run directory, resume, evaluation, logging, checkpoints, progress.

Everything between two host visits is one jitted `train_chunk`; the host evaluates, writes one
metrics row, and checkpoints the whole carry. A rerun with the same run directory restores the
newest good checkpoint, drops metrics rows written after it, and continues; on the CPU the
resumed metrics.csv equals an uninterrupted run's except for wall-clock columns.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mbdpo_jax import envs
from mbdpo_jax.agents import make_agent
from mbdpo_jax.data.datasets import save_replay
from mbdpo_jax.train import checkpoint
from mbdpo_jax.train.config import AgentOptions, LoopOptions, OnlineConfig
from mbdpo_jax.train.logging import MetricsLogger, plot_learning_curve
from mbdpo_jax.train.online import LoopConfig, OnlineTrainer
from mbdpo_jax.train.run_dir import checkpoints_dir, prepare_run_dir

WALL_CLOCK_COLUMNS = ("wall_time", "env_steps_per_s")
RESUMABLE_CHANGES = ("progress", "save_dataset")


class NonFiniteLossError(FloatingPointError):
    """A training metric became NaN or infinite; the run stops and keeps the last good checkpoint."""


def loop_config(cfg: LoopOptions, agent_options: AgentOptions, spec: envs.EnvSpec) -> LoopConfig:
    """The online loop's static settings from the experiment options."""
    seed_steps = cfg.seed_steps if cfg.seed_steps is not None else max(1000, 5 * spec.episode_length)
    return LoopConfig(num_envs=cfg.num_envs, steps_per_chunk=cfg.eval_every, seed_steps=seed_steps,
                      updates_per_step=cfg.updates_per_step, buffer_size=min(cfg.buffer_size, cfg.steps),
                      batch_size=agent_options.batch_size, horizon=agent_options.horizon,
                      eval_episodes=cfg.eval_episodes)


def build_trainer(cfg: OnlineConfig) -> OnlineTrainer:
    """Validate the config, make the env and agent, and wire the online loop (nothing compiles yet)."""
    cfg.validate()
    env = envs.make(cfg.env, action_repeat=cfg.action_repeat)
    return OnlineTrainer(make_agent(cfg, env.spec), env, loop_config(cfg, cfg, env.spec))


def check_finite(metrics: dict[str, float], step: int, unit: str = "env step") -> None:
    """Raise NonFiniteLossError naming the step and every non-finite metric."""
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"non-finite {', '.join(bad)} at {unit} {step} "
                                 f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); the last good checkpoint is kept")


def _progress_bar(cfg: LoopOptions, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=initial, disable=not cfg.progress, unit="step", dynamic_ncols=True,
                desc=cfg.env)


def run_online(cfg: OnlineConfig) -> Path:
    """Train (or resume) an online run; returns the run directory."""
    trainer = build_trainer(cfg)
    run_dir = prepare_run_dir(cfg.resolved_run_dir(), dataclasses.asdict(cfg), resume_keys_ignored=RESUMABLE_CHANGES,
                              defaults=dataclasses.asdict(type(cfg)()))
    return train_online(trainer, cfg, run_dir)


def train_online(trainer: OnlineTrainer, cfg: LoopOptions, run_dir: Path, initial_agent: Any = None) -> Path:
    """The host loop over jitted chunks in a prepared run directory, resuming from its checkpoints.

    initial_agent: agent state to start from instead of a fresh one (fine-tuning); ignored on resume.
    """
    ckpt_dir = checkpoints_dir(run_dir)
    key = jax.random.PRNGKey(cfg.seed)
    eval_key = jax.random.fold_in(key, 1)
    carry = jax.jit(trainer.init)(key)
    if initial_agent is not None:
        carry = carry.replace(agent=initial_agent)
    train_chunk = jax.jit(trainer.train_chunk, donate_argnums=0)
    evaluate = jax.jit(trainer.evaluate)

    logger = MetricsLogger(run_dir)
    restored = checkpoint.restore_latest_good(ckpt_dir, carry)
    if restored is None:
        evaluation = _floats(evaluate(carry.agent, jax.random.fold_in(eval_key, 0)))
        eval_return = evaluation["eval_return"]
        # The first row fixes the CSV columns, so it names every metric (empty until measured).
        metric_names = jax.eval_shape(trainer.train_chunk, carry)[1]
        logger.write({"env_steps": 0, "wall_time": 0.0, **evaluation, "env_steps_per_s": None,
                      **{k: None for k in metric_names}})
        checkpoint.save(ckpt_dir, 0, carry)
        wall_offset = 0.0
    else:
        step, carry = restored
        logger.truncate_after(step)
        eval_return, wall_offset = _last_logged(run_dir)
    start = time.perf_counter()
    bar = _progress_bar(cfg, int(carry.env_steps))
    try:
        while int(carry.env_steps) < cfg.steps:
            t0, steps0 = time.perf_counter(), int(carry.env_steps)
            carry, metrics = train_chunk(carry)
            metrics = _floats(metrics)
            env_steps = int(carry.env_steps)
            check_finite(metrics, env_steps)
            evaluation = _floats(evaluate(carry.agent, jax.random.fold_in(eval_key, env_steps)))
            eval_return = evaluation["eval_return"]
            chunk_seconds = time.perf_counter() - t0
            row = {"env_steps": env_steps, "wall_time": round(wall_offset + time.perf_counter() - start, 3),
                   **evaluation, "env_steps_per_s": round((env_steps - steps0) / chunk_seconds, 2), **metrics}
            logger.write(row)
            checkpoint.save(ckpt_dir, env_steps, carry)
            bar.update(env_steps - steps0)
            bar.set_postfix(sps=f"{row['env_steps_per_s']:.0f}", eval_return=f"{eval_return:.1f}")
    finally:
        bar.close()
        logger.close()
    plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
    if cfg.save_dataset:
        save_replay(run_dir / "dataset", carry.buffer, trainer.env.spec, source=f"replay of online run {run_dir}",
                    overwrite=True)
    return run_dir


def _floats(tree: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _last_logged(run_dir: Path) -> tuple[float, float]:
    """Last eval return and wall time in metrics.csv (after truncation to the checkpoint)."""
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return float("nan"), 0.0
    last = rows[-1]
    return float(last.get("eval_return") or "nan"), float(last.get("wall_time") or 0.0)
