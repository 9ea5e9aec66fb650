"""Agents, one module per algorithm, and `make_agent` to build one from an experiment config."""
from __future__ import annotations

from typing import Any

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.train.config import ALGORITHMS, AgentOptions


def make_agent(cfg: AgentOptions, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None) -> Any:
    """The agent named by cfg.algo, configured from the experiment config."""
    common = dict(model_size=cfg.model_size, horizon=cfg.horizon, lr=cfg.lr, batch_size=cfg.batch_size,
                  num_tasks=num_tasks)
    if cfg.algo == "tdmpc2":
        from mbdpo_jax.agents.tdmpc2 import TDMPC2, TDMPC2Config
        from mbdpo_jax.planners.mppi import MPPIConfig

        planner = MPPIConfig(horizon=cfg.horizon, iterations=cfg.iterations, num_samples=cfg.num_samples,
                             num_elites=cfg.num_elites, num_pi_trajs=cfg.num_pi_trajs, temperature=cfg.temperature)
        return TDMPC2(TDMPC2Config(planner=planner, **common), spec, action_masks)
    if cfg.algo == "mbdpo":
        from mbdpo_jax.agents.mbdpo import MBDPO, MBDPOConfig
        from mbdpo_jax.planners.mbd import MBDConfig
        from mbdpo_jax.planners.score import ScoreConfig

        planner = MBDConfig(horizon=cfg.horizon, diffusion_steps=cfg.diffusion_steps, beta_start=cfg.beta_start,
                            beta_end=cfg.beta_end, num_samples=cfg.num_samples, num_elites=cfg.num_elites,
                            num_pi_trajs=cfg.num_pi_trajs, temperature=cfg.temperature,
                            exploration_std=cfg.exploration_std)
        return MBDPO(MBDPOConfig(planner=planner, eta=cfg.eta, use_energy=cfg.use_energy,
                                 distill_coef=cfg.distill_coef, use_score_network=cfg.use_score_network,
                                 score_only=cfg.score_only, score=ScoreConfig(mc_samples=cfg.score_samples),
                                 **common), spec, action_masks)
    raise ValueError(f"unknown algorithm {cfg.algo!r}; allowed: {', '.join(ALGORITHMS)}")
