"""The short-horizon actor-critic recipe that first-order learners share: SHAC (Xu et al., 2022) through
differentiable physics, PWM (Georgiev et al., 2024) through a world model.

    actor, critics = GaussianActor(...), ValueEnsemble(...)
    targets = td_lambda_targets(rewards, next_values, ends, gamma, lam)     # SHAC Eq. 7
    critic_params, opt, loss = fit_critics(critics, tx, critic_params, opt, inputs, targets, ...)

Pieces: a tanh-Gaussian actor with a state-independent log-std, an ensemble of value critics (both
MLPs of one of two hidden-layer kinds, `LAYERS`), TD(lambda) targets over a window whose last step always bootstraps, a running
mean/std of returns (the actor's loss scale), Adam with the papers' betas and a linear learning-rate
decay, and the critic regression over several iterations of contiguous minibatches. `gae` (generalised
advantage estimation) serves the on-policy learners (PPO, and DA-MDP over augmented steps).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.nn.layers import MLP, Ensemble

LAYERS = ("linear-norm-mish", "linear-elu-norm")
"""Hidden layers of the actor and critics. 'linear-norm-mish': TD-MPC2's NormedLinear (Linear with
N(0, 0.02^2) weights -> LayerNorm -> Mish), as PWM, whose inputs are latent states. 'linear-elu-norm':
DiffRL's SHAC layers (Linear with PyTorch's default init -> ELU -> LayerNorm). On raw low-dimensional
observations the first kind is almost scale-invariant at initialisation (the LayerNorm right after a
small zero-bias linear map normalises its input away: at init the actor's mean is the same at x and at
x / 100), so near an equilibrium it cannot represent a feedback proportional to the state."""


@dataclasses.dataclass(frozen=True)
class ActorCriticConfig:
    """Settings of the first-order actor-critic; defaults are PWM's published ones (Georgiev et al., 2024,
    App. B): actor [400, 200, 100], 3 critics [400, 200], lambda 0.95, 8 critic iterations x 4 minibatches."""

    actor_hidden: tuple[int, ...] = (400, 200, 100)
    critic_hidden: tuple[int, ...] = (400, 200)
    num_critics: int = 3
    actor_lr: float = 5e-4
    critic_lr: float = 5e-4
    final_lr: float = 1e-5
    """Both learning rates decay linearly to this over `lr_decay_updates` updates."""
    lr_decay_updates: int = 10_000
    betas: tuple[float, float] = (0.7, 0.95)
    actor_grad_clip: float = 1.0
    critic_grad_clip: float = 100.0
    td_lambda: float = 0.95
    critic_iterations: int = 8
    critic_minibatches: int = 4
    init_log_std: float = -1.0
    min_log_std: float = -1.427
    layers: str = "linear-norm-mish"
    """Hidden-layer kind of actor and critics, one of `LAYERS`."""

    def validate(self) -> None:
        """One-line error naming the bad value and the allowed ones."""
        for name in ("actor_lr", "critic_lr", "lr_decay_updates", "actor_grad_clip", "critic_grad_clip",
                     "critic_iterations", "critic_minibatches", "num_critics"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.final_lr <= min(self.actor_lr, self.critic_lr):
            raise ValueError(f"final-lr must be in [0, min(actor-lr, critic-lr)], got {self.final_lr}")
        if self.layers not in LAYERS:
            raise ValueError(f"layers must be one of {', '.join(LAYERS)}, got {self.layers!r}")
        if not 0 <= self.td_lambda < 1:
            raise ValueError(f"td-lambda must be in [0, 1), got {self.td_lambda}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if not (self.actor_hidden and self.critic_hidden and min(self.actor_hidden + self.critic_hidden) > 0):
            raise ValueError(f"actor-hidden and critic-hidden need positive widths, got {self.actor_hidden}, "
                             f"{self.critic_hidden}")


def torch_linear(features: int, fan_in: int, zero: bool = False) -> nn.Dense:
    """A Linear layer initialised as PyTorch's nn.Linear: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    The non-zero biases matter: they keep the LayerNorm that follows from normalising the scale of a
    small input away."""
    if zero:
        return nn.Dense(features, kernel_init=nn.initializers.zeros)
    bound = fan_in ** -0.5
    bias_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    return nn.Dense(features, kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                    bias_init=bias_init)


class EluNormMLP(nn.Module):
    """DiffRL's SHAC MLP: (Linear -> ELU -> LayerNorm) per hidden width, then a Linear head; PyTorch's
    default init, except a zero head when `zero_last`."""

    hidden: Sequence[int]
    out_features: int
    zero_last: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.LayerNorm(epsilon=1e-5)(nn.elu(torch_linear(width, x.shape[-1])(x)))
        return torch_linear(self.out_features, x.shape[-1], self.zero_last)(x)


def mlp(layers: str, hidden: Sequence[int], out_features: int, zero_last: bool = False) -> nn.Module:
    """The MLP of a `LAYERS` kind; `zero_last` (a zero head) applies to 'linear-elu-norm' only."""
    if layers == "linear-elu-norm":
        return EluNormMLP(tuple(hidden), out_features, zero_last)
    return MLP(tuple(hidden), out_features)


class GaussianActor(nn.Module):
    """Mean from an MLP (`LAYERS`), a state-independent log-std (clamped from below); actions are
    tanh of a reparameterised Gaussian sample, no entropy term (PWM; SHAC)."""

    hidden: Sequence[int]
    action_size: int
    init_log_std: float = -1.0
    min_log_std: float = -1.427
    layers: str = "linear-norm-mish"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        # 'linear-elu-norm': a zero mean head, so the untrained policy is unbiased (PyTorch's default head
        # gives a constant push of about 0.4 that topples brax/inverted-pendulum in 5 steps)
        mean = mlp(self.layers, self.hidden, self.action_size, zero_last=True)(x)
        log_std = self.param("log_std", nn.initializers.constant(self.init_log_std), (self.action_size,))
        return mean, jnp.maximum(log_std, self.min_log_std)


def tanh_log_det_jacobian(u: jax.Array) -> jax.Array:
    """log |d tanh(u) / du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), per entry (exact also where
    tanh(u) rounds to +-1)."""
    return 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def sample_action(mean: jax.Array, log_std: jax.Array, key: jax.Array, deterministic: bool = False) -> jax.Array:
    """tanh(mean + std * eps), differentiable in mean and log_std; tanh(mean) when deterministic."""
    if deterministic:
        return jnp.tanh(mean)
    return jnp.tanh(mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape))


class ValueEnsemble(nn.Module):
    """`size` value critics V_j(x), each an MLP (`LAYERS`); output [size, ...]."""

    size: int
    hidden: Sequence[int]
    layers: str = "linear-norm-mish"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.layers == "linear-norm-mish":
            return Ensemble(self.size, tuple(self.hidden), 1)(x)[..., 0]
        batched = nn.vmap(_Head, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                          out_axes=0, axis_size=self.size)
        return batched(self.layers, tuple(self.hidden))(x)


class _Head(nn.Module):
    """One critic of `ValueEnsemble` with 'linear-elu-norm' layers."""

    layers: str
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return mlp(self.layers, self.hidden, 1)(x)[..., 0]


def td_lambda_targets(rewards: jax.Array, next_values: jax.Array, ends: jax.Array, gamma: Any,
                      lam: float) -> jax.Array:
    """TD(lambda) returns over a window, time-major [T, ...] (SHAC, Xu et al., 2022, Eq. 7).

    G_t = r_t + gamma [(1 - lam) V_{t+1} + lam G_{t+1}], except that where the episode (or the window:
    the last step always counts as an end) ends at t, G_t = r_t + gamma V_{t+1}. `next_values` are the
    values of the next states with terminations already set to 0, so a truncation bootstraps from the
    final observation's value and a termination does not.
    """
    ends = ends.astype(next_values.dtype).at[-1].set(1.0)

    def back(g_next, step):
        r, v, end = step
        g = r + gamma * ((1 - lam) * v + lam * ((1 - end) * g_next + end * v))
        return g, g

    _, targets = jax.lax.scan(back, jnp.zeros_like(rewards[-1]), (rewards, next_values, ends), reverse=True)
    return targets


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminations: jax.Array,
        truncations: jax.Array, gamma: Any, lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a rollout, time-major [T, ...] (Schulman et al., 2016, Eq. 16).

    delta_t = r_t + gamma_t (1 - term_t) V(s'_t) - V(s_t) and A_t = delta_t + gamma_t lam (1 - end_t) A_{t+1},
    where s'_t is the state transition t reached (the kept final observation when an episode ended there),
    end = termination or truncation, and A_T = 0: a termination bootstraps 0, a truncation (and the last
    step of the rollout) bootstraps V(s'_t), and no advantage flows across an episode boundary.
    `next_values` are V(s'_t) as computed, without terminations zeroed; `gamma` is a scalar or an array
    broadcasting to `rewards` (per-step discounts, e.g. 1 between the denoising steps of a DA-MDP).

    Returns (advantages, returns = advantages + values: the TD(lambda) targets of V).
    """
    dtype = values.dtype
    gamma = jnp.broadcast_to(jnp.asarray(gamma, dtype), rewards.shape)
    terminations, truncations = terminations.astype(dtype), truncations.astype(dtype)
    deltas = rewards + gamma * (1.0 - terminations) * next_values - values
    carry_on = gamma * lam * (1.0 - jnp.maximum(terminations, truncations))

    def back(a_next, step):
        delta, c = step
        a = delta + c * a_next
        return a, a

    _, advantages = jax.lax.scan(back, jnp.zeros_like(rewards[-1]), (deltas, carry_on), reverse=True)
    return advantages, advantages + values


@struct.dataclass
class RunningMeanStd:
    """Running mean and variance of a statistic of shape `mean.shape` (parallel merge of batch moments,
    Chan et al., 1979): SHAC's observation normaliser (per feature) and return normaliser (scalar)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...] = ()) -> "RunningMeanStd":
        # an explicit dtype: a weak-typed count would come back strong from a checkpoint, and the resumed
        # carry would no longer match the compiled chunk (a second compile)
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.full((), 1e-4, jnp.result_type(float)))

    def update(self, x: jax.Array) -> "RunningMeanStd":
        """Merge the moments of the batch x [..., *shape] (all leading entries) into the running ones."""
        x = jax.lax.stop_gradient(x).reshape((-1,) + self.mean.shape)
        n, batch_mean, batch_var = x.shape[0], jnp.mean(x, 0), jnp.var(x, 0)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total
        return RunningMeanStd(mean, m2 / total, total)

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(self.var + 1e-6)

    def normalize(self, x: jax.Array, clip: float = 5.0) -> jax.Array:
        """(x - mean) / std, clipped to [-clip, clip]."""
        return jnp.clip((x - self.mean) / self.std, -clip, clip)


def adam_with_decay(cfg: ActorCriticConfig, lr: float, clip: float) -> optax.GradientTransformation:
    """Global-norm clip, then Adam (betas cfg.betas) with lr decaying linearly to cfg.final_lr."""
    schedule = optax.linear_schedule(lr, cfg.final_lr, cfg.lr_decay_updates)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule, b1=cfg.betas[0], b2=cfg.betas[1]))


def zero_if_not_finite(grads: Any) -> tuple[Any, jax.Array]:
    """(the gradients, or zeros when any entry is NaN/inf; True if all were finite): a skipped step."""
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    return jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads), finite


def networks(cfg: ActorCriticConfig, action_size: int
             ) -> tuple[GaussianActor, ValueEnsemble, optax.GradientTransformation, optax.GradientTransformation]:
    """(actor, critics, actor optimiser, critic optimiser) of a config."""
    actor = GaussianActor(cfg.actor_hidden, action_size, cfg.init_log_std, cfg.min_log_std, cfg.layers)
    critics = ValueEnsemble(cfg.num_critics, cfg.critic_hidden, cfg.layers)
    return (actor, critics, adam_with_decay(cfg, cfg.actor_lr, cfg.actor_grad_clip),
            adam_with_decay(cfg, cfg.critic_lr, cfg.critic_grad_clip))


def fit_critics(critics: ValueEnsemble, tx: optax.GradientTransformation, params: Any, opt_state: Any,
                inputs: jax.Array, targets: jax.Array, iterations: int, minibatches: int, key: jax.Array
                ) -> tuple[Any, Any, jax.Array]:
    """Regress every critic on the TD(lambda) targets (MSE, summed over critics): `iterations` passes over
    the data, each shuffled and split into `minibatches` contiguous minibatches (SHAC, Alg. 1).

    inputs [N, X] and targets [N] are detached; N must divide by `minibatches`. Returns the new params,
    optimiser state and the mean loss of the last pass.
    """
    n = inputs.shape[0]
    if n % minibatches:
        raise ValueError(f"critic data of {n} samples does not split into {minibatches} minibatches")
    inputs, targets = jax.lax.stop_gradient(inputs), jax.lax.stop_gradient(targets)

    def loss_fn(p, x, y):
        return jnp.mean(jnp.sum((critics.apply({"params": p}, x) - y[None]) ** 2, axis=0))

    def minibatch_step(carry, idx):
        p, opt = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, inputs[idx], targets[idx])
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    def one_pass(carry, k):
        order = jax.random.permutation(k, n).reshape(minibatches, n // minibatches)
        carry, losses = jax.lax.scan(minibatch_step, carry, order)
        return carry, jnp.mean(losses)

    (params, opt_state), pass_losses = jax.lax.scan(one_pass, (params, opt_state), jax.random.split(key, iterations))
    return params, opt_state, pass_losses[-1]
