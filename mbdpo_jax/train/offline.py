"""Offline multi-task pretraining and offline-to-online fine-tuning.

pretrain: datasets -> `mix` (one task per env, padded sizes, action masks) -> one jitted chunk of
`eval_every` updates (`lax.scan` over {sample sequences, agent.update}) -> evaluate every task in
its real env -> log and checkpoint. fine-tune: restore that agent, bind it to a task (a known
one, or a new one with a new task embedding), and run the online loop from it.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbdpo_jax import envs
from mbdpo_jax.agents import make_agent
from mbdpo_jax.agents.task import TaskAgent
from mbdpo_jax.data import datasets
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.envs.padded import PaddedEnv
from mbdpo_jax.train import checkpoint
from mbdpo_jax.train.config import FinetuneConfig, PretrainConfig
from mbdpo_jax.train.logging import MetricsLogger, plot_learning_curve
from mbdpo_jax.train.online import LoopConfig, OnlineTrainer
from mbdpo_jax.train.run_dir import atomic_write, checkpoints_dir, prepare_run_dir
from mbdpo_jax.train.runner import NonFiniteLossError, check_finite, loop_config, train_online

TASKS_FILE = "tasks.json"


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """The tasks a multi-task model was built for, in task-id order, and its padded sizes."""

    names: tuple[str, ...]
    obs_sizes: tuple[int, ...]
    action_sizes: tuple[int, ...]
    episode_lengths: tuple[int, ...]
    action_repeats: tuple[int, ...]

    @property
    def obs_size(self) -> int:
        return max(self.obs_sizes)

    @property
    def action_size(self) -> int:
        return max(self.action_sizes)

    @property
    def action_masks(self) -> np.ndarray:
        return np.stack([(np.arange(self.action_size) < a).astype(np.float32) for a in self.action_sizes])

    def spec(self) -> EnvSpec:
        """A spec with the padded sizes and each task's episode length (one discount per task)."""
        return EnvSpec("multitask:" + ",".join(self.names), self.obs_size, self.action_size,
                       max(self.episode_lengths), task_episode_lengths=tuple(self.episode_lengths))

    def with_task(self, env: envs.Env) -> "TaskSet":
        s = env.spec
        return TaskSet(self.names + (s.name,), self.obs_sizes + (s.obs_size,), self.action_sizes + (s.action_size,),
                       self.episode_lengths + (s.episode_length,), self.action_repeats + (s.action_repeat,))


def task_set(data: datasets.MultiTaskData) -> TaskSet:
    return TaskSet(data.task_names, data.obs_sizes, data.action_sizes, data.episode_lengths, data.action_repeats)


def build_agent(cfg: Any, tasks: TaskSet) -> Any:
    """The (multi-task when several tasks) agent over the tasks' padded sizes."""
    return make_agent(cfg, tasks.spec(), num_tasks=len(tasks.names), action_masks=tasks.action_masks)


def task_trainer(agent: Any, tasks: TaskSet, task: int, loop: LoopConfig) -> OnlineTrainer:
    """An online trainer (and evaluator) of `agent` bound to `task`, in that task's real env."""
    env = envs.make(tasks.names[task], action_repeat=tasks.action_repeats[task])
    return OnlineTrainer(TaskAgent(agent, task), PaddedEnv(env, tasks.obs_size, tasks.action_size), loop)


def offline_batch(data: datasets.MultiTaskData, key: jax.Array, batch_size: int, horizon: int) -> dict:
    """Sequences from the datasets, in the online replay's format (no planner actions to distil)."""
    batch = datasets.sample_sequences(data, key, batch_size, horizon)
    return {**batch, "plan_action": batch["action"], "planned": jnp.zeros_like(batch["reward"])}


# ---- pretraining ------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrain (or resume) on the datasets of cfg.data; returns the run directory."""
    cfg.validate()
    data = datasets.mix([datasets.load_dataset(d) for d in cfg.data], cfg.segment_length)
    tasks = task_set(data)
    agent = build_agent(cfg, tasks)
    run_dir = prepare_run_dir(cfg.resolved_run_dir(), dataclasses.asdict(cfg), resume_keys_ignored=("progress",),
                              defaults=dataclasses.asdict(type(cfg)()))
    atomic_write(run_dir / TASKS_FILE, json.dumps(dataclasses.asdict(tasks), indent=2).encode())
    eval_loop = LoopConfig(num_envs=1, steps_per_chunk=1, eval_episodes=cfg.eval_episodes)
    evaluators = [jax.jit(task_trainer(agent, tasks, i, eval_loop).evaluate) for i in range(len(tasks.names))]
    key = jax.random.PRNGKey(cfg.seed)
    eval_key = jax.random.fold_in(key, 1)
    carry = {"agent": agent.init(key), "key": jax.random.fold_in(key, 2), "updates": jnp.zeros((), jnp.int32)}

    def chunk(carry, data):
        def one(state, k):
            k_batch, k_update = jax.random.split(k)
            return agent.update(state, offline_batch(data, k_batch, cfg.batch_size, cfg.horizon), k_update)

        key, k_chunk = jax.random.split(carry["key"])
        state, metrics = jax.lax.scan(one, carry["agent"], jax.random.split(k_chunk, cfg.eval_every))
        new = {"agent": state, "key": key, "updates": carry["updates"] + cfg.eval_every}
        return new, jax.tree.map(jnp.mean, metrics)

    def evaluate(agent_state, updates):
        k = jax.random.fold_in(eval_key, updates)
        results = [jax.device_get(ev(agent_state, k)) for ev in evaluators]
        row = {f"eval_return/{name}": float(r["eval_return"]) for name, r in zip(tasks.names, results)}
        return {"eval_return": float(np.mean(list(row.values()))), **row}

    ckpt_dir = checkpoints_dir(run_dir)
    logger = MetricsLogger(run_dir, step_key="updates")
    restored = checkpoint.restore_latest_good(ckpt_dir, carry)
    chunk_fn = jax.jit(chunk)
    if restored is None:
        metric_names = jax.eval_shape(chunk, carry, data)[1]
        logger.write({"updates": 0, "wall_time": 0.0, **evaluate(carry["agent"], 0),
                      **{k: None for k in metric_names}})
        checkpoint.save(ckpt_dir, 0, carry)
        wall_offset = 0.0
    else:
        step, carry = restored
        logger.truncate_after(step)
        wall_offset = _last_wall_time(run_dir)
    start = time.perf_counter()
    try:
        while int(carry["updates"]) < cfg.steps:
            carry, metrics = chunk_fn(carry, data)  # data is an argument, not a constant baked into the program
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            updates = int(carry["updates"])
            check_finite(metrics, updates, unit="update")
            row = {"updates": updates, "wall_time": round(wall_offset + time.perf_counter() - start, 3),
                   **evaluate(carry["agent"], updates), **metrics}
            logger.write(row)
            checkpoint.save(ckpt_dir, updates, carry)
            if cfg.progress:
                print(f"updates {updates}: eval return {row['eval_return']:.1f}, total loss {metrics['total_loss']:.4f}",
                      flush=True)
    finally:
        logger.close()
    plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png", x="updates")
    return run_dir


def _last_wall_time(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["wall_time"]) if rows else 0.0


# ---- fine-tuning ------------------------------------------------------------------------------
def load_pretrained(run_dir: str | Path) -> tuple[PretrainConfig, TaskSet, Any]:
    """(config, tasks, agent state) of the newest good checkpoint of a pretraining run."""
    run_dir = Path(run_dir)
    for name in ("config.json", TASKS_FILE):
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir} is not a pretraining run directory: {name} is missing")
    raw = json.loads((run_dir / "config.json").read_text())
    cfg = PretrainConfig(**{**raw, "data": tuple(raw["data"])})
    tasks = TaskSet(**{k: tuple(v) for k, v in json.loads((run_dir / TASKS_FILE).read_text()).items()})
    agent = build_agent(cfg, tasks)
    template = {"agent": agent.init(jax.random.PRNGKey(0)), "key": jax.random.PRNGKey(0),
                "updates": jnp.zeros((), jnp.int32)}
    restored = checkpoint.restore_latest_good(checkpoints_dir(run_dir), template)
    if restored is None:
        raise ValueError(f"{run_dir} has no checkpoint to fine-tune from")
    return cfg, tasks, restored[1]["agent"]


def add_task_embedding(agent_state: Any, new_agent: Any, key: jax.Array) -> Any:
    """The pretrained state with one more task embedding (the mean of the others) and fresh
    world-model optimiser moments (their shapes changed); everything else is kept."""
    core = agent_state.core if hasattr(agent_state, "core") else agent_state
    emb = core.params["task_emb"]
    params = {**core.params, "task_emb": jnp.concatenate([emb, emb.mean(0, keepdims=True)], 0)}
    core = core.replace(params=params, model_opt=new_agent.model_tx.init(params))
    return agent_state.replace(core=core) if hasattr(agent_state, "core") else core


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune online (or resume); returns the run directory."""
    cfg.validate()
    pre_cfg, tasks, state = load_pretrained(cfg.checkpoint)
    env = envs.make(cfg.env, action_repeat=cfg.action_repeat)
    if cfg.env in tasks.names:
        task = tasks.names.index(cfg.env)
        agent = build_agent(pre_cfg, tasks)
    else:
        if len(tasks.names) == 1:
            raise ValueError(f"{cfg.checkpoint} was pretrained on the single task {tasks.names[0]!r} (no task "
                             f"embeddings); fine-tune on it, or pretrain on several tasks to add {cfg.env!r}")
        tasks = tasks.with_task(env)
        task = len(tasks.names) - 1
        agent = build_agent(pre_cfg, tasks)
        state = add_task_embedding(state, agent, jax.random.PRNGKey(cfg.seed))
    trainer = OnlineTrainer(TaskAgent(agent, task), PaddedEnv(env, tasks.obs_size, tasks.action_size),
                            loop_config(cfg, pre_cfg, env.spec))
    run_dir = prepare_run_dir(cfg.resolved_run_dir(), dataclasses.asdict(cfg),
                              resume_keys_ignored=("progress", "save_dataset"), defaults=dataclasses.asdict(type(cfg)()))
    return train_online(trainer, cfg, run_dir, initial_agent=state)
