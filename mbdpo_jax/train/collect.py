"""Collect an offline dataset from a random or a trained policy (library side of `experiments.collect`).

--policy is `random` (uniform actions in [-1, 1]) or a run directory written by `experiments.online`,
whose newest good checkpoint acts in eval mode; --noise-std adds Gaussian noise to those actions
(clipped to [-1, 1]) for medium-quality data. The envs advance with the shared rollout step
(`train.rollout`) inside one jitted `lax.scan` per chunk.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mbdpo_jax.data import datasets, replay
from mbdpo_jax.train import rollout

RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Collect transitions from a random or trained policy into a dataset directory."""

    env: str
    """Environment name, see `mbdpo_jax.envs.names()`."""
    policy: str
    """`random`, or a run directory of `experiments.online` (its newest good checkpoint acts)."""
    steps: int
    """Transitions to collect (all envs together), rounded up to a multiple of num-envs."""
    out: str
    """Dataset directory to create; must not exist (unless --overwrite)."""
    num_envs: int = 8
    """Parallel environments: the dataset's rows."""
    seed: int = 0
    quality: Optional[str] = None
    """Quality label; None means random (random policy), expert (run, no noise) or medium (run, noise)."""
    noise_std: float = 0.0
    """Std of Gaussian noise added to the policy's actions (then clipped to [-1, 1])."""
    action_repeat: Optional[int] = None
    """None means the run's setting, or the env family's default for a random policy."""
    chunk_steps: int = 10_000
    """Env steps (all envs together) per jitted chunk; bounds device memory, not the result."""
    overwrite: bool = False
    """Replace an existing dataset at --out."""

    def validate(self) -> None:
        """Fail before anything compiles, naming the bad value."""
        for name in ("steps", "num_envs", "chunk_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise-std must be >= 0, got {self.noise_std}")
        if self.action_repeat is not None and self.action_repeat < 1:
            raise ValueError(f"action-repeat must be >= 1, got {self.action_repeat}")


class PolicyError(ValueError):
    """The --policy run directory cannot be used (missing, other env, no checkpoint)."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """A batched policy with its act carries (planner warm starts), as `train.rollout` steps them."""

    env: Any
    initial_carry: Any  # [num_envs, ...]
    act: rollout.BatchedPolicy
    next_carry: rollout.NextCarry
    source: str


def random_policy(cfg: CollectConfig) -> Policy:
    """Uniform actions in [-1, 1] on a freshly made env."""
    from mbdpo_jax import envs

    env = envs.make(cfg.env, action_repeat=cfg.action_repeat)

    def act(obs: jax.Array, carry: jax.Array, key: jax.Array):
        shape = (obs.shape[0], env.spec.action_size)
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0), carry, {}

    return Policy(env, jnp.zeros((cfg.num_envs,)), act, lambda carry, started: carry,
                  f"uniform random actions on {cfg.env}")


def read_run_config(run_dir: Path, cfg: CollectConfig):
    """The OnlineConfig of a run directory, checked against --env and --action-repeat."""
    from mbdpo_jax.train.config import OnlineConfig, from_dict

    file = run_dir / "config.json"
    if not file.is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.json"
        raise PolicyError(f"--policy {run_dir} {what}; give a run directory of experiments.online or 'random'")
    try:
        run_cfg = from_dict(OnlineConfig, json.loads(file.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise PolicyError(f"cannot read {file} as an online config: {type(e).__name__}: {e}") from e
    if run_cfg.loop.env != cfg.env:
        raise PolicyError(f"--policy {run_dir} was trained on env {run_cfg.loop.env!r}, not --env {cfg.env!r}")
    if cfg.action_repeat is not None and cfg.action_repeat != run_cfg.loop.action_repeat:
        raise PolicyError(f"--action-repeat {cfg.action_repeat} differs from the run's {run_cfg.loop.action_repeat!r}")
    return run_cfg


def run_policy(cfg: CollectConfig) -> Policy:
    """The newest good checkpoint of a run directory, acting in eval mode."""
    from mbdpo_jax import envs
    from mbdpo_jax.train import checkpoint
    from mbdpo_jax.train.run_dir import checkpoints_dir
    from mbdpo_jax.train.runner import build_trainer

    if cfg.env not in envs.names():
        envs.make(cfg.env)  # raises UnknownEnvError naming close matches, before the run directory is read
    run_dir = Path(cfg.policy)
    trainer = build_trainer(read_run_config(run_dir, cfg))
    template = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
    restored = checkpoint.restore_latest_good(checkpoints_dir(run_dir), template)
    if restored is None:
        raise PolicyError(f"--policy {run_dir} has no checkpoint in {checkpoints_dir(run_dir)}")
    step, carry = restored
    agent = trainer.agent
    source = f"{agent.__class__.__name__} run {run_dir} at env step {step}, acting in eval mode"
    return Policy(trainer.env, rollout.initial_carries(agent, cfg.num_envs), rollout.agent_policy(agent, carry.agent, True),
                  rollout.agent_next_carry(agent), source)


def with_noise(act: rollout.BatchedPolicy, noise_std: float) -> rollout.BatchedPolicy:
    """`act` with N(0, noise_std^2) added to its actions, clipped to [-1, 1]."""
    def noisy(obs, carry, key):
        k_act, k_noise = jax.random.split(key)
        actions, carry, aux = act(obs, carry, k_act)
        if noise_std > 0:
            actions = actions + noise_std * jax.random.normal(k_noise, actions.shape, actions.dtype)
        return jnp.clip(actions, -1.0, 1.0), carry, aux

    return noisy


def make_chunk(policy: Policy, noise_std: float, length: int) -> Callable:
    """A jitted `chunk(env_state, carry, key) -> ((env_state, carry, key), transitions, ended, returns)`.

    transitions are time-major [length, num_envs, ...]; ended/returns mark and score finished episodes.
    """
    act = with_noise(policy.act, noise_std)

    def step(state, _):
        env_state, carry, key = state
        key, k_step = jax.random.split(key)
        s = rollout.rollout_step(policy.env, act, policy.next_carry, env_state, carry, k_step)
        record = replay.transition(s.prev, s.action, s.next)
        fields = {name: record[name].astype(jnp.float32) for name in datasets.FIELDS}
        return (s.next, s.act_carry, key), (fields, s.episode_started, s.next.last_return)

    def chunk(env_state, carry, key):
        state, (fields, ended, returns) = jax.lax.scan(step, (env_state, carry, key), None, length=length)
        return state, fields, ended, returns

    return jax.jit(chunk)


def collect(cfg: CollectConfig) -> tuple[dict[str, np.ndarray], np.ndarray, Policy]:
    """Run the policy; returns ({field: [num_envs, T, ...]}, returns of finished episodes, policy)."""
    from mbdpo_jax.envs import reset_batch

    policy = random_policy(cfg) if cfg.policy == RANDOM else run_policy(cfg)
    iterations = math.ceil(cfg.steps / cfg.num_envs)
    chunks = math.ceil(iterations / max(1, cfg.chunk_steps // cfg.num_envs))
    per_chunk = math.ceil(iterations / chunks)
    chunk = make_chunk(policy, cfg.noise_std, per_chunk)
    k_reset, key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    carry = (jax.jit(reset_batch, static_argnums=(0, 2))(policy.env, k_reset, cfg.num_envs), policy.initial_carry, key)
    parts, returns = [], []
    for _ in range(chunks):
        carry, fields, ended, finished = chunk(*carry)  # the carry stays on the device
        fields, ended, finished = jax.device_get((fields, ended, finished))
        parts.append(fields)
        returns.append(np.asarray(finished)[np.asarray(ended)])
    data = {name: np.concatenate([p[name] for p in parts]).swapaxes(0, 1)[:, :iterations] for name in datasets.FIELDS}
    episode_returns = np.concatenate(returns)[: _finished_within(parts, iterations)]
    return data, episode_returns, policy


def _finished_within(parts: list[dict[str, np.ndarray]], iterations: int) -> int:
    """Episodes that ended within the first `iterations` steps (the rest were collected and cut)."""
    ends = np.concatenate([p["end"] for p in parts])[:iterations]
    return int(ends.sum())


def default_quality(cfg: CollectConfig) -> str:
    """random for the random policy; expert for a run without noise; medium with noise."""
    if cfg.quality:
        return cfg.quality
    if cfg.policy == RANDOM:
        return "random"
    return "medium" if cfg.noise_std > 0 else "expert"


def run(cfg: CollectConfig) -> None:
    """Validate, collect, save and print the dataset path and the mean return of finished episodes."""
    cfg.validate()
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise datasets.DatasetExistsError(f"--out {cfg.out} already exists; pick another path or pass --overwrite")
    data, episode_returns, policy = collect(cfg)
    noise = f", action noise std {cfg.noise_std}" if cfg.noise_std > 0 else ""
    source = f"{policy.source}{noise}, {cfg.num_envs} envs, seed {cfg.seed} (experiments.collect)"
    path = datasets.save_dataset(cfg.out, data, policy.env.spec, quality=default_quality(cfg), source=source,
                                 overwrite=cfg.overwrite)
    mean = f"{episode_returns.mean():.3f}" if len(episode_returns) else "n/a"
    print(f"dataset: {path} ({data['reward'].size} transitions, {len(episode_returns)} episodes completed, "
          f"mean episode return {mean})")


