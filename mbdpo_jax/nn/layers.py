"""Building blocks of TD-MPC2-style networks: NormedLinear + Mish, SimNorm, MLPs and ensembles; and
brax's swish MLP (the on-policy learners' networks)."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# TD-MPC2 initialises every linear layer with trunc_normal(std=0.02) truncated at +-2 in absolute
# value, which never bites: effectively N(0, 0.02^2), zero bias. (jax's truncated_normal(0.02)
# truncates at 2 std and has std 0.0176.)
default_kernel_init = nn.initializers.normal(stddev=0.02)
# PyTorch's LayerNorm epsilon, as in TD-MPC2 (flax's default is 1e-6).
LAYER_NORM_EPS = 1e-5


def mish(x: jax.Array) -> jax.Array:
    """Mish activation, x * tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


def simnorm(x: jax.Array, group_size: int = 8) -> jax.Array:
    """Simplicial normalisation: softmax within consecutive groups of `group_size` features."""
    shape = x.shape
    if shape[-1] % group_size:
        raise ValueError(f"SimNorm needs a feature size divisible by group_size={group_size}, got {shape[-1]}")
    grouped = x.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    return jax.nn.softmax(grouped, axis=-1).reshape(shape)


class NormedLinear(nn.Module):
    """Linear -> (Dropout) -> LayerNorm -> activation, TD-MPC2's hidden layer."""

    features: int
    activation: Callable[[jax.Array], jax.Array] = mish
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        x = nn.Dense(self.features, kernel_init=default_kernel_init)(x)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS)(x)
        return self.activation(x)


class MLP(nn.Module):
    """NormedLinear hidden layers, then a plain Linear head or (if `out_activation`) a NormedLinear head.

    Dropout (if any) is applied in the first layer only, as in TD-MPC2.
    """

    hidden: Sequence[int]
    out_features: int
    out_activation: Callable[[jax.Array], jax.Array] | None = None
    dropout: float = 0.0
    zero_last: bool = False
    activation: Callable[[jax.Array], jax.Array] = mish
    """Of the hidden layers (TD-MPC2: Mish; REPPO's critic: swish)."""

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = NormedLinear(width, self.activation, dropout=self.dropout if i == 0 else 0.0)(x, deterministic)
        if self.out_activation is not None:
            return NormedLinear(self.out_features, activation=self.out_activation)(x)
        kernel_init = nn.initializers.zeros if self.zero_last else default_kernel_init
        return nn.Dense(self.out_features, kernel_init=kernel_init)(x)


class Ensemble(nn.Module):
    """`size` independent MLPs evaluated on the same input; output has a leading ensemble axis."""

    size: int
    hidden: Sequence[int]
    out_features: int
    dropout: float = 0.0
    zero_last: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        batched = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(None, None),
            out_axes=0,
            axis_size=self.size,
        )
        return batched(self.hidden, self.out_features, dropout=self.dropout, zero_last=self.zero_last)(
            x, deterministic
        )


class SwishMLP(nn.Module):
    """brax's MLP: Dense (LeCun uniform) -> swish per hidden width, then a Dense head (PPO, DA-MDP:PPO)."""

    hidden: Sequence[int]
    out_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_uniform()
        for width in self.hidden:
            x = nn.swish(nn.Dense(width, kernel_init=init)(x))
        return nn.Dense(self.out_features, kernel_init=init)(x)
