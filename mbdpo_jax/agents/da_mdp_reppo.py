"""DA-MDP:REPPO (arXiv 2512.02019, code sanokows/Diffusion-Augmented-Markov-Decision-Processes): REPPO
(`models.reppo`, as `agents.reppo`) on the diffusion-augmented MDP, with the K-step diffusion chain of
`policies.diffusion` as the policy.

    agent = DAMDPREPPO(DAMDPREPPOConfig(), env.spec)
    state = agent.init(key)
    action, aux = agent.act(state, obs, key, eval_mode)      # one env step: the whole K-step chain
    prepared = agent.prepare(state, trajectory)               # K augmented steps per env step, soft targets
    state, metrics = agent.update(state, minibatch, key)      # critic, pathwise actor, multipliers

Acting (as `agents.da_mdp_ppo`): `act` samples the whole chain x_0 -> x_K by the SDE for one env step
(in eval mode by `eval_sampler`, the ODE x + eta (f + 0.5 u) by default, as the reference's REPPO) and
returns clip(tanh(x_K), +-0.999); aux: the latents [K+1, A] and the noise [2, A] of a bootstrap
transition (x_0', x_1') at the state the env step reaches. `prepare` unrolls every env step into its K
augmented steps (s, x_k, k) --x_{k+1}--> (s, x_{k+1}, k + 1), the last leading to (s', x_0', 0).

Critic Q(s, x_k, x_{k+1}, k) on [normalised s, x_k / sigma_0, x_{k+1} / sigma_0, one_hot(k, K)] (the
reference feeds a time embedding; a one-hot of k is this library's), `models.reppo.CategoricalQ`. Soft
targets (`models.reppo.soft_lambda_returns` over the T K augmented steps, gamma and lambda per augmented
step): step k earns where(k = K-1, reward_scale r, 0) - gamma alpha sg(log pi - log q) of the next
augmented action: the stored x_{k+1} -> x_{k+2} for k < K - 1 (the same env state, the chain sampled
with the current policy), the bootstrap x_0' -> x_1' at s' for the last step, whose Q(s', x_0', x_1', 0)
bootstraps it; terminations cut and truncations bootstrap at the last denoising step only. Aux losses
(next-env-step embedding h(s', x_0', x_1', 0) and the reward) on final steps only, weight 0.1.

Actor, per augmented step of a minibatch of env-step rows: x~ = mean_theta(x_k, s, k) + sqrt(2 eta_k) eps
reparameterised, the loss where(KL < bound, sg(alpha)(log pi(x~|x_k, s) - log q(x_k|x~)) - Q_sg(s, x_k, x~, k),
sg(lambda_KL) KL), KL = K x the 16-sample KL(pi_old(.|x_k, s) || pi(.|x_k, s)) of that step's Gaussian
kernel, pi_old the chain at prepare time (its per-step mean and scale are stored). The gradient reaches
u_theta, dt and friction through x~ and through the log-densities. Temperature loss alpha sg(H - H_target)
with H = -K mean(log pi - log q) and H_target = entropy_target |A| (reference: -5 |A|); lambda_KL as in
`agents.reppo`. Observations are normalised as in `agents.ppo`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.envs.diffusion_augmented import ACTION_CLIP
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models import hl_gauss
from mbdpo_jax.models import policy_gradient as pg
from mbdpo_jax.models import reppo
from mbdpo_jax.policies.diffusion import (MODES, DiffusionPolicy, DiffusionPolicyConfig, config_of,
                                          gaussian_log_prob)


@dataclasses.dataclass(frozen=True)
class DAMDPREPPOConfig:
    """DA-MDP:REPPO's settings; defaults are the reference's (K = 8, score net 4 x 256, critic 2 x 512, 8
    epochs x 64 minibatches, lr 1e-3, gamma 0.999 and lambda 0.98 per augmented step, KL bound 0.04 with
    K x 16 samples, entropy target -5 |A|, multipliers on Adam 3e-4 from alpha 0.01 and lambda_KL 0.3,
    HL-Gauss 151 bins on [-100, 200], grad clip 0.5, ODE evaluation). A rollout of 16 env steps is the
    reference's 128 augmented steps at K = 8."""

    diffusion_steps: int = 8
    sigma_0: float = 3.0
    dt_scale: float = 0.125
    dt_schedule: str = "linear"
    dt_min: float = 0.17
    friction: float = 0.25
    score_hidden: tuple[int, ...] = (256, 256, 256, 256)
    time_features: int = 32
    time_out: int = 16
    last_layer_scale: float = 1e-8
    critic_hidden: tuple[int, ...] = (512, 512)
    num_bins: int = 151
    v_min: float = -100.0
    v_max: float = 200.0
    sigma_ratio: float = 0.75
    num_steps: int = 16
    """Env steps per env in one rollout (K augmented steps each)."""
    epochs: int = 8
    minibatches: int = 64
    """Minibatches of env-step rows per pass; they must divide num_envs x num_steps."""
    learning_rate: float = 1e-3
    grad_clip: float = 0.5
    gamma: float = 0.999
    """Discount per augmented (denoising) step."""
    td_lambda: float = 0.98
    """TD(lambda) per augmented step."""
    kl_bound: float = 0.04
    kl_samples: int = 16
    init_alpha: float = 0.01
    init_lambda_kl: float = 0.3
    multiplier_lr: float = 3e-4
    entropy_target: float = -5.0
    """Target of the chain's entropy estimate per action dimension."""
    aux_loss: bool = True
    reward_scale: float = 1.0
    normalize_obs: bool = True
    eval_sampler: str = "ode"
    """How eval mode samples the chain: ode (the reference REPPO's) or sde."""

    def validate(self) -> None:
        """One-line error naming the bad value and the allowed range."""
        steps = self.diffusion_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"diffusion-steps must be an integer >= 1, got {self.diffusion_steps!r}")
        if self.eval_sampler not in MODES:
            raise ValueError(f"eval-sampler must be one of {', '.join(MODES)}, got {self.eval_sampler!r}")
        reppo.check_settings(self, ("score_hidden", "critic_hidden"))
        self.policy_config().validate()

    def policy_config(self) -> DiffusionPolicyConfig:
        """The diffusion chain's settings."""
        return config_of(self)


@struct.dataclass
class DAMDPREPPOState:
    params: dict
    """{"policy" ({"score", "dt", "friction"}), "critic", "log_alpha", "log_lambda_kl"}."""
    opt: optax.OptState
    obs_stats: ac.RunningMeanStd


class DAMDPREPPO:
    """DA-MDP:REPPO agent: static config + env spec; all methods are pure (`agents.protocols.OnPolicyAgent`)."""

    regime = "on_policy"

    def __init__(self, cfg: DAMDPREPPOConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        if num_tasks != 1:
            raise ValueError(f"da-mdp-reppo is single-task, got num_tasks={num_tasks}")
        self.cfg, self.spec = cfg, spec
        self.num_steps, self.epochs, self.minibatches = cfg.num_steps, cfg.epochs, cfg.minibatches
        self.bins = hl_gauss.HLGauss(cfg.num_bins, cfg.v_min, cfg.v_max, cfg.sigma_ratio)
        self.policy = DiffusionPolicy(cfg.policy_config(), spec.obs_size, spec.action_size)
        self.q_net = reppo.CategoricalQ(tuple(cfg.critic_hidden), cfg.num_bins)
        self.tx = reppo.optimizer(cfg.learning_rate, cfg.grad_clip, cfg.multiplier_lr)
        self.target_entropy = cfg.entropy_target * spec.action_size

    @property
    def K(self) -> int:
        return self.cfg.diffusion_steps

    def init(self, key: jax.Array) -> DAMDPREPPOState:
        k_policy, k_critic = jax.random.split(key)
        x = jnp.zeros(self.spec.action_size)
        q_in = self.q_input(jnp.zeros(self.spec.obs_size), x, x, jnp.zeros((), jnp.int32))
        params = {"policy": self.policy.init(k_policy), "critic": self.q_net.init(k_critic, q_in)["params"],
                  **reppo.init_multipliers(self.cfg.init_alpha, self.cfg.init_lambda_kl)}
        return DAMDPREPPOState(params, self.tx.init(params), ac.RunningMeanStd.create((self.spec.obs_size,)))

    def normalize(self, state: DAMDPREPPOState, obs: jax.Array) -> jax.Array:
        return state.obs_stats.normalize(obs) if self.cfg.normalize_obs else obs

    def q_input(self, s: jax.Array, x: jax.Array, x_next: jax.Array, k: jax.Array) -> jax.Array:
        """[s, x_k / sigma_0, x_{k+1} / sigma_0, one_hot(k, K)] (leading axes broadcast against k's)."""
        s = jnp.broadcast_to(s, x.shape[:-1] + s.shape[-1:])
        k = jnp.broadcast_to(k, x.shape[:-1])
        scale = self.cfg.sigma_0
        return jnp.concatenate([s, x / scale, x_next / scale, jax.nn.one_hot(k, self.K, dtype=s.dtype)], axis=-1)

    def q(self, critic: Any, s: jax.Array, x: jax.Array, x_next: jax.Array, k: jax.Array) -> jax.Array:
        """Q(s, x_k, x_{k+1}, k): the expected bin centre."""
        logits = self.q_net.apply({"params": critic}, self.q_input(s, x, x_next, k))[0]
        return hl_gauss.expected_value(logits, self.bins)

    def kernels(self, policy: Any, s: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, scale) [B, K, A] of pi(x_{k+1} | x_k, s) at latents x [B, K, A] (k = 0..K-1), states [B, O]."""
        steps = jnp.arange(self.K)
        per_row = jax.vmap(self.policy.step_mean, in_axes=(None, None, 0, 0))
        mean = jax.vmap(per_row, in_axes=(None, 0, 0, None))(policy, s, x, steps)
        scale = jnp.sqrt(2.0 * jax.vmap(self.policy.eta, in_axes=(None, 0))(policy, steps))
        return mean, jnp.broadcast_to(scale, mean.shape)

    def log_ratio(self, policy: Any, x: jax.Array, x_next: jax.Array, mean: jax.Array, scale: jax.Array,
                  k: jax.Array) -> jax.Array:
        """log pi(x_next | x, s) - log q(x | x_next) of kernels (mean, scale) [..., A], steps k [...]."""
        back = self.policy.backward_log_prob
        for _ in range(k.ndim):
            back = jax.vmap(back, in_axes=(None, 0, 0, 0))
        return gaussian_log_prob(x_next, mean, jnp.square(scale)) - back(policy, x, x_next, k)

    def bootstrap(self, policy: Any, s: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(x_0', x_1', log pi - log q of that step) at normalised states s [B, O] from noise [B, 2, A]."""
        x0 = self.cfg.sigma_0 * noise[:, 0]
        zero = jnp.zeros(s.shape[:1], jnp.int32)
        mean = jax.vmap(self.policy.step_mean, in_axes=(None, 0, 0, 0))(policy, s, x0, zero)
        scale = jnp.broadcast_to(jnp.sqrt(2.0 * self.policy.eta(policy, 0)), mean.shape)
        x1 = mean + scale * noise[:, 1]
        return x0, x1, self.log_ratio(policy, x0, x1, mean, scale, zero)

    def act(self, state: DAMDPREPPOState, obs: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, dict]:
        """clip(tanh(x_K)) of a chain sampled by the SDE (in eval mode by `eval_sampler`); aux: the latents
        [K+1, A] and the noise [2, A] of the bootstrap transition at the next state."""
        k_chain, k_next = jax.random.split(key)
        mode = self.cfg.eval_sampler if eval_mode else "sde"
        chain = self.policy.sample_chain(state.params["policy"], self.normalize(state, obs), k_chain, mode)
        action = jnp.clip(chain.action, -ACTION_CLIP, ACTION_CLIP)
        return action, {"latents": chain.latents, "next_noise": jax.random.normal(k_next, (2, self.spec.action_size))}

    def prepare(self, state: DAMDPREPPOState, trajectory: dict) -> dict:
        """Per env step: normalised s and s' (the acting statistics), the latents, the bootstrap transition,
        soft TD(lambda) targets [K] and the chain's kernels (mean, scale) [K, A] at prepare time."""
        cfg, K, params = self.cfg, self.K, state.params
        policy = params["policy"]
        reward = cfg.reward_scale * trajectory["reward"]
        T, N = reward.shape
        flat = lambda x: x.reshape((T * N,) + x.shape[2:])
        rows = lambda x: x.reshape((T, N) + x.shape[1:])
        s, s_next = self.normalize(state, trajectory["obs"]), self.normalize(state, trajectory["next_obs"])
        latents = trajectory["latents"]  # [T, N, K+1, A]
        steps = jnp.arange(K)
        mean, scale = self.kernels(policy, flat(s), flat(latents[:, :, :K]))
        ratio = self.log_ratio(policy, flat(latents[:, :, :K]), flat(latents[:, :, 1:]), mean, scale,
                               jnp.broadcast_to(steps, (T * N, K)))
        x0, x1, next_env_ratio = self.bootstrap(policy, flat(s_next), flat(trajectory["next_noise"]))
        q = self.q(params["critic"], flat(s)[:, None], flat(latents[:, :, :K]), flat(latents[:, :, 1:]), steps)
        next_env_q = self.q(params["critic"], flat(s_next), x0, x1, jnp.zeros((T * N,), jnp.int32))
        next_ratio = rows(jnp.concatenate([ratio[:, 1:], next_env_ratio[:, None]], axis=-1))
        next_q = rows(jnp.concatenate([q[:, 1:], next_env_q[:, None]], axis=-1))

        is_last = steps == K - 1
        at_last = lambda x: jnp.where(is_last, x[..., None].astype(next_q.dtype), 0.0)
        aug = lambda x: jnp.swapaxes(x, 1, 2).reshape(T * K, N)  # [T, N, K] -> time-major augmented steps
        target = reppo.soft_lambda_returns(aug(at_last(reward)), aug(next_ratio), aug(next_q),
                                           aug(at_last(trajectory["done"])), aug(at_last(trajectory["truncation"])),
                                           jnp.exp(params["log_alpha"]), cfg.gamma, cfg.td_lambda)
        return {"obs": s, "raw_obs": trajectory["obs"], "latents": latents, "next_obs": s_next, "next_x0": rows(x0),
                "next_x1": rows(x1), "reward": reward, "target": jnp.swapaxes(target.reshape(T, K, N), 1, 2),
                "old_mean": rows(mean), "old_scale": rows(scale)}

    def loss(self, params: dict, minibatch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """Critic + pathwise actor + multiplier losses on env-step rows (see the module docstring)."""
        critic_loss, critic_metrics = self.critic_loss(params, minibatch)
        policy_loss, actor_metrics = self.actor_loss(params, minibatch, key)
        total = critic_loss + policy_loss
        return total, {"total_loss": total, "critic_loss": critic_loss, **critic_metrics, **actor_metrics}

    def critic_loss(self, params: dict, minibatch: dict) -> tuple[jax.Array, dict]:
        """The categorical critic's loss (with its auxiliary terms) on env-step rows, and its metrics."""
        cfg, K = self.cfg, self.K
        s, latents = minibatch["obs"], minibatch["latents"]
        B = s.shape[0]
        steps = jnp.broadcast_to(jnp.arange(K), (B, K))
        x, x_next = latents[:, :K], latents[:, 1:]
        is_last = steps == K - 1
        following = jnp.concatenate([self.q_input(s[:, None], x[:, 1:], x_next[:, 1:], steps[:, 1:]),
                                     self.q_input(minibatch["next_obs"], minibatch["next_x0"], minibatch["next_x1"],
                                                  jnp.zeros((B,), jnp.int32))[:, None]], axis=1)
        return reppo.critic_loss(
            self.q_net, params["critic"], self.q_input(s[:, None], x, x_next, steps), minibatch["target"], following,
            jnp.where(is_last, minibatch["reward"][:, None], 0.0), is_last & cfg.aux_loss, self.bins)

    def actor_loss(self, params: dict, minibatch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """The pathwise trust-region actor loss plus the multipliers' losses on env-step rows, and metrics."""
        cfg, K = self.cfg, self.K
        s, latents = minibatch["obs"], minibatch["latents"]
        B = s.shape[0]
        steps = jnp.broadcast_to(jnp.arange(K), (B, K))
        x = latents[:, :K]
        k_step, k_kl = jax.random.split(key)
        policy = params["policy"]
        mean, scale = self.kernels(policy, s, x)
        x_tilde = mean + scale * jax.random.normal(k_step, mean.shape)
        log_ratio = self.log_ratio(policy, x, x_tilde, mean, scale, steps)
        q = self.q(jax.lax.stop_gradient(params["critic"]), s[:, None], x, x_tilde, steps)
        kl = K * reppo.sampled_gaussian_kl(minibatch["old_mean"], minibatch["old_scale"], mean, scale, k_kl,
                                           cfg.kl_samples)
        entropy = -K * jnp.mean(log_ratio)
        policy_loss, actor_metrics = reppo.actor_and_multiplier_losses(params, log_ratio, q, kl, entropy,
                                                                       self.target_entropy, cfg.kl_bound)
        eta = jnp.square(scale[0]) / 2.0
        return policy_loss, {"eta_mean": jnp.mean(eta), **actor_metrics}

    def update(self, state: DAMDPREPPOState, minibatch: dict, key: jax.Array) -> tuple[DAMDPREPPOState, dict]:
        """One step of every loss; the minibatch's raw observations are merged into the running statistics."""
        params, opt, metrics = pg.gradient_step(self.tx, self.loss, state.params, state.opt, minibatch, key)
        obs_stats = state.obs_stats.update(minibatch["raw_obs"]) if self.cfg.normalize_obs else state.obs_stats
        return DAMDPREPPOState(params, opt, obs_stats), metrics
