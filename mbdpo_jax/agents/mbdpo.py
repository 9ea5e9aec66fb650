"""MBDPO: policy optimisation as reverse diffusion over searched trajectories in a latent world model.

Everything TD-MPC2 learns (world model, Q ensemble, prior; same losses and coefficients) is
reused; what changes:
  * acting: MPPI is replaced by model-based reverse diffusion (`planners.mbd`) over action
    sequences, targeting exp(J / lambda) with
    J = sum_t gamma^t [r_hat + eta * F_norm(z_t, a_t)] + gamma^H * Q(z_H, pi(z_H));
  * an implicit energy F(z, a) (`planners.energy`), a real-vs-generated action classifier, anchors
    the search to actions seen in the data (switch off with use_energy=False);
  * the prior is also distilled towards the planner's actions (plan -> distill -> plan from the new
    prior: the G-iteration of REFERENCE.md's incoherence section), weight `distill_coef`.
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


@dataclasses.dataclass(frozen=True)
class MBDPOConfig(TDMPC2Config):
    """TD-MPC2's settings plus the diffusion planner, the energy and prior distillation."""

    planner: mbd.MBDConfig = mbd.MBDConfig()
    eta: float = 0.01
    use_energy: bool = True
    energy: EnergyConfig = EnergyConfig()
    distill_coef: float = 0.1  # ours: REFERENCE.md gives no value


@struct.dataclass
class MBDPOState:
    core: TDMPC2State
    energy: EnergyState


class MBDPO(TDMPC2):
    """MBDPO agent; same pure-function interface as TDMPC2."""

    def __init__(self, cfg: MBDPOConfig, spec: EnvSpec, action_masks: Any = None):
        super().__init__(cfg, spec, action_masks)
        self.energy = Energy(cfg.energy, self.model.cfg.latent_dim, spec.action_size, self.model.cfg.mlp_dim)

    def init(self, key: jax.Array) -> MBDPOState:
        k_core, k_energy = jax.random.split(key)
        return MBDPOState(super().init(k_core), self.energy.init(k_energy))

    def core_state(self, state: MBDPOState) -> TDMPC2State:
        return state.core

    def step_bonus(self, state: MBDPOState):
        """Per-step eta * F_norm(z, a) added to the planning objective (None when disabled)."""
        if not self.cfg.use_energy or self.cfg.eta == 0:
            return None
        return lambda z, a: self.cfg.eta * self.energy.normalized(state.energy, z, a)

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
        """TD-MPC2's update (with distillation), then one step of the energy classifier."""
        k_core, k_pi, k_energy = jax.random.split(key, 3)
        core, metrics = super().update(state.core, batch, k_core)
        if not self.cfg.use_energy:
            return MBDPOState(core, state.energy), metrics
        task = batch.get("task")
        z = jax.lax.stop_gradient(self.model.encode(core.params, batch["obs"], task))
        prior_action, _ = self.model.pi(core.params, z, k_pi, task)
        energy, energy_metrics = self.energy.update(state.energy, z, batch["action"], prior_action,
                                                    sequence_mask(batch["end"]), k_energy)
        return MBDPOState(core, energy), {**metrics, **energy_metrics}
