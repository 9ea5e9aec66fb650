"""Shared fixtures: small, fast configurations and tiny envs for CPU tests."""
import jax
import jax.numpy as jnp
import pytest

from mbdpo_jax.envs.base import EnvSpec, EnvState

from mbdpo_jax.agents import config_class
from mbdpo_jax.train.config import LoopOptions, OnlineConfig, flat_fields, replace_flat


def tiny_online_config(algo: str = "tdmpc2", **overrides) -> OnlineConfig:
    """A toy/pendulum run small enough to compile and train in seconds on 2 cores; overrides use the
    command line's (flat) setting names. Shrinking settings an algorithm does not have (e.g. planner
    candidates for SHAC) are left out."""
    cfg = OnlineConfig(agent=config_class(algo)(), loop=LoopOptions())
    small = dict(env="toy/pendulum", steps=96, num_envs=2, model_size="tiny", batch_size=16, eval_every=32,
                 eval_episodes=2, seed_steps=32, buffer_size=1000, num_samples=16, num_elites=4, num_pi_trajs=2,
                 progress=False, **(dict(iterations=2) if algo == "tdmpc2" else {}))
    names = flat_fields(cfg)
    base = replace_flat(cfg, **{k: v for k, v in small.items() if k in names})
    return replace_flat(base, **overrides)


@pytest.fixture
def tiny_config():
    return tiny_online_config


def pytest_configure(config):
    """Share compiled XLA programs between tests (and test runs): many tests build the same tiny agent."""
    import os

    import jax

    cache = os.environ.get("MBDPO_TEST_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mbdpo-jax-tests"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


class FixedLengthEnv:
    """obs = [step in episode, 1]; reward 1 per step; every episode ends after `length` steps, by
    termination or by truncation, and restarts at 0 (the final observation [length, 1] is kept)."""

    def __init__(self, length: int, terminate: bool):
        self.length, self.terminate = length, terminate
        self.spec = EnvSpec("test/fixed-length", 2, 1, length, terminates=terminate)

    def reset(self, key):
        z = jnp.zeros(())
        obs = jnp.array([0.0, 1.0])
        return EnvState(None, obs, z, z, z, obs, jnp.zeros((), jnp.int32), z, z, z, z, jnp.zeros((), jnp.int32), key)

    def step(self, s, a):
        count = s.obs[0] + 1
        flag = (count >= self.length).astype(jnp.float32)
        final = jnp.stack([count, 1.0])
        return s.replace(obs=jnp.where(flag > 0, jnp.array([0.0, 1.0]), final), final_obs=final, reward=jnp.ones(()),
                         done=flag * self.terminate, truncation=flag * (1 - self.terminate))


def laptop_trainer(algo: str, env: str, **changes):
    """The trainer `python -m experiments.online <algo> --preset laptop --env <env>` would build (flags:
    `changes`), without a progress bar."""
    from mbdpo_jax.train import presets
    from mbdpo_jax.train.runner import build_trainer

    agent, loop = presets.preset_defaults("laptop", algo)
    cfg = replace_flat(OnlineConfig(agent=agent, loop=loop), env=env, progress=False, **changes)
    return build_trainer(presets.finalize("laptop", cfg))


def train_and_evaluate(trainer, chunks: int, seed: int = 0):
    """`chunks` jitted training chunks from a fresh carry of PRNGKey(seed); returns the final carry and
    the eval return before training and after each chunk."""
    key = jax.random.PRNGKey(seed)
    chunk, evaluate = jax.jit(trainer.train_chunk), jax.jit(trainer.evaluate)
    carry = jax.jit(trainer.init)(key)
    returns = [float(evaluate(carry.agent, jax.random.fold_in(key, 0))["eval_return"])]
    for i in range(chunks):
        carry, _ = chunk(carry)
        returns.append(float(evaluate(carry.agent, jax.random.fold_in(key, i + 1))["eval_return"]))
    return carry, returns
