"""Symlog two-hot encoding of scalars (TD-MPC2 reward and value heads)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def symlog(x: jax.Array) -> jax.Array:
    """sign(x) * log(1 + |x|)."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    """Inverse of symlog: sign(x) * (exp(|x|) - 1)."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class TwoHot:
    """Bins evenly spaced in symlog space on [vmin, vmax]."""

    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0

    @property
    def bin_size(self) -> float:
        return (self.vmax - self.vmin) / (self.num_bins - 1)

    def encode(self, x: jax.Array) -> jax.Array:
        """Scalars [...] -> probability vectors [..., num_bins] with mass on the two nearest bins."""
        y = jnp.clip(symlog(x), self.vmin, self.vmax)
        position = (y - self.vmin) / self.bin_size
        lower = jnp.clip(jnp.floor(position), 0, self.num_bins - 1)
        upper_weight = position - lower
        lower_i = lower.astype(jnp.int32)
        upper_i = jnp.minimum(lower_i + 1, self.num_bins - 1)
        lower_hot = jax.nn.one_hot(lower_i, self.num_bins) * (1.0 - upper_weight)[..., None]
        upper_hot = jax.nn.one_hot(upper_i, self.num_bins) * upper_weight[..., None]
        return lower_hot + upper_hot

    def decode(self, logits: jax.Array) -> jax.Array:
        """Logits [..., num_bins] -> expected value in symlog space, mapped back with symexp."""
        bins = jnp.linspace(self.vmin, self.vmax, self.num_bins)
        return symexp(jnp.sum(jax.nn.softmax(logits, axis=-1) * bins, axis=-1))

    def cross_entropy(self, logits: jax.Array, target: jax.Array) -> jax.Array:
        """Soft cross-entropy between predicted logits [..., bins] and the two-hot of scalar targets [...]."""
        return -jnp.sum(self.encode(target) * jax.nn.log_softmax(logits, axis=-1), axis=-1)
