"""Offline multi-task pretraining and offline-to-online fine-tuning.

pretrain: datasets -> `mix` (one task per env, padded sizes, action masks) -> one jitted chunk of
`eval_every` updates (`lax.scan` over {sample sequences, agent.update}) -> evaluate every task in
its real env -> log and checkpoint. fine-tune: restore that agent, bind it to a task (a known
one, or a new one with a new task embedding), and run the online loop from it.
"""
from __future__ import annotations

import dataclasses
import json
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
from mbdpo_jax.train import host
from mbdpo_jax.train.config import FinetuneConfig, PretrainConfig, from_dict, to_dict
from mbdpo_jax.train.off_policy import LoopConfig, OffPolicyTrainer
from mbdpo_jax.train.run_dir import atomic_write, checkpoints_dir, prepare_run_dir
from mbdpo_jax.train.runner import loop_config, train_online

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


def build_agent(agent_cfg: Any, tasks: TaskSet) -> Any:
    """The (multi-task when several tasks) agent of `agent_cfg` over the tasks' padded sizes."""
    return make_agent(agent_cfg, tasks.spec(), num_tasks=len(tasks.names), action_masks=tasks.action_masks)


def task_trainer(agent: Any, tasks: TaskSet, task: int, loop: LoopConfig) -> OffPolicyTrainer:
    """An online trainer (and evaluator) of `agent` bound to `task`, in that task's real env."""
    env = envs.make(tasks.names[task], action_repeat=tasks.action_repeats[task])
    return OffPolicyTrainer(TaskAgent(agent, task), PaddedEnv(env, tasks.obs_size, tasks.action_size), loop)


def offline_batch(agent: Any, data: datasets.MultiTaskData, key: jax.Array) -> dict:
    """Sequences from the datasets in the online replay's format; the agent's replay extras are
    zeros (datasets hold no planner outputs: e.g. nothing to distil)."""
    batch = datasets.sample_sequences(data, key, agent.batch_size, agent.horizon)
    h, b = batch["reward"].shape
    return {**batch, **{k: jnp.zeros((h, b) + shape) for k, shape in agent.replay_extras.items()}}


# ---- pretraining ------------------------------------------------------------------------------
def pretrain_program(cfg: PretrainConfig, agent: Any, tasks: TaskSet, data: datasets.MultiTaskData) -> host.Program:
    """The host loop's view of offline pretraining: chunks of `eval_every` updates on sampled
    sequences, then every task evaluated in its real env."""
    opts = cfg.offline
    eval_loop = LoopConfig(num_envs=1, steps_per_chunk=1, eval_episodes=opts.eval_episodes)
    evaluators = [jax.jit(task_trainer(agent, tasks, i, eval_loop).evaluate) for i in range(len(tasks.names))]
    key = jax.random.PRNGKey(opts.seed)
    eval_key = jax.random.fold_in(key, 1)

    def init():
        return {"agent": agent.init(key), "key": jax.random.fold_in(key, 2), "updates": jnp.zeros((), jnp.int32)}

    def chunk(carry, data):
        def one(state, k):
            k_batch, k_update = jax.random.split(k)
            return agent.update(state, offline_batch(agent, data, k_batch), k_update)

        key, k_chunk = jax.random.split(carry["key"])
        state, metrics = jax.lax.scan(one, carry["agent"], jax.random.split(k_chunk, opts.eval_every))
        new = {"agent": state, "key": key, "updates": carry["updates"] + opts.eval_every}
        return new, jax.tree.map(jnp.mean, metrics)

    def evaluate(carry, updates):
        k = jax.random.fold_in(eval_key, updates)
        results = [jax.device_get(ev(carry["agent"], k)) for ev in evaluators]
        row = {f"eval_return/{name}": float(r["eval_return"]) for name, r in zip(tasks.names, results)}
        return {"eval_return": float(np.mean(list(row.values()))), **row}

    chunk_fn = jax.jit(chunk)
    metric_names = lambda: jax.eval_shape(chunk, jax.eval_shape(init), data)[1]
    # data is an argument of the compiled chunk, not a constant baked into the program.
    return host.Program(init=init, chunk=lambda carry: chunk_fn(carry, data), evaluate=evaluate,
                        count=lambda carry: int(carry["updates"]), total=opts.steps, metric_names=metric_names,
                        step_key="updates", unit="update", label="pretrain")


def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrain (or resume) on the datasets of cfg.offline.data; returns the run directory."""
    cfg.validate()
    data = datasets.mix([datasets.load_dataset(d) for d in cfg.offline.data], cfg.offline.segment_length)
    tasks = task_set(data)
    agent = build_agent(cfg.agent, tasks)
    defaults = to_dict(PretrainConfig(agent=type(cfg.agent)()))
    run_dir = prepare_run_dir(cfg.resolved_run_dir(), to_dict(cfg), resume_keys_ignored=("offline.progress",),
                              defaults=defaults)
    atomic_write(run_dir / TASKS_FILE, json.dumps(dataclasses.asdict(tasks), indent=2).encode())
    host.run_program(pretrain_program(cfg, agent, tasks, data), run_dir, cfg.offline.progress)
    return run_dir


# ---- fine-tuning ------------------------------------------------------------------------------
def load_pretrained(run_dir: str | Path) -> tuple[PretrainConfig, TaskSet, Any]:
    """(config, tasks, agent state) of the newest good checkpoint of a pretraining run."""
    run_dir = Path(run_dir)
    for name in ("config.json", TASKS_FILE):
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir} is not a pretraining run directory: {name} is missing")
    cfg = from_dict(PretrainConfig, json.loads((run_dir / "config.json").read_text()))
    tasks = TaskSet(**{k: tuple(v) for k, v in json.loads((run_dir / TASKS_FILE).read_text()).items()})
    agent = build_agent(cfg.agent, tasks)
    # abstract shapes only: initialising the agent's parameters eagerly costs seconds for nothing
    template = jax.eval_shape(lambda key: {"agent": agent.init(key), "key": key, "updates": jnp.zeros((), jnp.int32)},
                              jax.random.PRNGKey(0))
    restored = checkpoint.restore_latest_good(checkpoints_dir(run_dir), template)
    if restored is None:
        raise ValueError(f"{run_dir} has no checkpoint to fine-tune from")
    return cfg, tasks, restored[1]["agent"]


def add_task_embedding(agent_state: Any, new_agent: Any, key: jax.Array) -> Any:
    """The pretrained state with one more task embedding (the mean of the others) and fresh
    world-model optimiser moments (their shapes changed); everything else is kept."""
    nested = hasattr(agent_state, "learner")
    learner = agent_state.learner if nested else agent_state
    emb = learner.params["task_emb"]
    params = {**learner.params, "task_emb": jnp.concatenate([emb, emb.mean(0, keepdims=True)], 0)}
    learner = learner.replace(params=params, model_opt=new_agent.learner.model_tx.init(params))
    return agent_state.replace(learner=learner) if nested else learner


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune online (or resume); returns the run directory."""
    cfg.validate()
    pre_cfg, tasks, state = load_pretrained(cfg.checkpoint)
    loop = cfg.loop
    env = envs.make(loop.env, action_repeat=loop.action_repeat)
    if loop.env in tasks.names:
        task = tasks.names.index(loop.env)
        agent = build_agent(pre_cfg.agent, tasks)
    else:
        if len(tasks.names) == 1:
            raise ValueError(f"{cfg.checkpoint} was pretrained on the single task {tasks.names[0]!r} (no task "
                             f"embeddings); fine-tune on it, or pretrain on several tasks to add {loop.env!r}")
        tasks = tasks.with_task(env)
        task = len(tasks.names) - 1
        agent = build_agent(pre_cfg.agent, tasks)
        state = add_task_embedding(state, agent, jax.random.PRNGKey(loop.seed))
    trainer = OffPolicyTrainer(TaskAgent(agent, task), PaddedEnv(env, tasks.obs_size, tasks.action_size),
                               loop_config(loop, env.spec))
    config = {"format": to_dict(pre_cfg)["format"], **dataclasses.asdict(cfg)}
    run_dir = prepare_run_dir(cfg.resolved_run_dir(), config, resume_keys_ignored=("loop.progress", "loop.save_dataset"))
    return train_online(trainer, loop, run_dir, initial_agent=state)
