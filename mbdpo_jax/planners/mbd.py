"""Model-based reverse diffusion over action sequences (MBDPO's planner).

Target: p*(x) proportional to exp(J(x) / lambda) over action sequences x in [-1, 1]^{H x A}.
With a linear beta schedule (alpha_k = 1 - beta_k, abar_k = prod_{i<=k} alpha_i), each reverse
step k -> k-1 (REFERENCE.md, MBDPO):

    x0_i  = clip(x_k / sqrt(abar_k) + sqrt((1 - abar_k) / abar_k) * eps_i, -1, 1),  i = 1..N
            (the first `num_pi_trajs` candidates replaced by policy-prior rollouts)
    w     = softmax over the top-`num_elites` of (J_i - mean J) / std J / lambda
    x0bar = sum_i w_i x0_i
    score = (-x_k + sqrt(abar_k) x0bar) / (1 - abar_k)
    x_{k-1} = (x_k + (1 - abar_k) score) / sqrt(alpha_k)

The chain starts from x_K = sqrt(abar_K) * (previous plan shifted by one step). `value_fn` is J,
closed over the world model by the caller, so the planner itself is model-agnostic; everything has
static shapes (top-k with static k) so it vmaps over envs inside the jitted training chunk.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MBDConfig:
    """Published MBDPO settings as defaults."""

    diffusion_steps: int = 20
    beta_start: float = 1e-4
    beta_end: float = 1e-2
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    temperature: float = 0.5  # lambda
    exploration_std: float = 0.05

    def validate(self) -> None:
        checks = {
            "diffusion_steps": self.diffusion_steps >= 1,
            "num_samples": self.num_samples >= 1,
            "num_elites": 1 <= self.num_elites <= self.num_samples,
            "num_pi_trajs": 0 <= self.num_pi_trajs < self.num_samples,
            "temperature": self.temperature > 0,
            "beta_start": 0 < self.beta_start <= self.beta_end < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"invalid diffusion planner setting {name}={getattr(self, name)!r} (need "
                    f"diffusion_steps >= 1, 1 <= num_elites <= num_samples, 0 <= num_pi_trajs < num_samples, "
                    f"temperature > 0, 0 < beta_start <= beta_end < 1)")


def schedule(cfg: MBDConfig) -> tuple[jax.Array, jax.Array]:
    """(alpha_k, abar_k) for k = 1..K as arrays of length K (index k-1)."""
    betas = jnp.linspace(cfg.beta_start, cfg.beta_end, cfg.diffusion_steps)
    alphas = 1.0 - betas
    return alphas, jnp.cumprod(alphas)


def elite_weights(values: jax.Array, num_elites: int, temperature: float) -> tuple[jax.Array, jax.Array]:
    """(weights over the elites, elite indices): softmax of standardised values / temperature."""
    standardised = (values - values.mean()) / (values.std() + 1e-6)
    top, idx = jax.lax.top_k(standardised, num_elites)
    return jax.nn.softmax(top / temperature), idx


def reverse_step(x_k: jax.Array, candidates_x0: jax.Array, values: jax.Array, alpha_k: jax.Array,
                 abar_k: jax.Array, cfg: MBDConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One k -> k-1 update from evaluated candidates; returns (x_{k-1}, x0bar, elite weights, elite idx)."""
    weights, idx = elite_weights(values, cfg.num_elites, cfg.temperature)
    x0_bar = jnp.tensordot(weights, candidates_x0[idx], axes=1)
    score = (-x_k + jnp.sqrt(abar_k) * x0_bar) / (1.0 - abar_k)
    x_prev = (x_k + (1.0 - abar_k) * score) / jnp.sqrt(alpha_k)
    return x_prev, x0_bar, weights, idx


def propose(key: jax.Array, x_k: jax.Array, abar_k: jax.Array, prior_actions: jax.Array, num_samples: int) -> jax.Array:
    """Candidates x0_i drawn around x_k / sqrt(abar_k); the first ones are the prior's sequences."""
    num_random = num_samples - prior_actions.shape[0]
    eps = jax.random.normal(key, (num_random,) + x_k.shape)
    noisy = jnp.clip(x_k / jnp.sqrt(abar_k) + jnp.sqrt((1.0 - abar_k) / abar_k) * eps, -1.0, 1.0)
    return jnp.concatenate([prior_actions, noisy], axis=0)


def plan(
    key: jax.Array,
    value_fn: Callable[[jax.Array], jax.Array],
    prior_actions: jax.Array,
    warm_start: jax.Array,
    cfg: MBDConfig,
    eval_mode: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Run the K-step reverse diffusion.

    Args:
      value_fn: action sequences [N, H, A] -> J [N].
      prior_actions: [num_pi_trajs, H, A] policy-prior sequences (reused at every step).
      warm_start: [H, A] previous plan already shifted by one step (zeros at episode start).
    Returns:
      (first action [A], the plan x_0 [H, A], aux with 'plan_action' (before exploration noise),
       'value' (weighted J of the last step's elites),
       'elites' [num_elites, H, A] and 'weights' [num_elites] of the last step: the planner's
       sample-based action distribution).
    """
    alphas, abars = schedule(cfg)
    x_K = jnp.sqrt(abars[-1]) * warm_start

    def step(x_k, inputs):
        k_key, alpha_k, abar_k = inputs
        candidates = propose(k_key, x_k, abar_k, prior_actions, cfg.num_samples)
        values = jnp.nan_to_num(value_fn(candidates), nan=-1e9)
        x_prev, _, weights, idx = reverse_step(x_k, candidates, values, alpha_k, abar_k, cfg)
        return x_prev, (candidates[idx], weights, jnp.sum(weights * values[idx]))

    k_steps, k_noise = jax.random.split(key)
    keys = jax.random.split(k_steps, cfg.diffusion_steps)
    # Reverse order: k = K, ..., 1.
    x_0, (elites, weights, values) = jax.lax.scan(step, x_K, (keys, alphas, abars), reverse=True)
    action = plan_action = x_0[0]
    if not eval_mode:
        action = action + cfg.exploration_std * jax.random.normal(k_noise, action.shape)
    aux = {"value": values[0], "elites": elites[0], "weights": weights[0], "plan_action": plan_action}
    return jnp.clip(action, -1.0, 1.0), x_0, aux


def plan_score_only(
    key: jax.Array,
    score_fn: Callable[[jax.Array, jax.Array], jax.Array],
    warm_start: jax.Array,
    cfg: MBDConfig,
    eval_mode: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The K-step reverse diffusion driven by a learned score alone: no candidates, no evaluations of J.

    x_{k-1} = (x_k + (1 - abar_k) * score_fn(x_k, k)) / sqrt(alpha_k), from the same warm start as
    `plan`; the final plan is clipped to [-1, 1] and exploration noise is added as in `plan`.

    Args:
      score_fn: (x_k [H, A], integer step k in 1..K) -> score [H, A] (e.g. s_phi(z0, x_k, k)).
      warm_start: [H, A] previous plan already shifted by one step.
    Returns:
      Same structure as `plan`. There is no sample-based action distribution in this mode: 'elites'
      is the plan itself as a single elite ([1, H, A]) with 'weights' [1.0] (a point mass), and
      'value' is NaN because J is never evaluated.
    """
    alphas, abars = schedule(cfg)
    steps = jnp.arange(1, cfg.diffusion_steps + 1)

    def step(x_k, inputs):
        k, alpha_k, abar_k = inputs
        return (x_k + (1.0 - abar_k) * score_fn(x_k, k)) / jnp.sqrt(alpha_k), None

    x_K = jnp.sqrt(abars[-1]) * warm_start
    x_0, _ = jax.lax.scan(step, x_K, (steps, alphas, abars), reverse=True)
    x_0 = jnp.clip(x_0, -1.0, 1.0)
    action = plan_action = x_0[0]
    if not eval_mode:
        action = action + cfg.exploration_std * jax.random.normal(key, action.shape)
    aux = {"value": jnp.full((), jnp.nan, x_0.dtype), "elites": x_0[None], "weights": jnp.ones((1,), x_0.dtype),
           "plan_action": plan_action}
    return jnp.clip(action, -1.0, 1.0), x_0, aux
