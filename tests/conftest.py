"""Shared fixtures: small, fast configurations for CPU tests."""
import pytest

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
