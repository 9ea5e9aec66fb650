"""TD-MPC2 (Hansen et al., 2024): a latent world model learned with TD-MPC2's losses, MPPI planning.

    agent = TDMPC2(TDMPC2Config(), spec)
    state = agent.init(key)
    action, warm_start, aux = agent.act(state, obs, warm_start, key, eval_mode)   # one env; vmap it
    state, metrics = agent.update(state, batch, key)

The pieces: `models.learner.LatentLearner` (world model, losses, optimisers), `planners.latent`
(acting from an observation) and `planners.mppi`. It follows `agents.protocols.OffPolicyAgent`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mbdpo_jax.analysis.deep_incoherence import IncoherenceConfig
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models.learner import LatentLearner, LearnerConfig, LearnerState
from mbdpo_jax.planners import latent, mppi


@dataclasses.dataclass(frozen=True)
class TDMPC2Config:
    """TD-MPC2's settings; defaults are the published ones."""

    learner: LearnerConfig = LearnerConfig()
    planner: mppi.MPPIConfig = mppi.MPPIConfig()
    incoherence: IncoherenceConfig = IncoherenceConfig()
    """The prior's sampled incoherence against the Q ensemble, logged at evaluation (ours)."""

    def validate(self) -> None:
        self.learner.validate()
        self.planner.validate()
        self.incoherence.validate()


class TDMPC2:
    """TD-MPC2 agent: static config + env spec; all methods are pure."""

    replay_extras: dict = {}

    def __init__(self, cfg: TDMPC2Config, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        self.cfg, self.spec = cfg, spec
        self.learner = LatentLearner(cfg.learner, spec, num_tasks, action_masks)
        self.model = self.learner.model
        self.horizon, self.batch_size = cfg.learner.horizon, cfg.learner.batch_size

    def init(self, key: jax.Array) -> LearnerState:
        return self.learner.init(key)

    def initial_act_carry(self) -> jax.Array:
        """Warm start of one env's planner: a [H, A] mean."""
        return jnp.zeros((self.horizon, self.spec.action_size))

    def next_act_carry(self, mean: jax.Array, episode_started: jax.Array) -> jax.Array:
        return mppi.shift_warm_start(mean, episode_started)

    def act(self, state: LearnerState, obs: jax.Array, warm_start: jax.Array, key: jax.Array,
            eval_mode: bool = False, task: Any = None) -> tuple[jax.Array, jax.Array, dict]:
        """MPPI from one observation; see `planners.latent.plan_from_observation` for aux (in eval mode
        it includes the prior's sampled 'incoherence', `planners.latent.prior_incoherence`)."""
        planner = lambda k, value_fn, prior, warm, ev: mppi.plan(k, value_fn, prior, warm, self.cfg.planner, ev)
        return latent.plan_from_observation(self.model, state.params, obs, warm_start, key, planner,
                                            self.cfg.planner.num_pi_trajs, self.learner.discount_of(task),
                                            eval_mode, task, incoherence=self.cfg.incoherence)

    def update(self, state: LearnerState, batch: dict, key: jax.Array) -> tuple[LearnerState, dict]:
        """TD-MPC2's update: world model, prior, target Qs."""
        state, metrics, _ = self.learner.update(state, batch, key)
        return state, metrics
