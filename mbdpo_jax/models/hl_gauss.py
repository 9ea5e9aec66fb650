"""HL-Gauss categorical value heads (Farebrother et al., 2024, "Stop Regressing: Training Value
Functions via Classification for Scalable Deep RL"): a critic outputs logits over fixed bins; its
value is the expected bin centre, and it is trained by cross-entropy against the histogram of a
Gaussian centred on the scalar target (the "histogram loss").

    bins = HLGauss(num_bins=151, v_min=-100.0, v_max=200.0)    # DA-MDP's defaults
    probs = to_probs(target, bins)          # [..., num_bins], sums to 1
    value = expected_value(logits, bins)    # [...]
    l = loss(logits, target, bins)          # [...], cross-entropy, minimised at the target's histogram

The target distribution is N(target, sigma^2) with sigma = sigma_ratio x bin width (0.75 in the
paper and DA-MDP), integrated over each bin [edge_i, edge_{i+1}] and renormalised by the mass that
falls inside [v_min, v_max]. Targets are clipped into [v_min, v_max] first (so a target far outside
has a finite histogram: that of the nearest end). Shared by DA-MDP:PPO and DA-MDP:REPPO.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class HLGauss:
    """num_bins equal bins partitioning [v_min, v_max]; sigma = sigma_ratio x bin width."""

    num_bins: int = 151
    v_min: float = -100.0
    v_max: float = 200.0
    sigma_ratio: float = 0.75

    def validate(self, prefix: str = "") -> None:
        """One-line ValueError naming the bad value (flag names `prefix` + num-bins, ...)."""
        if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int) or self.num_bins < 2:
            raise ValueError(f"{prefix}num-bins must be an integer >= 2, got {self.num_bins!r}")
        if not self.v_min < self.v_max:
            raise ValueError(f"{prefix}v-min must be < {prefix}v-max, got {self.v_min}, {self.v_max}")
        if not self.sigma_ratio > 0:
            raise ValueError(f"{prefix}sigma-ratio must be > 0, got {self.sigma_ratio}")

    @property
    def bin_width(self) -> float:
        return (self.v_max - self.v_min) / self.num_bins

    @property
    def sigma(self) -> float:
        return self.sigma_ratio * self.bin_width

    def edges(self) -> jax.Array:
        """[num_bins + 1] bin edges from v_min to v_max."""
        return jnp.linspace(self.v_min, self.v_max, self.num_bins + 1)

    def centers(self) -> jax.Array:
        """[num_bins] bin centres."""
        e = self.edges()
        return 0.5 * (e[:-1] + e[1:])


def to_probs(target: jax.Array, bins: HLGauss) -> jax.Array:
    """The HL-Gauss histogram of scalar targets [...] -> [..., num_bins] (non-negative, sums to 1)."""
    target = jnp.clip(jnp.asarray(target), bins.v_min, bins.v_max)
    cdf = jax.scipy.special.erf((bins.edges() - target[..., None]) / (math.sqrt(2.0) * bins.sigma))
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / (cdf[..., -1:] - cdf[..., :1])


def expected_value(logits: jax.Array, bins: HLGauss) -> jax.Array:
    """The value of logits [..., num_bins]: sum softmax(logits) x bin centres -> [...]."""
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * bins.centers(), axis=-1)


def loss(logits: jax.Array, target: jax.Array, bins: HLGauss) -> jax.Array:
    """Cross-entropy -sum p_target log softmax(logits) -> [...]; the target's histogram is detached."""
    probs = jax.lax.stop_gradient(to_probs(target, bins))
    return -jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)
