"""PWM's multi-task policy extraction (Georgiev et al., 2024): one policy per task, learned by first-order
gradients through a frozen pretrained world model on that task's data only (the model is not fine-tuned).

    run_dir = extract(ExtractConfig(checkpoint="runs/pretrain-tdmpc2-5M-s0", tasks=("dmc/a", "dmc/b")))

The pretrained run may be any algorithm that holds a `LatentLearner` state (tdmpc2, mbdpo, pwm). A PWM
agent is built over the same world-model config and task set, with fresh actor and critics per task.
All selected tasks are extracted by one compiled program per chunk: a `lax.scan` over updates of
`jax.vmap` over tasks of {draw `batch_size` start observations from the task's own data, one
`PWM.policy_update` with the shared frozen model parameters (not batched)}. Each task's key is
derived from its task id alone, so a task's policy does not depend on which other tasks run next to
it. Between chunks every task's actor is evaluated in its real env; the host loop (`train.host`)
logs, checkpoints (resume) and plots, and results.json (per-task eval curves, extraction wall time
per task with compile time apart) is rewritten atomically after every evaluation.

Pieces usable alone: `frozen_learner`, `extraction_agent`, `start_states`, `init_policies`,
`extraction_chunk` (pure, jit/vmap-safe), `policy_state`.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbdpo_jax.agents.pwm import PWM, PWMConfig, PWMState
from mbdpo_jax.data import datasets
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models.learner import LearnerState
from mbdpo_jax.train import host
from mbdpo_jax.train.config import CONFIG_FORMAT, to_dict
from mbdpo_jax.train.off_policy import LoopConfig
from mbdpo_jax.train.run_dir import atomic_write, prepare_run_dir

RESULTS_FILE = "results.json"
PUBLISHED_UPDATES = 10_000
PUBLISHED_BATCH_SIZE = 512


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Extract one PWM policy per task from a frozen pretrained world model (PWM's multi-task protocol)."""

    checkpoint: str = ""
    """Run directory written by experiments.pretrain (any of tdmpc2, mbdpo, pwm)."""
    tasks: tuple[str, ...] = ()
    """Tasks to extract a policy for; empty means all tasks of the checkpoint."""
    data: tuple[str, ...] = ()
    """Dataset directories; empty means the pretraining run's own (config.json). Each task samples its
    start states only from datasets of its own env."""
    updates: int = PUBLISHED_UPDATES
    """Policy updates per task (PWM: 10k); rounded up to whole chunks of eval-every."""
    batch_size: int = PUBLISHED_BATCH_SIZE
    """Start states per update (PWM: 512 sequences)."""
    horizon: int = 16
    """Imagination horizon of the actor loss and the critic targets (PWM: 16)."""
    discount: Optional[float] = 0.99
    """gamma of the actor-critic (PWM: 0.99); None means the model's per-task one from the episode length."""
    eval_every: int = 200
    """Updates between evaluations (PWM: 200); also the jitted chunk size and the checkpoint period."""
    eval_episodes: int = 10
    seed: int = 0
    run_dir: str = ""
    """Run directory; empty means runs/pwm-<checkpoint name>-s<seed>. Rerun with the same one to resume."""
    progress: bool = True
    """Show a progress bar."""
    actor_critic: ac.ActorCriticConfig = ac.ActorCriticConfig()

    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/pwm-{Path(self.checkpoint).name}-s{self.seed}"

    def validate(self) -> None:
        """One-line error naming the bad value."""
        if not self.checkpoint:
            raise ValueError("--checkpoint must name a pretraining run directory (experiments.pretrain)")
        for name in ("updates", "batch_size", "horizon", "eval_every", "eval_episodes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.discount is not None and not 0 < self.discount <= 1:
            raise ValueError(f"discount must be in (0, 1] (or None: the model's per-task one), got {self.discount}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"--tasks names a task twice: {' '.join(self.tasks)}")
        self.actor_critic.validate()


# Shrunk for 2 CPU cores (measured on toy/pendulum from a tiny model, see tests/test_extract.py: about
# -180 after 300 updates): fewer, smaller updates, PWM's actor-critic at the online laptop preset's widths
# (published: actor [400, 200, 100], critics [400, 200]), 2 x 2 critic minibatch steps (published 8 x 4)
# and learning rates 2e-3 (published 5e-4, over 10x more updates), decaying over the run.
LAPTOP = dict(updates=1_000, batch_size=64, eval_every=250, eval_episodes=4)
LAPTOP_ACTOR_CRITIC = dict(actor_hidden=(128, 64), critic_hidden=(128, 128), actor_lr=2e-3, critic_lr=2e-3,
                           critic_iterations=2, critic_minibatches=2, lr_decay_updates=1_000)


def preset_config(preset: str) -> ExtractConfig:
    """The default config of a preset (see `train.presets`): published on an accelerator, small on a CPU."""
    from mbdpo_jax.train import presets

    if presets.resolve(preset) == "paper":
        return ExtractConfig()
    return dataclasses.replace(ExtractConfig(), **LAPTOP,
                               actor_critic=dataclasses.replace(ac.ActorCriticConfig(), **LAPTOP_ACTOR_CRITIC))


# ---- the pieces ----------------------------------------------------------------------------------------
def frozen_learner(agent_state: Any) -> LearnerState:
    """The world-model learner state of a pretrained agent (tdmpc2's state is one; mbdpo and pwm nest it)."""
    return agent_state.learner if hasattr(agent_state, "learner") else agent_state


def extraction_agent(pretrained_agent_cfg: Any, tasks: Any, horizon: int, batch_size: int,
                     discount: Optional[float], actor_critic: ac.ActorCriticConfig) -> PWM:
    """A PWM agent over the pretrained world model's config and task set (`train.offline.TaskSet`); only
    its actor-critic settings and imagination horizon are the extraction's own."""
    learner = dataclasses.replace(pretrained_agent_cfg.learner, horizon=horizon, batch_size=batch_size,
                                  discount=discount)
    return PWM(PWMConfig(learner=learner, actor_critic=actor_critic), tasks.spec(), num_tasks=len(tasks.names),
               action_masks=tasks.action_masks)


@struct.dataclass
class StartStates:
    """Observations to start imagination from, per selected task: obs [K, N, O] (zero rows past a task's
    count, never drawn), count [K] int32."""

    obs: jax.Array
    count: jax.Array


def start_states(data: Sequence[datasets.Dataset], tasks: Any, names: Sequence[str]) -> StartStates:
    """Every observation of each named task's datasets (those of its env), zero-padded to the task set's
    observation size; a ValueError names a task without data or a dataset whose sizes differ."""
    per_task = []
    for name in names:
        i = tasks.names.index(name)
        own = [d for d in data if d.env == name]
        if not own:
            raise ValueError(f"no dataset of task {name!r} among --data ({', '.join(str(d.path) for d in data)}); "
                             f"give one of its datasets")
        for d in own:
            if (d.obs_size, d.action_size) != (tasks.obs_sizes[i], tasks.action_sizes[i]):
                raise ValueError(f"dataset {d.path} has (obs, action) sizes {(d.obs_size, d.action_size)}, the "
                                 f"checkpoint's task {name!r} {(tasks.obs_sizes[i], tasks.action_sizes[i])}")
        obs = np.concatenate([d.arrays["obs"].reshape(-1, d.obs_size) for d in own])
        per_task.append(np.pad(obs, [(0, 0), (0, tasks.obs_size - obs.shape[1])]))
    n = max(len(x) for x in per_task)
    stacked = np.stack([np.pad(x, [(0, n - len(x)), (0, 0)]) for x in per_task])
    return StartStates(jnp.asarray(stacked, jnp.float32), jnp.asarray([len(x) for x in per_task], jnp.int32))


def init_policies(agent: PWM, task_ids: jax.Array, seed: int) -> tuple[PWMState, jax.Array]:
    """Fresh actor-critic states, batched over tasks ([K, ...]; learner None: the model is an argument),
    and each task's PRNG key; both depend only on (seed, task id)."""
    keys = jax.vmap(lambda t: jax.random.fold_in(jax.random.PRNGKey(seed), t))(task_ids)

    def one(key):
        k_actor, k_critic, k_run = jax.random.split(key, 3)
        return agent.init_policy(k_actor, k_critic, None), k_run

    # Strong dtypes, as the updated states have (a weakly typed leaf would make the next call recompile).
    return jax.tree.map(lambda x: jnp.asarray(x).astype(x.dtype), jax.vmap(one)(keys))


def extraction_chunk(agent: PWM, params: dict, policies: PWMState, keys: jax.Array, task_ids: jax.Array,
                     starts: StartStates, updates: int) -> tuple[PWMState, jax.Array, dict]:
    """`updates` extraction steps of every task at once (pure; `updates` static): a scan over steps of a
    vmap over tasks of {batch_size start observations of the task's own data, `PWM.policy_update` in the
    frozen model `params` (shared, not batched)}. Returns the policies, keys and per-task metrics averaged
    over the chunk ([K] each)."""

    def task_step(policy, key, task, obs, count):
        key, k_obs, k_update = jax.random.split(key, 3)
        rows = jax.random.randint(k_obs, (agent.batch_size,), 0, count)
        return (*agent.policy_update(policy, params, obs[rows], k_update, task), key)

    def step(carry, _):
        policies, keys = carry
        policies, metrics, keys = jax.vmap(task_step)(policies, keys, task_ids, starts.obs, starts.count)
        return (policies, keys), metrics

    (policies, keys), metrics = jax.lax.scan(step, (policies, keys), None, length=updates)
    return policies, keys, jax.tree.map(lambda m: jnp.mean(m, 0), metrics)


def policy_state(policies: PWMState, k: int, learner: LearnerState) -> PWMState:
    """The full PWM state of the k-th task's policy next to the frozen learner (what `act` needs)."""
    return jax.tree.map(lambda x: x[k], policies).replace(learner=learner)


# ---- the run -------------------------------------------------------------------------------------------
def read_task_names(run_dir: str | Path) -> tuple[str, ...]:
    """The task names of a pretraining run (tasks.json), without restoring its checkpoint."""
    from mbdpo_jax.train.offline import TASKS_FILE

    file = Path(run_dir) / TASKS_FILE
    if not file.is_file():
        raise ValueError(f"{run_dir} is not a pretraining run directory: {TASKS_FILE} is missing")
    return tuple(json.loads(file.read_text())["names"])


def selected_tasks(cfg: ExtractConfig) -> tuple[str, ...]:
    """--tasks checked against the checkpoint's tasks (all of them when empty)."""
    allowed = read_task_names(cfg.checkpoint)
    for name in cfg.tasks:
        if name not in allowed:
            raise ValueError(f"task {name!r} is not a task of checkpoint {cfg.checkpoint}; allowed: {', '.join(allowed)}")
    return tuple(cfg.tasks) or allowed


def device_info() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "num_devices": jax.device_count(),
            "host": platform.node()}


class _Results:
    """results.json: per-task eval curves and the extraction's wall times, rewritten atomically."""

    def __init__(self, path: Path, names: Sequence[str], header: dict):
        self.path, self.names, self.header = path, tuple(names), header
        old = json.loads(path.read_text()) if path.is_file() else {}
        self.rows = list(old.get("evaluations", []))  # {"updates", "chunk_s", "eval_s", returns...}
        self.compile_s = old.get("compile_s")  # this session's once it compiles (a resumed run compiles again)

    def add(self, updates: int, returns: dict[str, float], eval_s: float, chunk_s: float) -> None:
        self.rows = [r for r in self.rows if r["updates"] < updates]  # later rows of a run resumed earlier
        self.rows.append({"updates": updates, "chunk_s": chunk_s, "eval_s": eval_s, "eval_return": returns})
        atomic_write(self.path, (json.dumps(self.summary(), indent=2) + "\n").encode())

    def summary(self) -> dict:
        total = sum(r["chunk_s"] for r in self.rows)
        per_task = {}
        for name in self.names:
            curve = [r["eval_return"][name] for r in self.rows]
            per_task[name] = {"updates": [r["updates"] for r in self.rows], "eval_return": curve,
                              "final_eval_return": curve[-1] if curve else None,
                              "best_eval_return": max(curve) if curve else None,
                              "extraction_s": total / len(self.names)}
        return {**self.header, "compile_s": self.compile_s, "extraction_s_total": total,
                "extraction_s_per_task": total / len(self.names),
                "updates_done": self.rows[-1]["updates"] if self.rows else 0,
                "eval_s_total": sum(r["eval_s"] for r in self.rows), "tasks": per_task, "evaluations": self.rows}


def extraction_program(cfg: ExtractConfig, agent: PWM, tasks: Any, names: Sequence[str], learner: LearnerState,
                       starts: StartStates, results: _Results) -> host.Program:
    """The host loop's view of extraction: chunks of eval_every vmapped updates (compiled ahead of the
    first, so the compile time is measured apart), then each task's actor evaluated in its real env."""
    from mbdpo_jax.train.offline import task_trainer

    task_ids = jnp.asarray([tasks.names.index(n) for n in names], jnp.int32)
    eval_loop = LoopConfig(num_envs=1, steps_per_chunk=1, eval_episodes=cfg.eval_episodes)
    # One compiled evaluation per task, of (all policies, the frozen learner, key): the k-th policy is
    # picked inside the program, so no eager per-leaf indexing; its arguments are committed arrays both
    # before the first chunk and after, so nothing recompiles.
    def evaluator(k: int):
        evaluate = task_trainer(agent, tasks, tasks.names.index(names[k]), eval_loop).evaluate
        return jax.jit(lambda policies, learner, key: evaluate(policy_state(policies, k, learner), key))

    evaluators = [evaluator(k) for k in range(len(names))]
    eval_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1)

    def init():
        policies, keys = jax.jit(init_policies, static_argnums=(0, 2))(agent, task_ids, cfg.seed)
        carry = {"policies": policies, "keys": keys, "updates": jnp.zeros((), jnp.int32)}
        # Committed to the device, as the compiled chunk's outputs are (else the evaluators recompile).
        return jax.device_put(carry, jax.devices()[0])

    def chunk(carry, params, starts):
        policies, keys, metrics = extraction_chunk(agent, params, carry["policies"], carry["keys"], task_ids, starts,
                                                   cfg.eval_every)
        new = {"policies": policies, "keys": keys, "updates": carry["updates"] + cfg.eval_every}
        return new, {f"{k}/{n}": v[i] for k, v in metrics.items() for i, n in enumerate(names)}

    last: dict[str, Any] = {"chunk_s": 0.0, "lowered": None, "compiled": None}

    def lowered():  # traced once, for the metric names and for the compile
        if last["lowered"] is None:
            last["lowered"] = jax.jit(chunk).lower(jax.eval_shape(init), learner.params, starts)
        return last["lowered"]

    def timed_chunk(carry):
        if last["compiled"] is None:  # compiled ahead of the first call, so that its time is apart
            t = time.perf_counter()
            last["compiled"] = lowered().compile()
            results.compile_s = time.perf_counter() - t
        t = time.perf_counter()
        out = jax.block_until_ready(last["compiled"](carry, learner.params, starts))
        last["chunk_s"] = time.perf_counter() - t
        return out

    def evaluate(carry, updates):
        t = time.perf_counter()
        k = jax.random.fold_in(eval_key, updates)
        returns = {}
        for i, (name, ev) in enumerate(zip(names, evaluators)):
            key = jax.random.fold_in(k, task_ids[i])
            returns[name] = float(jax.device_get(ev(carry["policies"], learner, key))["eval_return"])
        results.add(int(updates), returns, time.perf_counter() - t, last["chunk_s"] if updates else 0.0)
        return {"eval_return": float(np.mean(list(returns.values()))),
                **{f"eval_return/{n}": r for n, r in returns.items()}}

    return host.Program(init=init, chunk=timed_chunk, evaluate=evaluate, count=lambda carry: int(carry["updates"]),
                        total=cfg.updates, metric_names=lambda: lowered().out_info[1], step_key="updates", unit="update",
                        label="extract")


def extract(cfg: ExtractConfig) -> Path:
    """Extract (or resume extracting) a policy per selected task; returns the run directory."""
    from mbdpo_jax.train.offline import load_pretrained

    cfg.validate()
    names = selected_tasks(cfg)
    pre_cfg, tasks, state = load_pretrained(cfg.checkpoint)
    data_dirs = tuple(cfg.data) or tuple(pre_cfg.offline.data)
    cfg = dataclasses.replace(cfg, tasks=names, data=data_dirs)
    starts = start_states([datasets.load_dataset(d) for d in data_dirs], tasks, names)
    agent = extraction_agent(pre_cfg.agent, tasks, cfg.horizon, cfg.batch_size, cfg.discount, cfg.actor_critic)
    config = {"format": CONFIG_FORMAT, "extract": dataclasses.asdict(cfg), "pretrained": to_dict(pre_cfg)}
    run_dir = prepare_run_dir(cfg.resolved_run_dir(), config, resume_keys_ignored=("extract.progress",))
    header = {"checkpoint": str(cfg.checkpoint), "pretrained_algo": pre_cfg.algo,
              "model_size": pre_cfg.agent.learner.model_size, "task_names": list(names), "vmapped_tasks": len(names),
              "updates": cfg.updates, "batch_size": cfg.batch_size, "horizon": cfg.horizon, "device": device_info()}
    results = _Results(run_dir / RESULTS_FILE, names, header)
    program = extraction_program(cfg, agent, tasks, names, frozen_learner(state), starts, results)
    host.run_program(program, run_dir, cfg.progress)
    print(summary_table(results.summary()))
    return run_dir


def summary_table(summary: dict) -> str:
    """A short text table of results.json: per task the final and best eval return and the wall time."""
    lines = [f"{'task':<28} {'final':>9} {'best':>9} {'extract s':>10}"]
    for name, r in summary["tasks"].items():
        lines.append(f"{name:<28} {r['final_eval_return']:>9.1f} {r['best_eval_return']:>9.1f} "
                     f"{r['extraction_s']:>10.1f}")
    lines.append(f"{summary['vmapped_tasks']} task(s) in one vmapped program: {summary['updates_done']} updates each, "
                 f"{summary['extraction_s_total']:.1f} s in all, compile {summary['compile_s'] or 0:.1f} s apart")
    return "\n".join(lines)
