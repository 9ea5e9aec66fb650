"""Collect an offline dataset from a random or a trained policy.

Example: `python -m experiments.collect --env toy/pendulum --policy random --steps 10000 --out data/pendulum`.

--policy is `random` (uniform actions in [-1, 1]) or a run directory written by `experiments.online`,
whose newest good checkpoint acts with its planner in eval mode; --noise-std adds Gaussian noise to
those actions (clipped to [-1, 1]) for medium-quality data. The envs step inside one jitted
`lax.scan` per chunk. Every option (with its default) is listed by `--help`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from mbdpo_jax.data import datasets, replay

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
    """A batched policy with planner warm starts.

    act(obs [n, O], plan [n, ...], key) -> (actions [n, A], means); advance(means, ended [n]) -> plan.
    """

    env: Any
    plan0: jax.Array
    act: Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    advance: Callable[[jax.Array, jax.Array], jax.Array]
    source: str


def random_policy(cfg: CollectConfig) -> Policy:
    """Uniform actions in [-1, 1] on a freshly made env."""
    from mbdpo_jax import envs

    env = envs.make(cfg.env, action_repeat=cfg.action_repeat)

    def act(obs: jax.Array, plan: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        shape = (obs.shape[0], env.spec.action_size)
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0), plan

    return Policy(env, jnp.zeros(()), act, lambda means, ended: means, f"uniform random actions on {cfg.env}")


def read_run_config(run_dir: Path, cfg: CollectConfig):
    """The OnlineConfig of a run directory, checked against --env and --action-repeat."""
    from mbdpo_jax.train.config import OnlineConfig

    file = run_dir / "config.json"
    if not file.is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.json"
        raise PolicyError(f"--policy {run_dir} {what}; give a run directory of experiments.online or 'random'")
    try:
        stored = json.loads(file.read_text())
        run_cfg = OnlineConfig(**stored)
    except (OSError, ValueError, TypeError) as e:
        raise PolicyError(f"cannot read {file} as an online config: {type(e).__name__}: {e}") from e
    if run_cfg.env != cfg.env:
        raise PolicyError(f"--policy {run_dir} was trained on env {run_cfg.env!r}, not --env {cfg.env!r}")
    if cfg.action_repeat is not None and cfg.action_repeat != run_cfg.action_repeat:
        raise PolicyError(f"--action-repeat {cfg.action_repeat} differs from the run's {run_cfg.action_repeat!r}")
    return run_cfg


def run_policy(cfg: CollectConfig) -> Policy:
    """The newest good checkpoint of a run directory, acting with its planner in eval mode."""
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
    agent, state = trainer.agent, carry.agent

    def act(obs: jax.Array, plan: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        keys = jax.random.split(key, obs.shape[0])
        actions, means, _ = jax.vmap(lambda o, p, k: agent.act(state, o, p, k, True))(obs, plan, keys)
        return actions, means

    def advance(means: jax.Array, ended: jax.Array) -> jax.Array:
        return jax.vmap(agent.next_plan_state)(means, ended)

    source = f"{trainer.agent.__class__.__name__} run {run_dir} at env step {step}, planner in eval mode"
    return Policy(trainer.env, agent.initial_plan_state(), act, advance, source)


def make_chunk(policy: Policy, noise_std: float, length: int) -> Callable:
    """A jitted `chunk(env_state, plan, key) -> ((env_state, plan, key), transitions, ended, returns)`.

    transitions are time-major [length, num_envs, ...]; ended/returns mark and score finished episodes.
    """
    from mbdpo_jax.envs import step_batch

    def step(carry, _):
        env_state, plan, key = carry
        key, k_act, k_noise = jax.random.split(key, 3)
        actions, means = policy.act(env_state.obs, plan, k_act)
        if noise_std > 0:
            actions = actions + noise_std * jax.random.normal(k_noise, actions.shape, actions.dtype)
        actions = jnp.clip(actions, -1.0, 1.0)
        nxt = step_batch(policy.env, env_state, actions)
        record = replay.transition(env_state, actions, nxt, actions, jnp.ones(()))
        ended = jnp.maximum(nxt.done, nxt.truncation) > 0
        plan = policy.advance(means, ended)
        fields = {name: record[name].astype(jnp.float32) for name in datasets.FIELDS}
        return (nxt, plan, key), (fields, ended, nxt.last_return)

    def chunk(env_state, plan, key):
        carry, (fields, ended, returns) = jax.lax.scan(step, (env_state, plan, key), None, length=length)
        return carry, fields, ended, returns

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
    plan = jnp.broadcast_to(policy.plan0, (cfg.num_envs,) + policy.plan0.shape)
    carry = (jax.jit(reset_batch, static_argnums=(0, 2))(policy.env, k_reset, cfg.num_envs), plan, key)
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


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(CollectConfig, args=argv, description=__doc__)
    from experiments.common import run_or_explain

    return run_or_explain(lambda: run(cfg))


if __name__ == "__main__":
    sys.exit(main())
