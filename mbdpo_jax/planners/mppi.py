"""MPPI (TD-MPC2's variant): iterative elite re-fitting of a Gaussian over action sequences.

TD-MPC2 (Hansen, Su and Wang, ICLR 2024), "Model predictive control with a policy prior", after
TD-MPC (Hansen, Wang and Su, ICML 2022, Alg. 1). `plan` is model-agnostic: the caller closes over its
world model in `value_fn` (action sequences [N, H, A] and a key -> returns [N]) and in `prior_fn`
(a key -> [num_pi_trajs, H, A] sequences of the policy prior rolled through the model). The horizon
H is the warm start's first dimension. Everything has static shapes so it jits, vmaps over envs and
sits inside `lax.scan`.

The last part of this module holds what both planners (this one and `planners.mbd`) share: the
non-finite guard on values, the policy-prior call, executing the first action, config checks.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

ValueFn = Callable[[jax.Array, jax.Array], jax.Array]  # (actions [N, H, A], key) -> J [N]
PriorFn = Callable[[jax.Array], jax.Array]  # key -> [num_pi_trajs, H, A]


@dataclasses.dataclass(frozen=True)
class MPPIConfig:
    """Published TD-MPC2 settings as defaults (the horizon belongs to the agent)."""

    iterations: int = 6  # plus 2 for action spaces of 20 or more dimensions (see `num_iterations`)
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    temperature: float = 0.5
    min_std: float = 0.05
    max_std: float = 2.0

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad setting and its allowed range."""
        check_settings("MPPI planner", self, [
            ("iterations", self.iterations >= 1, "iterations >= 1"),
            *candidate_rules(self),
            ("min_std", 0 < self.min_std <= self.max_std, f"0 < min_std <= max_std (= {self.max_std})"),
        ])


def num_iterations(cfg: MPPIConfig, action_size: int) -> int:
    """cfg.iterations, plus 2 when the action has 20 or more dimensions (TD-MPC2's heuristic)."""
    return cfg.iterations + (2 if action_size >= 20 else 0)


def elite_weights(values: jax.Array, temperature: float) -> jax.Array:
    """Softmax weights exp(temperature * (v - max v)) normalised over the elites."""
    return jax.nn.softmax(temperature * (values - values.max()))


def plan(
    key: jax.Array,
    value_fn: ValueFn,
    prior_fn: PriorFn,
    warm_start: jax.Array,
    cfg: MPPIConfig,
    eval_mode: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """One MPPI planning call (TD-MPC2, "Model predictive control with a policy prior").

    The policy prior is sampled once and its `num_pi_trajs` sequences are the first candidates of
    every iteration; the other candidates are redrawn from N(mean, std^2) (clipped to [-1, 1]) and
    `value_fn` gets a fresh key at every iteration (so the model's random pair of Q heads and the
    prior's noise at z_H are redrawn). Non-finite values count as 0. After the last iteration one
    elite is drawn by its weight and its first action executed, plus N(0, std_0^2) noise in training.

    Args:
      value_fn: (action sequences [N, H, A], key) -> J [N].
      prior_fn: key -> [num_pi_trajs, H, A] sequences from the policy prior (not called when 0).
      warm_start: [H, A] previous mean, already shifted by one step (zeros at episode start).
    Returns:
      (action [A], final mean [H, A] for the next warm start, aux with 'std' [H, A], 'value' (of the
       drawn elite), 'plan_action' (its first action, before noise), 'elites' [num_elites, H, A] and
       their 'weights' [num_elites]).
    """
    horizon, action_size = warm_start.shape
    k_prior, k_iter, k_pick, k_noise = jax.random.split(key, 4)
    prior = prior_sequences(prior_fn, k_prior, cfg.num_pi_trajs, warm_start)
    sample_shape = (cfg.num_samples - cfg.num_pi_trajs, horizon, action_size)

    def refit(carry, iter_key):
        mean, std, _, _ = carry
        k_sample, k_value = jax.random.split(iter_key)
        noise = jax.random.normal(k_sample, sample_shape, warm_start.dtype)
        actions = jnp.concatenate([prior, jnp.clip(mean + std * noise, -1.0, 1.0)], axis=0)
        values = finite_or_zero(value_fn(actions, k_value))
        elite_values, elite_idx = jax.lax.top_k(values, cfg.num_elites)
        elites = actions[elite_idx]
        w = elite_weights(elite_values, cfg.temperature)[:, None, None]
        new_mean = jnp.sum(w * elites, axis=0)
        new_std = jnp.clip(jnp.sqrt(jnp.sum(w * (elites - new_mean) ** 2, axis=0)), cfg.min_std, cfg.max_std)
        return (new_mean, new_std, elites, elite_values), None

    init = (warm_start, jnp.full_like(warm_start, cfg.max_std),
            jnp.zeros((cfg.num_elites, horizon, action_size), warm_start.dtype),
            jnp.zeros((cfg.num_elites,), warm_start.dtype))
    iter_keys = jax.random.split(k_iter, num_iterations(cfg, action_size))
    (mean, std, elites, elite_values), _ = jax.lax.scan(refit, init, iter_keys)
    weights = elite_weights(elite_values, cfg.temperature)
    pick = jax.random.categorical(k_pick, cfg.temperature * (elite_values - elite_values.max()))
    action, plan_action = first_action(k_noise, elites[pick], std[0], eval_mode)
    aux = {"std": std, "value": elite_values[pick], "plan_action": plan_action, "elites": elites,
           "weights": weights}
    return action, mean, aux


def shift_warm_start(mean: jax.Array, reset: jax.Array) -> jax.Array:
    """Shift a [H, A] plan one step forward (new last step zero) and zero it at episode starts."""
    shifted = jnp.concatenate([mean[1:], jnp.zeros_like(mean[:1])], axis=0)
    return jnp.where(reset, jnp.zeros_like(mean), shifted)


# ---- shared by the planners (mppi, mbd) ----------------------------------------------------------

def finite_or_zero(values: jax.Array) -> jax.Array:
    """Values with every non-finite entry replaced by 0, as TD-MPC2 and MBDPO zero NaN values."""
    return jnp.where(jnp.isfinite(values), values, jnp.zeros_like(values))


def prior_sequences(prior_fn: PriorFn, key: jax.Array, num: int, like: jax.Array) -> jax.Array:
    """prior_fn(key) checked to be [num, H, A] (H, A from `like` [H, A]); no call when num is 0."""
    expected = (num,) + like.shape
    if num == 0:
        return jnp.zeros(expected, like.dtype)
    prior = prior_fn(key)
    if prior.shape != expected:
        raise ValueError(f"prior_fn returned sequences of shape {prior.shape}; expected {expected} "
                         f"(num_pi_trajs, horizon, action size)")
    return prior.astype(like.dtype)


def first_action(key: jax.Array, sequence: jax.Array, noise_std: jax.Array | float,
                 eval_mode: bool) -> tuple[jax.Array, jax.Array]:
    """(executed action, planned action): the sequence's first action [A], plus N(0, noise_std^2)
    exploration noise unless eval_mode, clipped to [-1, 1]. The planners' common last step."""
    plan_action = sequence[0]
    action = plan_action
    if not eval_mode:
        action = action + noise_std * jax.random.normal(key, plan_action.shape, plan_action.dtype)
    return jnp.clip(action, -1.0, 1.0), plan_action


def candidate_rules(cfg) -> list[tuple[str, bool, str]]:
    """The candidate-count and temperature rules both sampling planners share (for `check_settings`)."""
    return [
        ("num_samples", cfg.num_samples >= 1, "num_samples >= 1"),
        ("num_elites", 1 <= cfg.num_elites <= cfg.num_samples, f"1 <= num_elites <= num_samples (= {cfg.num_samples})"),
        ("num_pi_trajs", 0 <= cfg.num_pi_trajs < cfg.num_samples,
         f"0 <= num_pi_trajs < num_samples (= {cfg.num_samples})"),
        ("temperature", cfg.temperature > 0, "temperature > 0"),
    ]


def check_settings(owner: str, cfg: Any, rules: Sequence[tuple[str, bool, str]]) -> None:
    """Raise ValueError for the first (field, ok, allowed) rule that fails, in one line."""
    for name, ok, allowed in rules:
        if not ok:
            raise ValueError(f"invalid {owner} setting {name}={getattr(cfg, name)!r}; allowed: {allowed}")
