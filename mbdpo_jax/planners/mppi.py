"""MPPI (TD-MPC2's variant): iterative elite re-fitting of a Gaussian over action sequences.

`plan` is model-agnostic: the caller closes over its world model in `value_fn` (action
sequences [N, H, A] -> returns [N]) and passes sequences proposed by its policy prior. Everything
has static shapes so it jits, vmaps over envs and sits inside `lax.scan`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MPPIConfig:
    """Published TD-MPC2 settings as defaults."""

    iterations: int = 6
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    temperature: float = 0.5
    min_std: float = 0.05
    max_std: float = 2.0

    def validate(self) -> None:
        checks = {
            "iterations": self.iterations >= 1,
            "num_samples": self.num_samples >= 1,
            "num_elites": 1 <= self.num_elites <= self.num_samples,
            "num_pi_trajs": 0 <= self.num_pi_trajs < self.num_samples,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid planner setting {name}={getattr(self, name)!r} "
                                 f"(need iterations >= 1, 1 <= num_elites <= num_samples, "
                                 f"0 <= num_pi_trajs < num_samples)")


def elite_weights(values: jax.Array, temperature: float) -> jax.Array:
    """Softmax weights exp(temperature * (v - max v)) normalised over the elites."""
    return jax.nn.softmax(temperature * (values - values.max()))


def plan(
    key: jax.Array,
    value_fn: Callable[[jax.Array], jax.Array],
    prior_actions: jax.Array,
    prev_mean: jax.Array,
    cfg: MPPIConfig,
    eval_mode: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """One MPPI planning call.

    Args:
      prior_actions: [num_pi_trajs, H, A] sequences from the policy prior (first candidates).
      prev_mean: [H, A] warm start, already shifted by one step by the caller (zeros at episode start).
    Returns:
      (first action [A], final mean [H, A] for the next warm start, aux with 'std', 'value',
       'plan_action' (the executed action before exploration noise), 'elites' and their 'weights').
    """
    horizon, action_size = prev_mean.shape
    num_random = cfg.num_samples - cfg.num_pi_trajs
    std0 = jnp.full((horizon, action_size), cfg.max_std)

    def refit(carry, iter_key):
        mean, std, _, _ = carry
        noise = jax.random.normal(iter_key, (num_random, horizon, action_size))
        sampled = jnp.clip(mean + std * noise, -1.0, 1.0)
        actions = jnp.concatenate([prior_actions, sampled], axis=0)
        values = jnp.nan_to_num(value_fn(actions), nan=-1e9)
        elite_values, elite_idx = jax.lax.top_k(values, cfg.num_elites)
        elites = actions[elite_idx]
        w = elite_weights(elite_values, cfg.temperature)[:, None, None]
        new_mean = jnp.sum(w * elites, axis=0)
        new_std = jnp.sqrt(jnp.sum(w * (elites - new_mean) ** 2, axis=0))
        new_std = jnp.clip(new_std, cfg.min_std, cfg.max_std)
        return (new_mean, new_std, elites, elite_values), None

    k_iter, k_pick, k_noise = jax.random.split(key, 3)
    init = (prev_mean, std0, jnp.zeros((cfg.num_elites, horizon, action_size)), jnp.zeros(cfg.num_elites))
    (mean, std, elites, elite_values), _ = jax.lax.scan(refit, init, jax.random.split(k_iter, cfg.iterations))
    # TD-MPC2 executes one elite drawn by its weight, not the mean.
    pick = jax.random.categorical(k_pick, cfg.temperature * (elite_values - elite_values.max()))
    action = plan_action = elites[pick, 0]
    if not eval_mode:
        action = action + std[0] * jax.random.normal(k_noise, action.shape)
    aux = {"std": std, "value": elite_values[pick], "plan_action": plan_action, "elites": elites,
           "weights": elite_weights(elite_values, cfg.temperature)}
    return jnp.clip(action, -1.0, 1.0), mean, aux


def shift_warm_start(mean: jax.Array, reset: jax.Array) -> jax.Array:
    """Shift a [H, A] plan one step forward (new last step zero) and zero it at episode starts."""
    shifted = jnp.concatenate([mean[1:], jnp.zeros_like(mean[:1])], axis=0)
    return jnp.where(reset, jnp.zeros_like(mean), shifted)
