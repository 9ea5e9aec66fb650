"""Real-vs-generated classifiers: one module for MBDPO's implicit energy F(z, a) and MnM's
transition classifier C(z, a, z').

A `Classifier` is an MLP from a feature vector (the caller concatenates what it classifies) to one
logit, trained by the symmetric BCE 0.5 (BCE(real, 1) + BCE(generated, 0)). Its logits are used
downstream after a running standardisation (`Normalizer`: EMAs of the batch mean and of the batch
std, MBDPO's official code) and a clip. Parameters are plain pytrees, so the caller decides which
optimiser trains them (MBDPO puts F in the world model's optimiser).

`ActionEnergy` is MBDPO's F: positives are replay actions, negatives the hardest of
{pi(z), pi(z) + noise * eps, uniform} (the one F currently scores highest).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.nn.layers import MLP

NEGATIVE_KINDS = ("prior", "noisy", "uniform")  # the order of the candidates in `hard_negatives`


@struct.dataclass
class Normalizer:
    """Running statistics of a classifier's logits: EMA of the batch mean and EMA of the batch std."""

    mean: jax.Array
    std: jax.Array

    @classmethod
    def create(cls) -> "Normalizer":
        return cls(jnp.zeros(()), jnp.ones(()))

    def update(self, logits: jax.Array, momentum: float) -> "Normalizer":
        logits = jax.lax.stop_gradient(logits)
        return Normalizer(momentum * self.mean + (1 - momentum) * logits.mean(),
                          momentum * self.std + (1 - momentum) * logits.std())

    def __call__(self, logits: jax.Array, clip: float) -> jax.Array:
        return jnp.clip((logits - self.mean) / (self.std + 1e-6), -clip, clip)


class Classifier:
    """logit(features): an MLP (NormedLinear + Mish hidden layers, zero-initialised head)."""

    def __init__(self, input_size: int, hidden: tuple[int, ...]):
        self.input_size = input_size
        # Zero head: the classifier starts indifferent (logit 0), so early planning is not steered by noise.
        self.net = MLP(tuple(hidden), 1, zero_last=True)

    def init(self, key: jax.Array) -> dict:
        return self.net.init(key, jnp.zeros((1, self.input_size)))["params"]

    def logit(self, params: dict, features: jax.Array) -> jax.Array:
        return self.net.apply({"params": params}, features)[..., 0]

    def loss(self, params: dict, real: jax.Array, generated: jax.Array, weight: jax.Array
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
        """0.5 (BCE(real, 1) + BCE(generated, 0)), weighted mean over samples.

        Returns (loss, (real logits, generated logits, accuracy on the (real, generated) pairs)).
        """
        pos, neg = self.logit(params, real), self.logit(params, generated)
        bce = 0.5 * (optax.sigmoid_binary_cross_entropy(pos, 1.0) + optax.sigmoid_binary_cross_entropy(neg, 0.0))
        total = jnp.maximum(weight.sum(), 1.0)
        correct = 0.5 * ((pos > 0).astype(jnp.float32) + (neg < 0).astype(jnp.float32))
        return jnp.sum(weight * bce) / total, (pos, neg, jnp.sum(weight * correct) / total)


@dataclasses.dataclass(frozen=True)
class EnergyConfig:
    """Settings of MBDPO's implicit energy F."""

    energy_hidden: tuple[int, ...] = ()
    """Hidden widths of F; empty means two layers as wide as the world model's MLPs (as MBDPO's code)."""
    energy_coef: float = 1.0
    """Weight of F's loss in the world-model loss."""
    energy_momentum: float = 0.99
    """EMA momentum of the logit statistics used to normalise F."""
    energy_clip: float = 5.0
    """Normalised F is clipped to +-energy_clip."""
    negative_noise: float = 0.5
    """Std of the noise of the 'noisy prior' negative."""

    def validate(self) -> None:
        if not 0 <= self.energy_momentum < 1:
            raise ValueError(f"energy-momentum must be in [0, 1), got {self.energy_momentum}")
        if self.energy_clip <= 0 or self.negative_noise < 0 or self.energy_coef < 0:
            raise ValueError(f"need energy-clip > 0 ({self.energy_clip}), negative-noise >= 0 "
                             f"({self.negative_noise}) and energy-coef >= 0 ({self.energy_coef})")


class ActionEnergy:
    """MBDPO's F(x, a) over a (task-conditioned) latent x and an action a."""

    def __init__(self, cfg: EnergyConfig, latent_size: int, action_size: int, default_width: int = 256):
        cfg.validate()
        self.cfg = cfg
        hidden = cfg.energy_hidden or (default_width, default_width)
        self.classifier = Classifier(latent_size + action_size, hidden)

    def init(self, key: jax.Array) -> dict:
        return self.classifier.init(key)

    def logit(self, params: dict, x: jax.Array, a: jax.Array) -> jax.Array:
        x = jnp.broadcast_to(x, a.shape[:-1] + x.shape[-1:])
        return self.classifier.logit(params, jnp.concatenate([x, a], -1))

    def normalized(self, params: dict, stats: Normalizer, x: jax.Array, a: jax.Array) -> jax.Array:
        """The clipped, standardised logit that enters the planning objective."""
        return stats(self.logit(params, x, a), self.cfg.energy_clip)

    def hard_negatives(self, params: dict, x: jax.Array, prior_action: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per sample, the candidate among {pi(z), pi(z) + noise, uniform} with the highest logit.

        Also returns the logits of the three kinds, [3, ...], for diagnostics.
        """
        k_noise, k_unif = jax.random.split(key)
        noisy = jnp.clip(prior_action + self.cfg.negative_noise * jax.random.normal(k_noise, prior_action.shape),
                         -1.0, 1.0)
        uniform = jax.random.uniform(k_unif, prior_action.shape, minval=-1.0, maxval=1.0)
        candidates = jnp.stack([prior_action, noisy, uniform])  # [3, ..., A]
        logits = jax.lax.stop_gradient(self.logit(params, x[None], candidates))
        best = jnp.argmax(logits, axis=0)
        return jnp.take_along_axis(candidates, best[None, ..., None], axis=0)[0], logits

    def loss(self, params: dict, x: jax.Array, real: jax.Array, prior_action: jax.Array, weight: jax.Array,
             key: jax.Array) -> tuple[jax.Array, tuple[jax.Array, dict]]:
        """F's BCE against hard negatives of the (detached) prior actions.

        Returns (loss, (all logits of the batch, for the normaliser; metrics)). Metrics: the loss, the
        accuracy on (real, hardest negative) pairs, and per negative kind the fraction of real actions F
        scores above it (`energy_beats_<kind>`, 0.5 = indistinguishable) and how often it was the
        hardest (`energy_hardest_<kind>`).
        """
        x, prior_action = jax.lax.stop_gradient((x, prior_action))
        fake, kind_logits = self.hard_negatives(params, x, prior_action, key)
        xr = jnp.broadcast_to(x, real.shape[:-1] + x.shape[-1:])
        xf = jnp.broadcast_to(x, fake.shape[:-1] + x.shape[-1:])
        loss, (pos, neg, accuracy) = self.classifier.loss(
            params, jnp.concatenate([xr, real], -1), jnp.concatenate([xf, fake], -1), weight)
        metrics = {"energy_loss": loss, "energy_accuracy": accuracy,
                   **negative_diagnostics(pos, kind_logits, weight)}
        return loss, (jnp.concatenate([pos.ravel(), neg.ravel()]), metrics)


def negative_diagnostics(real_logit: jax.Array, kind_logits: jax.Array, weight: jax.Array) -> dict:
    """How often real actions beat each negative kind, and how often each kind was the hardest."""
    real_logit, kind_logits = jax.lax.stop_gradient((real_logit, kind_logits))
    hardest = jnp.argmax(kind_logits, axis=0)
    total = jnp.maximum(weight.sum(), 1.0)
    out = {}
    for i, kind in enumerate(NEGATIVE_KINDS):
        out[f"energy_beats_{kind}"] = jnp.sum(weight * (real_logit > kind_logits[i])) / total
        out[f"energy_hardest_{kind}"] = jnp.sum(weight * (hardest == i)) / total
    return out
