"""MBDPO: policy optimisation as reverse diffusion over searched trajectories in a latent world model.

Everything TD-MPC2 learns (world model, Q ensemble, prior; same losses and coefficients) is
reused; what changes:
  * acting: MPPI is replaced by model-based reverse diffusion (`planners.mbd`) over action
    sequences, targeting exp(J / lambda) with
    J = sum_t gamma^t [r_hat + eta * F_norm(z_t, a_t)] + gamma^H * Q(z_H, pi(z_H));
  * an implicit energy F(z, a) (`planners.energy`), a real-vs-generated action classifier, anchors
    the search to actions seen in the data (switch off with use_energy=False);
  * the prior is also distilled towards the planner's actions (plan -> distill -> plan from the new
    prior: the G-iteration of REFERENCE.md's incoherence section), weight `distill_coef`;
  * optionally (use_score_network) an amortised score network s_phi(z, x_k, k) (`planners.score`)
    is trained on Monte-Carlo score targets after each update; with score_only it replaces the
    candidate rollouts in acting (`mbd.plan_score_only`). Without score_only the network only trains
    (its loss shows whether score-only acting is safe) and acting keeps the Monte-Carlo planner:
    MBDPO's code, with the network on, also evaluates all candidates but then discards their score
    for the network's, which gives the score-only plan at the full Monte-Carlo cost.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.agents.tdmpc2 import TDMPC2, TDMPC2Config, TDMPC2State, sequence_mask
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.planners import mbd
from mbdpo_jax.planners.energy import Energy, EnergyConfig, EnergyState
from mbdpo_jax.planners.score import ScoreConfig, ScoreModel, ScoreState


@dataclasses.dataclass(frozen=True)
class MBDPOConfig(TDMPC2Config):
    """TD-MPC2's settings plus the diffusion planner, the energy and prior distillation."""

    planner: mbd.MBDConfig = mbd.MBDConfig()
    eta: float = 0.01
    use_energy: bool = True
    energy: EnergyConfig = EnergyConfig()
    distill_coef: float = 0.1  # ours: REFERENCE.md gives no value
    use_score_network: bool = False
    score_only: bool = False
    score: ScoreConfig = ScoreConfig()

    def validate(self) -> None:
        super().validate()
        if self.score_only and not self.use_score_network:
            raise ValueError("score_only=True needs use_score_network=True (score-only planning uses the "
                             "trained score network)")
        if self.use_score_network:
            self.score.validate()


@struct.dataclass
class MBDPOState:
    core: TDMPC2State
    energy: EnergyState


@struct.dataclass
class MBDPOScoreState(MBDPOState):
    """MBDPOState plus s_phi (use_score_network); a separate class so that default MBDPO states, and
    the checkpoints already written from them, keep their layout."""

    score: ScoreState


class MBDPO(TDMPC2):
    """MBDPO agent; same pure-function interface as TDMPC2."""

    def __init__(self, cfg: MBDPOConfig, spec: EnvSpec, action_masks: Any = None):
        super().__init__(cfg, spec, action_masks)
        self.energy = Energy(cfg.energy, self.model.cfg.latent_dim, spec.action_size, self.model.cfg.mlp_dim)
        self.score = ScoreModel(cfg.score, cfg.planner, self.model.cfg.latent_dim, spec.action_size,
                                self.model.cfg.mlp_dim) if cfg.use_score_network else None

    def init(self, key: jax.Array) -> MBDPOState:
        k_core, k_energy = jax.random.split(key)
        core, energy = super().init(k_core), self.energy.init(k_energy)
        if self.score is None:
            return MBDPOState(core, energy)
        return MBDPOScoreState(core, energy, self.score.init(jax.random.fold_in(key, 2)))

    def core_state(self, state: MBDPOState) -> TDMPC2State:
        return state.core

    def step_bonus(self, state: MBDPOState):
        """Per-step eta * F_norm(z, a) added to the planning objective (None when disabled)."""
        if not self.cfg.use_energy or self.cfg.eta == 0:
            return None
        return lambda z, a: self.cfg.eta * self.energy.normalized(state.energy, z, a)

    def act(self, state: MBDPOState, obs: jax.Array, plan_state: jax.Array, key: jax.Array,
            eval_mode: bool = False, task: Any = None) -> tuple[jax.Array, jax.Array, dict]:
        """TD-MPC2's act with the diffusion planner; with score_only, reverse diffusion on s_phi alone.

        Score-only planning happens here rather than in `run_planner` because it needs the latent z0
        and s_phi's parameters, which that hook does not receive. Its aux 'prior_divergence' is NaN:
        there is no sample-based planner distribution to compare the prior with.
        """
        if not self.cfg.score_only:
            return super().act(state, obs, plan_state, key, eval_mode, task)
        z = self.model.encode(state.core.params, obs, task)
        score_fn = lambda x, k: self.score.score(state.score.params, z, x, k)
        action, plan, aux = mbd.plan_score_only(key, score_fn, plan_state, self.cfg.planner, eval_mode)
        mask = self.model.action_mask(task)
        action, aux["plan_action"] = action * mask, aux["plan_action"] * mask
        aux["prior_divergence"] = jnp.full((), jnp.nan, action.dtype)
        return action, plan, aux

    def run_planner(self, key, value_fn, prior, plan_state, eval_mode):
        """Reverse diffusion instead of MPPI; plan_state is the shifted previous plan x_0."""
        return mbd.plan(key, value_fn, prior, plan_state, self.cfg.planner, eval_mode)

    def pi_loss(self, pi_params, params, q_scale, zs, mask, batch, key):
        """TD-MPC2's prior loss plus distillation: - distill_coef * rho^t-weighted log pi(planner action)."""
        loss, aux = super().pi_loss(pi_params, params, q_scale, zs, mask, batch, key)
        if self.cfg.distill_coef == 0:
            return loss, aux
        log_pi = self.model.pi_log_prob({**params, "pi": pi_params}, zs[:-1], batch["plan_action"], batch.get("task"))
        rho = (self.cfg.rho ** jnp.arange(log_pi.shape[0]))[:, None]
        weight = rho * mask[:-1] * batch["planned"]
        distill = -jnp.sum(weight * log_pi) / jnp.maximum(jnp.sum(weight), 1.0)
        return loss + self.cfg.distill_coef * distill, aux

    def update(self, state: MBDPOState, batch: dict, key: jax.Array) -> tuple[MBDPOState, dict]:
        """TD-MPC2's update (with distillation), one step of the energy classifier, then (if on) one
        step of the score network against targets computed with the updated model and energy."""
        k_core, k_pi, k_energy = jax.random.split(key, 3)
        core, metrics = super().update(state.core, batch, k_core)
        energy = state.energy
        if self.cfg.use_energy:
            task = batch.get("task")
            z = jax.lax.stop_gradient(self.model.encode(core.params, batch["obs"], task))
            prior_action, _ = self.model.pi(core.params, z, k_pi, task)
            energy, energy_metrics = self.energy.update(state.energy, z, batch["action"], prior_action,
                                                        sequence_mask(batch["end"]), k_energy)
            metrics = {**metrics, **energy_metrics}
        new = state.replace(core=core, energy=energy)
        if not self.cfg.use_score_network:
            return new, metrics
        score, score_metrics = self.update_score(new, batch, jax.random.fold_in(key, 3))
        return new.replace(score=score), {**metrics, **score_metrics}

    def update_score(self, state: MBDPOScoreState, batch: dict, key: jax.Array) -> tuple[ScoreState, dict]:
        """One step of s_phi on Monte-Carlo targets at forward-noised replay action sequences.

        Pairs: z = stop-grad latent of each sequence's first observation, x0 = its H actions, k uniform
        over 1..K, x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps; targets use the planning objective J
        (with the energy bonus when on) and the first `score.batch` sequences of the batch.
        """
        n = min(self.cfg.score.batch, batch["obs"].shape[1])
        task = None if batch.get("task") is None else batch["task"][:n]
        z = jax.lax.stop_gradient(self.model.encode(state.core.params, batch["obs"][0, :n], task))
        x0 = jnp.swapaxes(batch["action"][:, :n], 0, 1)
        k_pairs, k_mc, k_value = jax.random.split(key, 3)
        steps, x_k = self.score.training_pairs(k_pairs, x0)
        value_fn = lambda cond: self.planning_objective(state, cond[0], k_value, cond[1])
        x0_bar = self.score.targets(k_mc, value_fn, (z, task), x_k, steps)
        return self.score.update(state.score, z, x_k, steps, x0_bar)
