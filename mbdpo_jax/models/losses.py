"""TD-MPC2's learning objectives as pure functions any agent can call (Hansen et al., 2024, Sec. 3).

    mask = sequence_mask(batch["end"])                       # [H, B]
    total, aux = world_model_loss(model, coefs, params, target_qs, batch, key, gamma)
    loss, aux = prior_loss(model, coefs, pi_params, params, q_scale, zs, mask, task, key)

Batches are time-major sequences of H transitions: obs/next_obs [H, B, O], action [H, B, A],
reward/done/end [H, B] ('end' = termination or truncation), optional task [B].
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mbdpo_jax.models.world_model import WorldModel


@dataclasses.dataclass(frozen=True)
class LossCoefficients:
    """Weights of TD-MPC2's losses; defaults are those of the official code (Hansen et al., 2024)."""

    rho: float = 0.5
    """Per-step weight rho^t of the model and prior losses over the horizon."""
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    entropy_coef: float = 1e-4
    """alpha of the prior loss's entropy term."""
    termination_coef: float = 1.0
    """Weight of the termination BCE (episodic tasks only)."""
    tau: float = 0.01
    """EMA rate of the target Qs and of the running Q scale."""

    def validate(self) -> None:
        """One-line error naming the bad value."""
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("consistency_coef", "reward_coef", "value_coef", "entropy_coef", "termination_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


def discount_from_episode_length(length: int, lo: float = 0.95, hi: float = 0.995) -> float:
    """TD-MPC2's heuristic gamma = clip((T/5 - 1) / (T/5), lo, hi)."""
    frac = length / 5
    return float(min(max((frac - 1) / frac, lo), hi))


def sequence_mask(end: jax.Array) -> jax.Array:
    """m_t = 1 while no episode boundary occurred before step t ([H, B] -> [H, B])."""
    alive = jnp.cumprod(1.0 - end, axis=0)
    return jnp.concatenate([jnp.ones_like(end[:1]), alive[:-1]], axis=0)


def td_targets(model: WorldModel, params: dict, target_qs: Any, batch: dict, key: jax.Array,
               gamma: Any) -> tuple[jax.Array, jax.Array]:
    """(next latents, y_t = r_t + gamma (1 - done_t) min of two target Qs at (z_{t+1}, pi(z_{t+1})))."""
    task = batch.get("task")
    next_z = model.encode(params, batch["next_obs"], task)
    k_pi, k_q = jax.random.split(key)
    a, _ = model.pi(params, next_z, k_pi, task)
    q = model.q_value(params, next_z, a, k_q, task, qs_params=target_qs, reduce="min")
    return next_z, batch["reward"] + gamma * (1.0 - batch["done"]) * q


def world_model_loss(model: WorldModel, coefs: LossCoefficients, params: dict, target_qs: Any, batch: dict,
                     key: jax.Array, gamma: Any) -> tuple[jax.Array, tuple[dict, jax.Array, jax.Array]]:
    """20 * consistency + 0.1 * reward CE + 0.1 * value CE (+ termination BCE on episodic tasks), each
    rho^t weighted and masked after an episode boundary.

    Returns (total, (losses, zs [H+1, B, Z] the dynamics-rolled latents (detached), their mask [H+1, B])).
    """
    two_hot, task, horizon = model.cfg.two_hot, batch.get("task"), batch["action"].shape[0]
    k_td, k_drop = jax.random.split(key)
    next_z, td = jax.lax.stop_gradient(td_targets(model, params, target_qs, batch, k_td, gamma))
    mask = sequence_mask(batch["end"])
    weight = (coefs.rho ** jnp.arange(horizon))[:, None] * mask  # [H, B]

    def roll(z, inputs):
        a_t, target_t = inputs
        z_next = model.next(params, z, a_t, task)
        return z_next, (z, jnp.mean((z_next - target_t) ** 2, -1))

    z0 = model.encode(params, batch["obs"][0], task)
    z_last, (zs, consistency) = jax.lax.scan(roll, z0, (batch["action"], next_z))
    reward_ce = two_hot.cross_entropy(model.reward(params, zs, batch["action"], task), batch["reward"])
    q_logits = model.Q(params, zs, batch["action"], task, dropout_key=k_drop)
    value_ce = two_hot.cross_entropy(q_logits, td[None]).mean(0)
    per_step = lambda x: jnp.sum(weight * x) / (horizon * x.shape[1])
    losses = {
        "consistency_loss": per_step(consistency),
        "reward_loss": per_step(reward_ce),
        "value_loss": per_step(value_ce),
    }
    total = (coefs.consistency_coef * losses["consistency_loss"] + coefs.reward_coef * losses["reward_loss"]
             + coefs.value_coef * losses["value_loss"])
    all_zs = jnp.concatenate([zs, z_last[None]], 0)
    if model.cfg.episodic:
        # Episodic tasks (TD-MPC2's `episodic` option): predict termination from the rolled z_{t+1}.
        logits = model.termination(params, all_zs[1:], task)
        losses["termination_loss"] = per_step(optax.sigmoid_binary_cross_entropy(logits, batch["done"]))
        total = total + coefs.termination_coef * losses["termination_loss"]
    all_mask = jnp.concatenate([mask, mask[-1:] * (1.0 - batch["end"][-1:])], 0)
    return total, (losses, jax.lax.stop_gradient(all_zs), all_mask)


def updated_q_scale(scale: jax.Array, q: jax.Array, tau: float) -> jax.Array:
    """TD-MPC2's RunningScale: EMA of the 5th-95th percentile range of Q, the range clamped to at
    least 1 before the EMA, so S never falls below 1 (small Q ranges are not blown up)."""
    spread = jnp.maximum(jnp.percentile(q, 95) - jnp.percentile(q, 5), 1.0)
    return scale + tau * (spread - scale)


def prior_loss(model: WorldModel, coefs: LossCoefficients, pi_params: dict, params: dict, q_scale: jax.Array,
               zs: jax.Array, mask: jax.Array, task: Any, key: jax.Array) -> tuple[jax.Array, tuple]:
    """Policy prior loss -(alpha * scaled entropy + avg Q / S), rho^t weighted, latents detached.

    As TD-MPC2's code: the entropy term is the scaled entropy (Gaussian log-probability times the
    number of real action dimensions, see `WorldModel.pi`), only Q is divided by the running scale
    S, and the Q heads run with dropout on (train mode). Returns (loss, (updated S, mean entropy)).
    """
    k_pi, k_q, k_drop = jax.random.split(key, 3)
    full = {**params, "pi": pi_params}
    a, aux = model.pi(full, zs, k_pi, task)
    q = model.q_value(jax.lax.stop_gradient(params), zs, a, k_q, task, dropout_key=k_drop)
    q_scale = updated_q_scale(q_scale, jax.lax.stop_gradient(q[0]), coefs.tau)
    rho = (coefs.rho ** jnp.arange(zs.shape[0]))[:, None]
    per_sample = -(coefs.entropy_coef * aux["scaled_entropy"] + q / q_scale)
    loss = jnp.sum(rho * mask * per_sample) / (zs.shape[0] * zs.shape[1])
    return loss, (q_scale, aux["entropy"].mean())
