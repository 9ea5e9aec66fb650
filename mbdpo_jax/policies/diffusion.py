"""A K-step diffusion policy over the pre-tanh action, as in DA-MDP (arXiv 2512.02019).

Chain, indexed t = 0..K (x_0 is noise, x_K the pre-tanh action, a = tanh(x_K)):

    prior       x_0 ~ N(0, sigma_0^2 I)
    generative  pi_theta(x_{t+1} | x_t, s) = N(x_t + eta_t (f(x_t) + u_theta(x_t, s, t)), 2 eta_t I)
    backward    q(x_t | x_{t+1})            = N(x_{t+1} + eta_{t+1} f(x_{t+1}), 2 eta_{t+1} I)

with the prior's score f(x) = -x / sigma_0^2 as drift, eta_t = softplus(dt_t) / softplus(friction)
(per-dimension friction, one dt per step), both learned. q learns nothing of its own but shares eta,
so log q carries gradients to dt and friction. eta_{t+1} at t + 1 = K (q of the last step) is
eta_{K-1}: the reference gathers dt[K] from a K-long array, which JAX clamps to the last entry. q's
drift is taken at x_{t+1}, which keeps q a normalised density in x_t (the reference's latest kernel
code passes x_t there; earlier commits x_{t+1} with eta_t). The ODE sampler steps x + eta_t (f + 0.5 u).

Initialisation (reference): dt_t = dt_scale * schedule(t), schedule(t) = r + (1 - r) dt_min with
r = (K - t) / K ('linear': 1 at t = 0 falling to 1/K + (1 - 1/K) dt_min at t = K - 1; 'constant': 1);
friction 0.25; u_theta's last layer scaled by `last_layer_scale` (1e-8), so u is about 0 at init.

    policy = DiffusionPolicy(DiffusionPolicyConfig(), obs_size, action_size)
    params = policy.init(key)                       # {"score": ..., "dt": [K], "friction": [A]}
    chain = policy.sample_chain(params, s, key)     # latents [K+1, A], log_pi [K], log_q [K], action [A]

Every method acts on one state and is pure: vmap over states (and keys) for a batch; samples are
reparameterised, so jax.grad flows through `sample_chain`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULES = ("linear", "constant")
MODES = ("sde", "ode")
ODE_SCORE_COEFF = 0.5  # probability-flow step: x + eta (f + 0.5 u) (reference REPPO evaluation)

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DiffusionPolicyConfig:
    """Settings of the diffusion chain; defaults are the reference's DA-MDP:REPPO ones."""

    steps: int = 8
    """K: denoising steps (augmented MDP steps per env step)."""
    sigma_0: float = 3.0
    """Standard deviation of the prior N(0, sigma_0^2 I); the drift is -x / sigma_0^2."""
    dt_scale: float = 0.125
    """Initial dt_t = dt_scale * schedule(t) (before softplus)."""
    dt_schedule: str = "linear"
    """One of SCHEDULES: the shape of the initial dt over steps."""
    dt_min: float = 0.17
    """The linear schedule's floor: schedule(t) = r + (1 - r) dt_min, r = (K - t) / K."""
    friction: float = 0.25
    """Initial softplus(friction) of every action dimension."""
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    """u_theta's hidden widths (Dense -> GELU each)."""
    time_features: int = 32
    """Fourier frequencies of the time embedding (sin and cos of each)."""
    time_out: int = 16
    """Width of the embedded time fed to u_theta."""
    last_layer_scale: float = 1e-8
    """u_theta's output layer starts as this times a LeCun-normal kernel, zero bias (0: u = 0)."""

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad setting and its allowed range."""
        rules = [
            ("steps", isinstance(self.steps, int) and self.steps >= 1, "an integer >= 1"),
            ("sigma_0", self.sigma_0 > 0, "> 0"),
            ("dt_scale", self.dt_scale > 0, "> 0"),
            ("dt_schedule", self.dt_schedule in SCHEDULES, " or ".join(SCHEDULES)),
            ("dt_min", 0 < self.dt_min <= 1, "in (0, 1]"),
            ("friction", self.friction > 0, "> 0"),
            ("hidden", len(self.hidden) > 0 and min(self.hidden) > 0, "a non-empty tuple of widths >= 1"),
            ("time_features", self.time_features >= 1, ">= 1"),
            ("time_out", self.time_out >= 1, ">= 1"),
            ("last_layer_scale", self.last_layer_scale >= 0, ">= 0"),
        ]
        for name, ok, allowed in rules:
            if not ok:
                raise ValueError(f"invalid diffusion policy setting {name}={getattr(self, name)!r}; "
                                 f"allowed: {allowed}")


def config_of(cfg: Any) -> DiffusionPolicyConfig:
    """The chain's settings from an agent config holding them under the flag names diffusion_steps, sigma_0,
    dt_scale, dt_schedule, dt_min, friction, score_hidden, time_features, time_out, last_layer_scale
    (DA-MDP:PPO's and DA-MDP:REPPO's)."""
    return DiffusionPolicyConfig(
        steps=cfg.diffusion_steps, sigma_0=cfg.sigma_0, dt_scale=cfg.dt_scale, dt_schedule=cfg.dt_schedule,
        dt_min=cfg.dt_min, friction=cfg.friction, hidden=tuple(cfg.score_hidden), time_features=cfg.time_features,
        time_out=cfg.time_out, last_layer_scale=cfg.last_layer_scale)


def dt_init(cfg: DiffusionPolicyConfig) -> np.ndarray:
    """Initial per-step dt_t (after softplus), t = 0..K-1 (see the module docstring)."""
    t = np.arange(cfg.steps, dtype=np.float64)
    if cfg.dt_schedule == "constant":
        return np.full(cfg.steps, cfg.dt_scale)
    r = (cfg.steps - t) / cfg.steps
    return cfg.dt_scale * (r + (1.0 - r) * cfg.dt_min)


def inverse_softplus(y: np.ndarray | float) -> np.ndarray:
    """x with softplus(x) = y, for y > 0."""
    return np.log(np.expm1(np.asarray(y, np.float64)))


def gaussian_log_prob(x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """log N(x; mean, diag(var)), summed over the last axis."""
    return -0.5 * jnp.sum(jnp.log(2 * jnp.pi * var) + (x - mean) ** 2 / var, axis=-1)


def scaled_lecun_normal(scale: float) -> Any:
    """LeCun-normal initialiser times `scale` (exact zeros at scale 0)."""
    base = nn.initializers.lecun_normal()
    return lambda key, shape, dtype=jnp.float32: scale * base(key, shape, dtype)


class TimeEmbedding(nn.Module):
    """Fourier features sin/cos(c_i t + phase_i), c = linspace(0.1, 100) fixed, phase learned, then
    Dense -> GELU -> Dense (the reference's time coder)."""

    features: int
    out: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        coeff = jnp.linspace(0.1, 100.0, self.features)
        phase = self.param("phase", nn.initializers.zeros, (self.features,))
        arg = coeff * t + phase
        emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)
        return nn.Dense(self.out)(nn.gelu(nn.Dense(self.features)(emb)))


class ScoreNet(nn.Module):
    """u_theta(x_t, s, t): an MLP (Dense -> GELU per hidden width) on [x_t, s, embed(t)]; its output
    layer, named 'head', starts near zero."""

    action_size: int
    hidden: tuple[int, ...]
    time_features: int
    time_out: int
    last_layer_scale: float

    @nn.compact
    def __call__(self, x: jax.Array, s: jax.Array, t: jax.Array) -> jax.Array:
        emb = TimeEmbedding(self.time_features, self.time_out)(jnp.asarray(t, x.dtype)[..., None])
        h = jnp.concatenate([x, s, emb], axis=-1)
        for width in self.hidden:
            h = nn.gelu(nn.Dense(width)(h))
        return nn.Dense(self.action_size, kernel_init=scaled_lecun_normal(self.last_layer_scale),
                        name="head")(h)


@struct.dataclass
class Chain:
    """One sampled chain: latents x_0..x_K [K+1, A], log pi(x_{t+1}|x_t, s) and log q(x_t|x_{t+1})
    per step [K], the prior's log N(x_0; 0, sigma_0^2 I) (scalar) and the action tanh(x_K) [A]."""

    latents: jax.Array
    log_pi: jax.Array
    log_q: jax.Array
    log_prior: jax.Array
    action: jax.Array


@dataclasses.dataclass(frozen=True)
class DiffusionPolicy:
    """The chain's pure functions for one config and env sizes (hashable: safe as a static argument)."""

    cfg: DiffusionPolicyConfig
    obs_size: int
    action_size: int

    def __post_init__(self) -> None:
        self.cfg.validate()

    @property
    def net(self) -> ScoreNet:
        """The Linen module of u_theta."""
        c = self.cfg
        return ScoreNet(self.action_size, tuple(c.hidden), c.time_features, c.time_out, c.last_layer_scale)

    def init(self, key: jax.Array) -> Params:
        """Parameters {"score": u_theta's variables, "dt": raw [K], "friction": raw [A]} (raw = before
        softplus), in the default float dtype for dt and friction."""
        x = jnp.zeros(self.action_size)
        score = self.net.init(key, x, jnp.zeros(self.obs_size), jnp.zeros((), jnp.int32))
        dtype = jnp.zeros(()).dtype
        return {
            "score": score,
            "dt": jnp.asarray(inverse_softplus(dt_init(self.cfg)), dtype),
            "friction": jnp.full(self.action_size, inverse_softplus(self.cfg.friction), dtype),
        }

    def eta(self, params: Params, t: jax.Array) -> jax.Array:
        """eta_t = softplus(dt_t) / softplus(friction) [A] for a scalar step t, clamped to 0..K-1."""
        index = jnp.clip(jnp.asarray(t, jnp.int32), 0, self.cfg.steps - 1)
        return jax.nn.softplus(jnp.asarray(params["dt"])[index]) / jax.nn.softplus(jnp.asarray(params["friction"]))

    def drift(self, x: jax.Array) -> jax.Array:
        """f(x) = -x / sigma_0^2, the score of the prior."""
        return -x / self.cfg.sigma_0**2

    def score(self, params: Params, s: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
        """u_theta(x_t, s, t) [A]."""
        return self.net.apply(params["score"], x, s, t)

    def step_mean(self, params: Params, s: jax.Array, x_t: jax.Array, t: jax.Array,
                  score_coeff: float = 1.0) -> jax.Array:
        """x_t + eta_t (f(x_t) + score_coeff * u_theta(x_t, s, t)): pi's mean (1) or the ODE step (0.5)."""
        u = self.score(params, s, x_t, t)
        return x_t + self.eta(params, t) * (self.drift(x_t) + score_coeff * u)

    def step_log_prob(self, params: Params, s: jax.Array, x_t: jax.Array, x_next: jax.Array,
                      t: jax.Array) -> jax.Array:
        """log pi_theta(x_{t+1} = x_next | x_t, s) (scalar, exact Gaussian density)."""
        eta = self.eta(params, t)
        return gaussian_log_prob(x_next, self.step_mean(params, s, x_t, t), 2 * eta)

    def backward_log_prob(self, params: Params, x_t: jax.Array, x_next: jax.Array,
                          t: jax.Array) -> jax.Array:
        """log q(x_t | x_{t+1} = x_next) = log N(x_t; x_next + eta_{t+1} f(x_next), 2 eta_{t+1} I)."""
        eta = self.eta(params, jnp.asarray(t) + 1)
        return gaussian_log_prob(x_t, x_next + eta * self.drift(x_next), 2 * eta)

    def prior_log_prob(self, x_0: jax.Array) -> jax.Array:
        """log N(x_0; 0, sigma_0^2 I)."""
        return gaussian_log_prob(x_0, jnp.zeros_like(x_0), jnp.full_like(x_0, self.cfg.sigma_0**2))

    def chain_log_probs(self, params: Params, s: jax.Array, latents: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(log pi [K], log q [K]) of a stored chain latents [K+1, A], recomputed under `params`."""
        t = jnp.arange(self.cfg.steps)
        step = jax.vmap(self.step_log_prob, in_axes=(None, None, 0, 0, 0))
        back = jax.vmap(self.backward_log_prob, in_axes=(None, 0, 0, 0))
        return (step(params, s, latents[:-1], latents[1:], t),
                back(params, latents[:-1], latents[1:], t))

    def sample_chain(self, params: Params, s: jax.Array, key: jax.Array, mode: str = "sde") -> Chain:
        """Run the chain from a fresh x_0 for state s [obs_size].

        mode 'sde': x_{t+1} = mean_t + sqrt(2 eta_t) eps_t (reparameterised); 'ode': x_{t+1} = x_t +
        eta_t (f(x_t) + 0.5 u), deterministic given x_0. log_pi / log_q are the kernels' densities at
        the produced latents in both modes (for 'ode' they describe points the SDE did not sample).
        """
        if mode not in MODES:
            raise ValueError(f"invalid sampling mode {mode!r}; allowed: {' or '.join(MODES)}")
        prior_key, noise_key = jax.random.split(key)
        x_0 = self.cfg.sigma_0 * jax.random.normal(prior_key, (self.action_size,))
        noise = jax.random.normal(noise_key, (self.cfg.steps, self.action_size))

        def body(x: jax.Array, inputs: tuple[jax.Array, jax.Array]):
            t, eps = inputs
            eta = self.eta(params, t)
            if mode == "ode":
                x_next = self.step_mean(params, s, x, t, ODE_SCORE_COEFF)
                log_pi = self.step_log_prob(params, s, x, x_next, t)
            else:
                x_next = self.step_mean(params, s, x, t) + jnp.sqrt(2 * eta) * eps
                # log N(mean + sqrt(2 eta) eps; mean, 2 eta): no second pass through u_theta
                log_pi = -0.5 * jnp.sum(jnp.log(2 * jnp.pi * 2 * eta) + eps**2)
            return x_next, (x_next, log_pi, self.backward_log_prob(params, x, x_next, t))

        _, (rest, log_pi, log_q) = jax.lax.scan(body, x_0, (jnp.arange(self.cfg.steps), noise))
        latents = jnp.concatenate([x_0[None], rest], axis=0)
        return Chain(latents, log_pi, log_q, self.prior_log_prob(x_0), jnp.tanh(latents[-1]))
