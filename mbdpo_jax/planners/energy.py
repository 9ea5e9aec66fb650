"""Real-vs-generated classifiers used as implicit energies.

MBDPO's F(z, a) scores how much an action looks like the data at latent z: positives are replay
actions, negatives the hardest of {pi(z), pi(z) + 0.5 eps, uniform} (the one F currently likes
most). Its logits, normalised by an EMA of their mean and variance and clipped, enter the planning
objective with weight eta.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.nn.layers import MLP


NEGATIVE_KINDS = ("prior", "noisy", "uniform")  # the order of the candidates in `hard_negatives`


@dataclasses.dataclass(frozen=True)
class EnergyConfig:
    # None: two layers as wide as the world model's MLPs (MBDPO's code sizes F like its Q heads).
    hidden: tuple[int, ...] | None = None
    lr: float = 3e-4
    momentum: float = 0.99  # EMA of the logit statistics
    clip: float = 5.0
    negative_noise: float = 0.5


@struct.dataclass
class EnergyState:
    params: dict
    opt: optax.OptState
    mean: jax.Array  # EMA of logits
    var: jax.Array  # EMA of squared deviation


class Energy:
    """F(z, a) -> logit; `normalized` gives the clipped, EMA-standardised logit used in planning."""

    def __init__(self, cfg: EnergyConfig, latent_dim: int, action_size: int, default_width: int = 256):
        self.cfg, self.latent_dim, self.action_size = cfg, latent_dim, action_size
        hidden = cfg.hidden if cfg.hidden is not None else (default_width, default_width)
        # Zero head: F starts indifferent (logit 0), so early planning is not steered by noise.
        self.net = MLP(hidden, 1, zero_last=True)
        self.tx = optax.chain(optax.clip_by_global_norm(20.0), optax.adam(cfg.lr))

    def init(self, key: jax.Array) -> EnergyState:
        params = self.net.init(key, jnp.zeros((1, self.latent_dim + self.action_size)))["params"]
        return EnergyState(params, self.tx.init(params), jnp.zeros(()), jnp.ones(()))

    def logit(self, params: dict, z: jax.Array, a: jax.Array) -> jax.Array:
        return self.net.apply({"params": params}, jnp.concatenate([z, a], -1))[..., 0]

    def normalized(self, state: EnergyState, z: jax.Array, a: jax.Array) -> jax.Array:
        f = (self.logit(state.params, z, a) - state.mean) / jnp.sqrt(state.var + 1e-6)
        return jnp.clip(f, -self.cfg.clip, self.cfg.clip)

    def hard_negatives(self, params: dict, z: jax.Array, prior_action: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per sample, the candidate among {pi(z), pi(z) + noise, uniform} with the highest logit.

        Also returns the logits of the three kinds, [3, ...], for diagnostics.
        """
        k_noise, k_unif = jax.random.split(key)
        noisy = jnp.clip(prior_action + self.cfg.negative_noise * jax.random.normal(k_noise, prior_action.shape),
                         -1.0, 1.0)
        uniform = jax.random.uniform(k_unif, prior_action.shape, minval=-1.0, maxval=1.0)
        candidates = jnp.stack([prior_action, noisy, uniform])  # [3, ..., A]
        zs = jnp.broadcast_to(z[None], (3,) + z.shape)
        logits = jax.lax.stop_gradient(self.logit(params, zs, candidates))
        best = jnp.argmax(logits, axis=0)
        return jnp.take_along_axis(candidates, best[None, ..., None], axis=0)[0], logits

    def loss(self, params: dict, z: jax.Array, real: jax.Array, fake: jax.Array, weight: jax.Array):
        """Weighted binary cross-entropy, real actions labelled 1 and negatives 0."""
        pos, neg = self.logit(params, z, real), self.logit(params, z, fake)
        bce = optax.sigmoid_binary_cross_entropy(pos, 1.0) + optax.sigmoid_binary_cross_entropy(neg, 0.0)
        loss = jnp.sum(weight * bce) / jnp.maximum(weight.sum(), 1.0)
        correct = 0.5 * ((pos > 0).astype(jnp.float32) + (neg < 0).astype(jnp.float32))
        accuracy = jnp.sum(weight * correct) / jnp.maximum(weight.sum(), 1.0)
        return loss, (pos, neg, accuracy)

    def update(self, state: EnergyState, z: jax.Array, real: jax.Array, prior_action: jax.Array,
               weight: jax.Array, key: jax.Array) -> tuple[EnergyState, dict]:
        """One BCE step against hard negatives, then the EMA of the logit statistics.

        Metrics: the BCE loss, the accuracy on (real, hardest negative) pairs, and per negative kind
        (prior, noisy prior, uniform) the fraction of real actions F scores above it
        (`energy_beats_<kind>`, 0.5 = indistinguishable) and how often it was the hardest
        (`energy_hardest_<kind>`).
        """
        fake, kind_logits = self.hard_negatives(state.params, z, prior_action, key)
        (loss, (real_logit, fake_logit, accuracy)), grads = jax.value_and_grad(self.loss, has_aux=True)(
            state.params, z, real, fake, weight)
        logits = jnp.concatenate([real_logit.ravel(), fake_logit.ravel()])
        updates, opt = self.tx.update(grads, state.opt, state.params)
        m = self.cfg.momentum
        mean = m * state.mean + (1 - m) * logits.mean()
        var = m * state.var + (1 - m) * jnp.mean((logits - mean) ** 2)
        new = EnergyState(optax.apply_updates(state.params, updates), opt, mean, var)
        return new, {"energy_loss": loss, "energy_accuracy": accuracy,
                     **self._negative_diagnostics(real_logit, kind_logits, weight)}

    @staticmethod
    def _negative_diagnostics(real_logit: jax.Array, kind_logits: jax.Array, weight: jax.Array) -> dict:
        hardest = jnp.argmax(kind_logits, axis=0)
        total = jnp.maximum(weight.sum(), 1.0)
        out = {}
        for i, kind in enumerate(NEGATIVE_KINDS):
            out[f"energy_beats_{kind}"] = jnp.sum(weight * (real_logit > kind_logits[i])) / total
            out[f"energy_hardest_{kind}"] = jnp.sum(weight * (hardest == i)) / total
        return out
