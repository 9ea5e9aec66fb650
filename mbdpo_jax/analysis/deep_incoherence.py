"""Sampled incoherence of a learned continuous-action policy against its own critic (float32; pure,
jit- and vmap-safe).

The per-state term of the Boltzmann incoherence of Karwowski & Douglas (arXiv 2510.06545; the exact
tabular version is `analysis.incoherence`) is

    kappa_delta(s) = KL(pi(.|s) || softmax(Q(s, .) / delta))
                   = E_{a~pi}[log pi(a|s) - Q(s, a) / delta] + log Z(s),
    Z(s) = integral over the action box of exp(Q(s, a) / delta) da.

With N samples a_i ~ pi(.|s) and w_i = Q(s, a_i) / delta - log pi(a_i|s), the expectation is estimated
by the sample mean and Z by importance sampling with pi as the proposal, Z ~ mean_i exp(w_i):

    kappa_hat(s) = log mean_i exp(w_i) - mean_i w_i = KL(uniform_N || softmax_i(w_i)),

the KL between uniform weights and the self-normalised importance weights. It is >= 0 (Jensen), 0 when
pi is exactly softmax(Q / delta) (all w_i equal), and consistent as N grows; for finite N it is biased
low (the log of an unbiased estimate of Z is biased low), by about chi^2(softmax(Q/delta) || pi) / (2N)
for large N. The bias is large whenever pi is more concentrated than softmax(Q / delta): pi then seldom
samples where exp(Q / delta) has its mass, the importance weights are heavy-tailed and the estimate
grows only slowly with N. A near-deterministic prior against a flat Q is the common case (the KL is then
about log(box volume) - H(pi)): for an untrained tiny tdmpc2 prior on toy/pendulum (mean over 8 states),
0.46 at N = 32 and 0.77 at N = 2048 against 3.98 by quadrature over the action box. Treat it as a lower
estimate, not as the KL itself; since its bias depends on how concentrated pi is, even runs compared at
the same N and delta differ in bias as well as in incoherence.

The default proposal is therefore the defensive mixture m = (pi + U) / 2 of the policy and the uniform
density U on the action box (`incoherence_proposal="mixture"`, `mixture_incoherence`): N samples of pi
and N uniform ones, the expectation over the pi samples and

    Z ~ (1 / 2N) sum over all 2N samples b_j of exp(Q(s, b_j) / delta) / m(b_j)

(the balance heuristic: unbiased, and its weights are bounded by 2 exp(Q / delta) / U, so a concentrated
pi no longer starves the integral). It costs 2N evaluations of Q. It is consistent, still biased low on
average (log of an unbiased Z), and can be slightly negative at one state (it is not exactly 0 at the
Boltzmann policy). On the case above: 3.975 against 3.98 at N = 32 (mean over the same 8 states), and
8.41 against 8.39 after 6,000 training steps where the policy-only estimate gives 3.60.

Densities are of the squashed action a = tanh(u) in (-1, 1)^A, with the tanh Jacobian, and Q is
evaluated at that same action: both are then densities on the action box the integral runs over.

    actions, log_pi = squashed_gaussian_samples(key, mean, log_std, num)     # [num, A], [num]
    kappa = sampled_incoherence(log_pi, q(actions), delta)                  # scalar
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from mbdpo_jax.models.actor_critic import tanh_log_det_jacobian


PROPOSALS = ("mixture", "policy")


@dataclasses.dataclass(frozen=True)
class IncoherenceConfig:
    """The evaluation-time estimate of the learned policy's incoherence against its own critic."""

    incoherence_samples: int = 32
    """Samples of the policy per evaluated state for the sampled incoherence (aux 'incoherence', logged
    as 'eval_incoherence'); 0 switches it off. Biased low for small values."""
    incoherence_delta: float = 1.0
    """Temperature delta of softmax(Q / delta), in the critic's units."""
    incoherence_proposal: str = "mixture"
    """Proposal of the log Z estimate: mixture (policy + uniform on the action box, N of each) or policy."""

    def validate(self) -> None:
        """One-line error naming the bad value and the allowed ones."""
        n = self.incoherence_samples
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0 or n == 1:
            raise ValueError(f"incoherence-samples must be 0 (off) or an integer >= 2, got {n!r}")
        if not (isinstance(self.incoherence_delta, numbers.Real) and math.isfinite(self.incoherence_delta)
                and self.incoherence_delta > 0):
            raise ValueError(f"incoherence-delta must be a finite number > 0, got {self.incoherence_delta!r}")
        if self.incoherence_proposal not in PROPOSALS:
            raise ValueError(f"incoherence-proposal must be one of {', '.join(PROPOSALS)}, "
                             f"got {self.incoherence_proposal!r}")

    @property
    def enabled(self) -> bool:
        return self.incoherence_samples > 0


def sampled_incoherence(log_prob: jax.Array, q: jax.Array, delta: float | jax.Array) -> jax.Array:
    """kappa_hat = log mean_i exp(w_i) - mean_i w_i, w_i = q_i / delta - log_prob_i, over the last axis.

    log_prob: log pi(a_i|s) of samples a_i ~ pi(.|s) [..., N]; q: Q(s, a_i) [..., N]. Leading axes are
    kept (one estimate per state). See the module docstring for what it estimates and its bias.
    """
    w = q / delta - log_prob
    w = w - jnp.mean(w, axis=-1, keepdims=True)  # centred first: the difference of two large numbers is exact
    return logsumexp(w, axis=-1) - jnp.log(w.shape[-1])


def squashed_gaussian_samples(key: jax.Array, mean: jax.Array, log_std: jax.Array, num: int,
                              mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """`num` actions a = tanh(mean + exp(log_std) eps) [num, A] and their log-density on the action box
    [num], log N(u; mean, std) - log(1 - a^2) summed over the dimensions where `mask` is 1 (masked
    dimensions are 0 in the actions and leave the density alone: they are not part of the task's box)."""
    mask = jnp.ones_like(mean) if mask is None else jnp.broadcast_to(mask, mean.shape)
    eps = jax.random.normal(key, (num,) + mean.shape, mean.dtype)
    u = mean + jnp.exp(log_std) * eps
    per_dim = -0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi) - tanh_log_det_jacobian(u)
    return jnp.tanh(u) * mask, jnp.sum(mask * per_dim, axis=-1)


def squashed_gaussian_log_prob(actions: jax.Array, mean: jax.Array, log_std: jax.Array,
                               mask: jax.Array | None = None) -> jax.Array:
    """log-density on the action box [...] of the tanh-squashed Gaussian at actions [..., A] in (-1, 1),
    over the dimensions where `mask` is 1."""
    mask = jnp.ones_like(mean) if mask is None else jnp.broadcast_to(mask, mean.shape)
    u = jnp.arctanh(actions)
    eps = (u - mean) * jnp.exp(-log_std)
    per_dim = -0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi) - jnp.log1p(-jnp.square(actions))
    return jnp.sum(mask * per_dim, axis=-1)


def mixture_incoherence(log_prob: jax.Array, q: jax.Array, box_log_prob: jax.Array, box_q: jax.Array,
                        log_box_density: float | jax.Array, delta: float | jax.Array) -> jax.Array:
    """KL(pi || softmax(Q / delta)) estimated with the defensive mixture proposal (module docstring), over
    the last axis: log_prob, q of N samples of pi [..., N]; box_log_prob (log pi there), box_q of N uniform
    samples of the action box [..., N]; log_box_density = log U (-A log 2 on [-1, 1]^A)."""
    log_pi = jnp.concatenate([log_prob, box_log_prob], axis=-1)
    log_m = jnp.logaddexp(log_pi, log_box_density) - jnp.log(2.0)
    log_z = logsumexp(jnp.concatenate([q, box_q], axis=-1) / delta - log_m, axis=-1) - jnp.log(log_m.shape[-1])
    return jnp.mean(log_prob - q / delta, axis=-1) + log_z


BOX_EDGE = 1.0 - 1e-6
"""Uniform samples are drawn on [-BOX_EDGE, BOX_EDGE]: arctanh stays finite in float32."""


def policy_incoherence(key: jax.Array, mean: jax.Array, log_std: jax.Array, q_fn: Callable[[jax.Array], jax.Array],
                       cfg: IncoherenceConfig, mask: jax.Array | None = None) -> jax.Array:
    """The estimate of `cfg` for a tanh-squashed Gaussian policy (mean, log_std [A]) against q_fn (actions
    [M, A] -> Q [M]) at one state: `sampled_incoherence` on incoherence_samples policy samples, or
    `mixture_incoherence` with as many uniform samples of the (masked) action box added."""
    k_pi, k_box = jax.random.split(key)
    n = cfg.incoherence_samples
    actions, log_pi = squashed_gaussian_samples(k_pi, mean, log_std, n, mask)
    if cfg.incoherence_proposal == "policy":
        return sampled_incoherence(log_pi, q_fn(actions), cfg.incoherence_delta)
    mask = jnp.ones_like(mean) if mask is None else jnp.broadcast_to(mask, mean.shape)
    box = jax.random.uniform(k_box, (n,) + mean.shape, mean.dtype, -BOX_EDGE, BOX_EDGE) * mask
    q = q_fn(jnp.concatenate([actions, box]))
    return mixture_incoherence(log_pi, q[:n], squashed_gaussian_log_prob(box, mean, log_std, mask), q[n:],
                               -jnp.sum(mask) * jnp.log(2.0), cfg.incoherence_delta)
