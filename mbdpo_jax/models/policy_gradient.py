"""What the on-policy learners (`agents.ppo`, `agents.da_mdp_ppo`) share: the clipped surrogate of PPO
(Schulman et al., 2017, Eq. 7) with its diagnostics, advantage normalisation, and one clipped Adam step.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def normalized_advantages(adv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(adv - mean) / std over every entry of the minibatch, and that std (+1e-8, no gradient)."""
    scale = jax.lax.stop_gradient(adv.std() + 1e-8)
    return (adv - adv.mean()) / scale, scale


def clipped_surrogate(log_ratio: jax.Array, adv: jax.Array, clip: float) -> tuple[jax.Array, jax.Array, dict]:
    """-mean(min(rho A, clip(rho, 1 - clip, 1 + clip) A)) over every entry, with rho = exp(log_ratio).

    Returns (loss, where the unclipped term is the one taken, i.e. where gradient flows through rho, and
    diagnostics: approx_kl (the k3 estimator mean(rho - 1 - log rho)), clip_fraction, ratio_deviation_max)."""
    ratio = jnp.exp(log_ratio)
    surrogate = ratio * adv
    clipped = jnp.clip(ratio, 1 - clip, 1 + clip) * adv
    active = (surrogate < clipped) | (jnp.abs(ratio - 1.0) <= clip)
    diagnostics = {"approx_kl": jnp.mean(ratio - 1.0 - log_ratio),
                   "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32)),
                   "ratio_deviation_max": jnp.max(jnp.abs(ratio - 1.0))}
    return -jnp.mean(jnp.minimum(surrogate, clipped)), active, diagnostics


def gradient_step(tx: optax.GradientTransformation, loss: Callable[..., tuple[jax.Array, dict]], params: Any,
                  opt: optax.OptState, *args: Any) -> tuple[Any, optax.OptState, dict]:
    """One step of `tx` on loss(params, *args) -> (value, metrics); returns the new params, optimizer
    state and the metrics with the gradient's global norm."""
    grads, metrics = jax.grad(loss, has_aux=True)(params, *args)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, {**metrics, "grad_norm": optax.tree.norm(grads)}
