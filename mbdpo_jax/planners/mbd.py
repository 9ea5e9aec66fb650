"""Model-based reverse diffusion over action sequences (MBDPO's planner).

MBDPO (arXiv 2605.26282) plans with the Monte-Carlo score estimate of model-based diffusion
(Pan et al., "Model-Based Diffusion for Trajectory Optimization", NeurIPS 2024). Target:
p*(x) proportional to exp(J(x) / lambda) over action sequences x in [-1, 1]^{H x A}.

Schedule: K = `diffusion_steps` linear betas, alpha_k = 1 - beta_k, abar_k = prod_{i<=k} alpha_i, all
indexed k = 0..K-1. The chain starts at x_{K-1} = sqrt(abar_{K-1}) * (previous plan shifted by one
step) and runs the K - 1 reverse steps k = K-1, ..., 1 (abar_0 is never used), each k -> k-1:

    x0_i  = clip(x_k / sqrt(abar_k) + sqrt((1 - abar_k) / abar_k) * eps_i, -1, 1),  i = 1..N
            (the first `num_pi_trajs` replaced by fresh policy-prior sequences)
    s_i   = (J_i - mean J) / std J   (over all N, unbiased std; std < 1e-4 counts as 1)
    w     = softmax over the top-`num_elites` of s_i / lambda
    x0bar = sum_i w_i x0_i
    score = (-x_k + sqrt(abar_k) x0bar) / (1 - abar_k)
    x_{k-1} = (x_k + (1 - abar_k) score) / sqrt(alpha_k)

and the plan is x_0 clipped to [-1, 1]. `value_fn` is J with a key (a fresh one every step), closed
over the world model by the caller, so the planner is model-agnostic; everything has static shapes
(top-k with static k) so it vmaps over envs inside the jitted training chunk.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mbdpo_jax.planners.mppi import (PriorFn, ValueFn, candidate_rules, check_settings, finite_or_zero, first_action,
                                     prior_sequences)


@dataclasses.dataclass(frozen=True)
class MBDConfig:
    """Published MBDPO settings as defaults (the horizon belongs to the agent)."""

    diffusion_steps: int = 20  # K: the schedule's length; the chain runs K - 1 reverse steps
    beta_start: float = 1e-4
    beta_end: float = 1e-2
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    temperature: float = 0.5  # lambda
    exploration_std: float = 0.05

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad setting and its allowed range."""
        check_settings("diffusion planner", self, [
            ("diffusion_steps", self.diffusion_steps >= 2, "diffusion_steps >= 2 (K - 1 reverse steps)"),
            ("beta_start", 0 < self.beta_start <= self.beta_end, f"0 < beta_start <= beta_end (= {self.beta_end})"),
            ("beta_end", self.beta_end < 1, "beta_end < 1"),
            *candidate_rules(self),
            ("exploration_std", self.exploration_std >= 0, "exploration_std >= 0"),
        ])


def schedule(cfg: MBDConfig) -> tuple[jax.Array, jax.Array]:
    """(alpha_k, abar_k) for k = 0..K-1 as arrays of length K."""
    betas = jnp.linspace(cfg.beta_start, cfg.beta_end, cfg.diffusion_steps)
    alphas = 1.0 - betas
    return alphas, jnp.cumprod(alphas)


def reverse_steps(cfg: MBDConfig) -> np.ndarray:
    """The schedule indices of the reverse steps in the order they run: K-1, K-2, ..., 1."""
    return np.arange(cfg.diffusion_steps - 1, 0, -1)


def standardise(values: jax.Array) -> jax.Array:
    """(J - mean J) / std J over all candidates, unbiased std, a std below 1e-4 (or undefined) as 1."""
    std = jnp.std(values, ddof=1)
    std = jnp.where(std >= 1e-4, std, jnp.ones_like(std))
    return (values - values.mean()) / std


def elite_weights(values: jax.Array, num_elites: int, temperature: float) -> tuple[jax.Array, jax.Array]:
    """(weights over the elites, elite indices): softmax of the top-k standardised values / temperature."""
    top, idx = jax.lax.top_k(standardise(values), num_elites)
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
    eps = jax.random.normal(key, (num_random,) + x_k.shape, x_k.dtype)
    noisy = jnp.clip(x_k / jnp.sqrt(abar_k) + jnp.sqrt((1.0 - abar_k) / abar_k) * eps, -1.0, 1.0)
    return jnp.concatenate([prior_actions, noisy], axis=0)


def initial_state(warm_start: jax.Array, cfg: MBDConfig) -> jax.Array:
    """x_{K-1} = sqrt(abar_{K-1}) * warm start: where both `plan` and `plan_score_only` begin."""
    return jnp.sqrt(schedule(cfg)[1][-1]) * warm_start


def plan(
    key: jax.Array,
    value_fn: ValueFn,
    prior_fn: PriorFn,
    warm_start: jax.Array,
    cfg: MBDConfig,
    eval_mode: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Run the K - 1 reverse steps (MBDPO's planner; see the module docstring).

    At every step the policy prior is sampled afresh (`prior_fn` with a new key) for the first
    `num_pi_trajs` candidates and `value_fn` gets a new key; non-finite values count as 0.

    Args:
      value_fn: (action sequences [N, H, A], key) -> J [N].
      prior_fn: key -> [num_pi_trajs, H, A] policy-prior sequences (not called when 0).
      warm_start: [H, A] previous plan already shifted by one step (zeros at episode start).
    Returns:
      (first action [A] (+ N(0, exploration_std^2) in training, clipped), the plan x_0 [H, A],
       aux with 'plan_action' (before exploration noise), 'value' (weighted J of the last step's
       elites), 'elites' [num_elites, H, A] and 'weights' [num_elites] of the last step: the
       planner's sample-based action distribution).
    """
    alphas, abars = schedule(cfg)
    steps = reverse_steps(cfg)

    def step(x_k, inputs):
        alpha_k, abar_k, step_key = inputs
        k_eps, k_prior, k_value = jax.random.split(step_key, 3)
        prior = prior_sequences(prior_fn, k_prior, cfg.num_pi_trajs, x_k)
        candidates = propose(k_eps, x_k, abar_k, prior, cfg.num_samples)
        values = finite_or_zero(value_fn(candidates, k_value))
        x_prev, _, weights, idx = reverse_step(x_k, candidates, values, alpha_k, abar_k, cfg)
        return x_prev, (candidates[idx], weights, jnp.sum(weights * values[idx]))

    k_steps, k_noise = jax.random.split(key)
    inputs = (alphas[steps], abars[steps], jax.random.split(k_steps, len(steps)))
    x_0, (elites, weights, values) = jax.lax.scan(step, initial_state(warm_start, cfg), inputs)
    x_0 = jnp.clip(x_0, -1.0, 1.0)
    action, plan_action = first_action(k_noise, x_0, cfg.exploration_std, eval_mode)
    aux = {"value": values[-1], "elites": elites[-1], "weights": weights[-1], "plan_action": plan_action}
    return action, x_0, aux


def plan_score_only(
    key: jax.Array,
    score_fn: Callable[[jax.Array, jax.Array], jax.Array],
    warm_start: jax.Array,
    cfg: MBDConfig,
    eval_mode: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The same K - 1 reverse steps driven by a learned score alone: no candidates, no evaluations of J.

    x_{k-1} = (x_k + (1 - abar_k) * score_fn(x_k, k)) / sqrt(alpha_k) for k = K-1, ..., 1 from the
    same x_{K-1} as `plan` (MBDPO's amortised score network, off by default); the plan x_0 is clipped
    to [-1, 1] and its first action executed as in `plan`.

    Args:
      score_fn: (x_k [H, A], integer schedule index k in 1..K-1) -> score [H, A] (e.g. s_phi(z0, x_k, k)).
      warm_start: [H, A] previous plan already shifted by one step.
    Returns:
      Same structure as `plan`. There is no sample-based action distribution in this mode: 'elites'
      is the plan itself as a single elite ([1, H, A]) with 'weights' [1.0] (a point mass), and
      'value' is NaN because J is never evaluated.
    """
    alphas, abars = schedule(cfg)
    steps = reverse_steps(cfg)

    def step(x_k, inputs):
        k, alpha_k, abar_k = inputs
        return (x_k + (1.0 - abar_k) * score_fn(x_k, k)) / jnp.sqrt(alpha_k), None

    inputs = (jnp.asarray(steps, jnp.int32), alphas[steps], abars[steps])
    x_0, _ = jax.lax.scan(step, initial_state(warm_start, cfg), inputs)
    x_0 = jnp.clip(x_0, -1.0, 1.0)
    action, plan_action = first_action(key, x_0, cfg.exploration_std, eval_mode)
    aux = {"value": jnp.full((), jnp.nan, x_0.dtype), "elites": x_0[None], "weights": jnp.ones((1,), x_0.dtype),
           "plan_action": plan_action}
    return action, x_0, aux
