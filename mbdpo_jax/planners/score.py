"""Amortised score network s_phi(z, x_k, k) for MBDPO's reverse diffusion (optional, off by default).

The Monte-Carlo planner (`planners.mbd`, MBDPO arXiv 2605.26282) estimates, at every reverse step
k (a schedule index in 1..K-1), the score of the noised target distribution from N evaluated
candidates:

    x0_i  = clip(x_k / sqrt(abar_k) + sqrt((1 - abar_k) / abar_k) eps_i, -1, 1)
    x0bar = elite-softmax-weighted mean of the x0_i under standardised J
    score = (-x_k + sqrt(abar_k) x0bar) / (1 - abar_k)

s_phi learns that estimate (with `score_samples` candidates) so that planning can skip the candidate
rollouts altogether (`mbd.plan_score_only`). It is trained and queried at the planner's steps only,
k in 1..K-1, with the same schedule indexing as `mbd`.

Parameterisation and loss. The raw score is of order 1 / (1 - abar_k), up to 1e4 at k = 1, so the
network predicts the denoised mean instead, as a residual on the candidates' centre:

    x0bar_hat(z, x_k, k) = x_k / sqrt(abar_k) + f_phi(z, x_k, time_embedding(k))
    s_phi(z, x_k, k)     = (-x_k + sqrt(abar_k) x0bar_hat) / (1 - abar_k)

and is trained on

    L(phi) = mean over samples and the H * A entries of (x0bar_hat - x0bar_MC)^2
           = mean of (1 - abar_k)^2 / abar_k * (s_phi - score_MC)^2,

i.e. MBDPO's raw score MSE up to the per-k weight (1 - abar_k)^2 / abar_k. With f_phi's head
initialised at zero, an untrained network has score 0 and score-only planning returns the warm start.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.nn.layers import MLP
from mbdpo_jax.planners import mbd
from mbdpo_jax.planners.mppi import ValueFn, check_settings, finite_or_zero


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """Settings of s_phi and its training (names prefixed: they share a command line with the agent's)."""

    score_time_embed_dim: int = 64
    score_samples: int = 64  # candidates per Monte-Carlo score target
    score_batch: int = 64  # training pairs per update, taken from the front of the update batch
    score_lr: float = 3e-4
    score_hidden: tuple[int, ...] = ()  # empty: two layers as wide as the world model's MLPs

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad setting and its allowed range."""
        check_settings("score network", self, [
            ("score_time_embed_dim", self.score_time_embed_dim >= 2 and self.score_time_embed_dim % 2 == 0,
             "an even score_time_embed_dim >= 2"),
            ("score_samples", self.score_samples >= 1, "score_samples >= 1"),
            ("score_batch", self.score_batch >= 1, "score_batch >= 1"),
            ("score_lr", self.score_lr > 0, "score_lr > 0"),
            ("score_hidden", all(w >= 1 for w in self.score_hidden), "widths >= 1 (empty: the model's width)"),
        ])


@struct.dataclass
class ScoreState:
    params: dict
    opt: optax.OptState


def time_embedding(k: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding [..., dim] of diffusion step(s) k: sines then cosines of k * 10000^(-i/(dim/2))."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
    angles = jnp.asarray(k, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ScoreNet(nn.Module):
    """f_phi: MLP (NormedLinear + Mish) over concat[z, flattened x_k, time embedding] -> [H * A]."""

    hidden: tuple[int, ...]
    out_features: int

    @nn.compact
    def __call__(self, z: jax.Array, x_flat: jax.Array, t_emb: jax.Array) -> jax.Array:
        return MLP(self.hidden, self.out_features, zero_last=True)(jnp.concatenate([z, x_flat, t_emb], -1))


def monte_carlo_target(key: jax.Array, value_fn: ValueFn, x_k: jax.Array, abar_k: jax.Array, num_samples: int,
                       num_elites: int, temperature: float) -> tuple[jax.Array, jax.Array]:
    """(score target [H, A], x0bar [H, A]) for one latent (closed over by value_fn), noised x_k and step k.

    Candidates as in `mbd.propose` (no prior sequences, drawn with the first half of `key`), J from
    value_fn(candidates, second half of `key`) with non-finite values as 0 and no gradient, weights
    from `mbd.elite_weights`, score = (-x_k + sqrt(abar_k) x0bar) / (1 - abar_k).
    """
    k_candidates, k_value = jax.random.split(key)
    no_prior = jnp.zeros((0,) + x_k.shape, x_k.dtype)
    candidates = mbd.propose(k_candidates, x_k, abar_k, no_prior, num_samples)
    values = finite_or_zero(jax.lax.stop_gradient(value_fn(candidates, k_value)))
    weights, idx = mbd.elite_weights(values, num_elites, temperature)
    x0_bar = jnp.tensordot(weights, candidates[idx], axes=1)
    return (-x_k + jnp.sqrt(abar_k) * x0_bar) / (1.0 - abar_k), x0_bar


def forward_noise(key: jax.Array, x0: jax.Array, abar_k: jax.Array) -> jax.Array:
    """x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps (abar_k broadcast from the leading axis)."""
    abar = abar_k.reshape(abar_k.shape + (1,) * (x0.ndim - abar_k.ndim))
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * jax.random.normal(key, x0.shape)


class ScoreModel:
    """s_phi with its schedule and optimiser; the instance holds only static configuration.

    Steps k are schedule indices of `mbd` (abar_k = `mbd.schedule(planner)[1][k]`), and s_phi is
    trained and used at the planner's reverse steps k in 1..K-1.
    """

    def __init__(self, cfg: ScoreConfig, planner: mbd.MBDConfig, horizon: int, latent_dim: int,
                 action_size: int, default_width: int = 256):
        cfg.validate()
        planner.validate()
        self.cfg, self.planner = cfg, planner
        self.latent_dim, self.shape = latent_dim, (horizon, action_size)
        hidden = cfg.score_hidden or (default_width, default_width)
        self.net = ScoreNet(tuple(hidden), horizon * action_size)
        self.tx = optax.chain(optax.clip_by_global_norm(20.0), optax.adam(cfg.score_lr))
        # The planner's elite fraction, applied to the Monte-Carlo candidates.
        self.num_elites = max(1, round(cfg.score_samples * planner.num_elites / planner.num_samples))

    def init(self, key: jax.Array) -> ScoreState:
        """Fresh parameters (zero head: score 0 everywhere) and optimiser state."""
        h, a = self.shape
        params = self.net.init(key, jnp.zeros((1, self.latent_dim)), jnp.zeros((1, h * a)),
                               jnp.zeros((1, self.cfg.score_time_embed_dim)))["params"]
        return ScoreState(params, self.tx.init(params))

    def abar(self, k: jax.Array) -> jax.Array:
        """abar_k for integer schedule indices k (the planner's steps are 1..K-1)."""
        return mbd.schedule(self.planner)[1][k]

    def denoised(self, params: dict, z: jax.Array, x_k: jax.Array, k: jax.Array) -> jax.Array:
        """x0bar_hat [..., H, A] for latents z [..., Z], x_k [..., H, A] and integer steps k [...]."""
        abar = self.abar(k)[..., None, None]
        x_flat = x_k.reshape(x_k.shape[:-2] + (-1,))
        delta = self.net.apply({"params": params}, z, x_flat, time_embedding(k, self.cfg.score_time_embed_dim))
        return x_k / jnp.sqrt(abar) + delta.reshape(x_k.shape)

    def score(self, params: dict, z: jax.Array, x_k: jax.Array, k: jax.Array) -> jax.Array:
        """s_phi(z, x_k, k) = (-x_k + sqrt(abar_k) x0bar_hat) / (1 - abar_k)."""
        abar = self.abar(k)[..., None, None]
        return (-x_k + jnp.sqrt(abar) * self.denoised(params, z, x_k, k)) / (1.0 - abar)

    def training_pairs(self, key: jax.Array, x0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(k uniform over the planner's steps 1..K-1 [B], x_k by forward diffusion of x0 [B, H, A])."""
        k_step, k_noise = jax.random.split(key)
        k = jax.random.randint(k_step, x0.shape[:1], 1, self.planner.diffusion_steps)
        return k, forward_noise(k_noise, x0, self.abar(k))

    def targets(self, key: jax.Array, make_value_fn: Callable[[Any], ValueFn], conds: Any, x_k: jax.Array,
                k: jax.Array) -> jax.Array:
        """Monte-Carlo x0bar [B, H, A]; conds is a pytree with leading axis B (e.g. latents, task ids)
        and make_value_fn(cond) the value J of one sample, (action sequences [N, H, A], key) -> [N]."""
        def one(cond, x, step, kk):
            _, x0_bar = monte_carlo_target(kk, make_value_fn(cond), x, self.abar(step), self.cfg.score_samples,
                                           self.num_elites, self.planner.temperature)
            return x0_bar

        return jax.vmap(one)(conds, x_k, k, jax.random.split(key, x_k.shape[0]))

    def loss(self, params: dict, z: jax.Array, x_k: jax.Array, k: jax.Array, x0_bar: jax.Array) -> jax.Array:
        """Mean squared error of x0bar_hat against the Monte-Carlo x0bar (see the module docstring)."""
        return jnp.mean((self.denoised(params, z, x_k, k) - x0_bar) ** 2)

    def update(self, state: ScoreState, z: jax.Array, x_k: jax.Array, k: jax.Array,
               x0_bar: jax.Array) -> tuple[ScoreState, dict]:
        """One Adam step on `loss`; metrics 'score_loss' (before the step)."""
        loss, grads = jax.value_and_grad(self.loss)(state.params, z, x_k, k, jax.lax.stop_gradient(x0_bar))
        updates, opt = self.tx.update(grads, state.opt, state.params)
        return ScoreState(optax.apply_updates(state.params, updates), opt), {"score_loss": loss}
