"""Agents, one module per algorithm, and `make_agent` to build one from an experiment config."""
from __future__ import annotations

from typing import Any

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.planners.mppi import MPPIConfig
from mbdpo_jax.train.config import ALGORITHMS, OnlineConfig


def make_agent(cfg: OnlineConfig, spec: EnvSpec) -> Any:
    """The agent named by cfg.algo, configured from the experiment config."""
    if cfg.algo == "tdmpc2":
        from mbdpo_jax.agents.tdmpc2 import TDMPC2, TDMPC2Config

        planner = MPPIConfig(horizon=cfg.horizon, iterations=cfg.iterations, num_samples=cfg.num_samples,
                             num_elites=cfg.num_elites, num_pi_trajs=cfg.num_pi_trajs, temperature=cfg.temperature)
        return TDMPC2(TDMPC2Config(model_size=cfg.model_size, horizon=cfg.horizon, lr=cfg.lr,
                                   batch_size=cfg.batch_size, planner=planner), spec)
    raise ValueError(f"unknown algorithm {cfg.algo!r}; allowed: {', '.join(ALGORITHMS)}")
