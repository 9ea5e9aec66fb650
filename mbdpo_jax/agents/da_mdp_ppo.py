"""DA-MDP:PPO (arXiv 2512.02019, code sanokows/Diffusion-Augmented-Markov-Decision-Processes): PPO on
the diffusion-augmented MDP, with a K-step diffusion policy (`policies.diffusion`) and an HL-Gauss
categorical value critic (`models.hl_gauss`).

    agent = DAMDPPO(DAMDPPOConfig(), env.spec)
    state = agent.init(key)
    action, aux = agent.act(state, obs, key, eval_mode)      # one env step: the whole K-step chain
    prepared = agent.prepare(state, trajectory)               # K augmented steps per env step, GAE
    state, metrics = agent.update(state, minibatch, key)      # clipped ratios per denoising step

Acting and env steps. `act` samples the whole chain x_0 -> x_K for one env step (the SDE; in eval mode
`eval_sampler`: the SDE by default, as the reference's PPO evaluates with its training sampler, or the
ODE x + eta (f + 0.5 u) that its REPPO evaluates with) and returns the action
clip(tanh(x_K), +-0.999); its aux holds the latents [K+1, A] and per-step log pi / log q [K]. So the
on-policy loop is unchanged and counts real env steps; `prepare` unrolls each env step into its K
augmented steps (s, x_k, k) -> (s, x_{k+1}, k + 1), the last one leading to (s', x_0', 0) of the
next env step.

Augmented rewards (`envs.diffusion_augmented.soft_rewards`, the reference PPO's placement): the step
x_k -> x_{k+1} earns -alpha (log pi(x_{k+1}|x_k, s) - log q(x_k|x_{k+1})) with the fixed coefficient
alpha = entropy_coef (reference 2e-4), and the last step also reward_scale x r; over one env step they
sum to reward_scale r + alpha * entropy_estimate. GAE runs over the T*K augmented steps with gamma and
lambda per augmented step (reference 0.999, 0.98); termination cuts and truncation bootstraps only at
the last denoising step.

Critic: V(s, x_k, k) on [normalised s, x_k / sigma_0, one_hot(k, K)], a swish MLP with num_bins
logits, trained by the HL-Gauss histogram loss on the TD(lambda) returns. The next augmented state after
the last denoising step is (s', x_0', 0) with x_0' the next env step's stored prior sample (at the last
step of a rollout, which has no next stored chain, this step's own x_0 stands in: also a draw of the
prior, though the one whose chain chose the action that led to s').

Loss per minibatch of env-step rows (each carrying its K denoising steps; advantages normalised over
the minibatch's B x K entries, their std `sd`):

    rho_k = pi_new(x_{k+1}|x_k, s) / pi_old(x_{k+1}|x_k, s)
    L = -mean_k min(rho_k A_k, clip(rho_k) A_k) - alpha / sd mean_k(sg(rho_k) log q_k)  + c_v CE_HL(V, R)

The second term (the reference's `dest_loss`) trains the learned dt and friction through log q, which
the soft rewards (data) do not; as in the reference it only passes gradient where the clipped
surrogate does. Not taken over from the reference: its re-centring of the advantage on the current
log-ratio, its critic's auxiliary next-embedding and reward losses, its masking of truncated steps out
of the value loss, and its optional soft-reward normalisation. Observations are normalised as in `agents.ppo`
(prepare uses the acting statistics, so the first minibatch's ratios are exactly 1).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.envs.diffusion_augmented import ACTION_CLIP, entropy_estimate, soft_rewards
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models import hl_gauss
from mbdpo_jax.models import policy_gradient as pg
from mbdpo_jax.nn.layers import SwishMLP
from mbdpo_jax.policies.diffusion import MODES, SCHEDULES, DiffusionPolicy, DiffusionPolicyConfig, config_of


@dataclasses.dataclass(frozen=True)
class DAMDPPOConfig:
    """DA-MDP:PPO's settings; defaults are the reference's where it states them (K = 8, soft-reward
    coefficient 2e-4, gamma 0.999 and lambda 0.98 per augmented step, ratio clip 0.2, 12 epochs, lr 1e-4,
    score net 4 x 256, HL-Gauss 151 bins on [-100, 200], sigma 0.75 bin widths, grad clip 0.5)."""

    diffusion_steps: int = 8
    """K: denoising steps (augmented MDP steps) per env step."""
    sigma_0: float = 3.0
    """Standard deviation of the chain's prior N(0, sigma_0^2 I)."""
    dt_scale: float = 0.125
    """Initial dt_t = dt_scale * schedule(t) (learned)."""
    dt_schedule: str = "linear"
    """Shape of the initial dt over the steps: linear or constant."""
    dt_min: float = 0.17
    """The linear dt schedule's floor."""
    friction: float = 0.25
    """Initial softplus(friction) per action dimension (learned)."""
    score_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Hidden widths of the score net u_theta(x_t, s, t)."""
    time_features: int = 32
    time_out: int = 16
    last_layer_scale: float = 1e-8
    """The score net's output layer starts at this times a LeCun-normal kernel (u about 0)."""
    value_hidden: tuple[int, ...] = (512, 512)
    """Hidden widths of the value MLP V(s, x_k, k)."""
    num_bins: int = 151
    """HL-Gauss bins of the value head."""
    v_min: float = -100.0
    v_max: float = 200.0
    sigma_ratio: float = 0.75
    """HL-Gauss target std in bin widths."""
    num_steps: int = 16
    """Env steps per env in one rollout (K augmented steps each)."""
    epochs: int = 12
    minibatches: int = 32
    """Minibatches of env-step rows per pass; they must divide num_envs x num_steps."""
    learning_rate: float = 1e-4
    grad_clip: float = 0.5
    gamma: float = 0.999
    """Discount per augmented (denoising) step."""
    gae_lambda: float = 0.98
    """GAE lambda per augmented step."""
    clip_ratio: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 2e-4
    """alpha: the fixed soft-reward coefficient of -(log pi - log q)."""
    reward_scale: float = 1.0
    """Env rewards are multiplied by this in the augmented rewards."""
    train_kernel: bool = True
    """Add the -sg(ratio) log q term that trains dt and friction."""
    normalize_obs: bool = True
    normalize_advantages: bool = True
    eval_sampler: str = "sde"
    """How eval mode samples the chain: sde (as the reference's PPO evaluates) or ode (x + eta (f + 0.5 u),
    as its REPPO does)."""

    def validate(self) -> None:
        """One-line error naming the bad value and the allowed range."""
        for name in ("diffusion_steps", "num_steps", "epochs", "minibatches", "time_features", "time_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        for name in ("sigma_0", "dt_scale", "friction", "learning_rate", "grad_clip", "clip_ratio", "reward_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("value_coef", "entropy_coef", "last_layer_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.dt_schedule not in SCHEDULES:
            raise ValueError(f"dt-schedule must be one of {', '.join(SCHEDULES)}, got {self.dt_schedule!r}")
        if self.eval_sampler not in MODES:
            raise ValueError(f"eval-sampler must be one of {', '.join(MODES)}, got {self.eval_sampler!r}")
        if not 0 < self.dt_min <= 1:
            raise ValueError(f"dt-min must be in (0, 1], got {self.dt_min}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae-lambda must be in [0, 1], got {self.gae_lambda}")
        if not (self.score_hidden and self.value_hidden and min(self.score_hidden + self.value_hidden) > 0):
            raise ValueError(f"score-hidden and value-hidden need positive widths, got {self.score_hidden}, "
                             f"{self.value_hidden}")
        self.bins.validate()

    @property
    def bins(self) -> hl_gauss.HLGauss:
        """The value head's HL-Gauss bins."""
        return hl_gauss.HLGauss(self.num_bins, self.v_min, self.v_max, self.sigma_ratio)

    def policy_config(self) -> DiffusionPolicyConfig:
        """The diffusion chain's settings."""
        return config_of(self)


@struct.dataclass
class DAMDPPOState:
    policy: Any
    """{"score", "dt", "friction"} of `policies.diffusion.DiffusionPolicy`."""
    value: Any
    opt: optax.OptState
    obs_stats: ac.RunningMeanStd


class DAMDPPO:
    """DA-MDP:PPO agent: static config + env spec; all methods are pure (`agents.protocols.OnPolicyAgent`)."""

    regime = "on_policy"

    def __init__(self, cfg: DAMDPPOConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        if num_tasks != 1:
            raise ValueError(f"da-mdp-ppo is single-task, got num_tasks={num_tasks}")
        self.cfg, self.spec = cfg, spec
        self.bins = cfg.bins
        self.policy = DiffusionPolicy(cfg.policy_config(), spec.obs_size, spec.action_size)
        self.value_net = SwishMLP(cfg.value_hidden, cfg.num_bins)
        self.tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(cfg.learning_rate))

    @property
    def num_steps(self) -> int:
        return self.cfg.num_steps

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    @property
    def minibatches(self) -> int:
        return self.cfg.minibatches

    @property
    def K(self) -> int:
        return self.cfg.diffusion_steps

    def init(self, key: jax.Array) -> DAMDPPOState:
        k_policy, k_value = jax.random.split(key)
        x = self.value_input(jnp.zeros(self.spec.obs_size), jnp.zeros(self.spec.action_size), jnp.zeros((), jnp.int32))
        params = {"policy": self.policy.init(k_policy), "value": self.value_net.init(k_value, x)["params"]}
        return DAMDPPOState(params["policy"], params["value"], self.tx.init(params),
                            ac.RunningMeanStd.create((self.spec.obs_size,)))

    def normalize(self, state: DAMDPPOState, obs: jax.Array) -> jax.Array:
        """Observations as the networks see them (running normalisation, when on)."""
        return state.obs_stats.normalize(obs) if self.cfg.normalize_obs else obs

    def value_input(self, s: jax.Array, x: jax.Array, k: jax.Array) -> jax.Array:
        """[s, x_k / sigma_0, one_hot(k, K)] of normalised s [..., O], latents [..., A], steps k [...]."""
        return jnp.concatenate([s, x / self.cfg.sigma_0, jax.nn.one_hot(k, self.K, dtype=s.dtype)], axis=-1)

    def value_logits(self, value: Any, s: jax.Array, x: jax.Array, k: jax.Array) -> jax.Array:
        """HL-Gauss logits [..., num_bins] of V(s, x_k, k)."""
        return self.value_net.apply({"params": value}, self.value_input(s, x, k))

    def value(self, value: Any, s: jax.Array, x: jax.Array, k: jax.Array) -> jax.Array:
        """V(s, x_k, k) [...]: the expected bin centre."""
        return hl_gauss.expected_value(self.value_logits(value, s, x, k), self.bins)

    def chain_log_probs(self, policy: Any, s: jax.Array, latents: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(log pi, log q) [B, K] of stored chains latents [B, K+1, A] at normalised states s [B, O]."""
        return jax.vmap(self.policy.chain_log_probs, in_axes=(None, 0, 0))(policy, s, latents)

    def act(self, state: DAMDPPOState, obs: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, dict]:
        """clip(tanh(x_K)) of a chain sampled by the SDE (in eval mode by `eval_sampler`); aux: the latents
        [K+1, A] and per-step log pi, log q [K]."""
        mode = self.cfg.eval_sampler if eval_mode else "sde"
        chain = self.policy.sample_chain(state.policy, self.normalize(state, obs), key, mode)
        action = jnp.clip(chain.action, -ACTION_CLIP, ACTION_CLIP)
        return action, {"latents": chain.latents, "log_pi": chain.log_pi, "log_q": chain.log_q}

    def prepare(self, state: DAMDPPOState, trajectory: dict) -> dict:
        """Per env step: normalised obs (the acting statistics), the chain's latents and log pi (recomputed
        as the loss computes them), the K augmented soft rewards, GAE advantages and value targets [K]."""
        cfg, K = self.cfg, self.K
        reward = trajectory["reward"]
        T, N = reward.shape
        s = self.normalize(state, trajectory["obs"])
        s_next = self.normalize(state, trajectory["next_obs"])
        latents = trajectory["latents"]  # [T, N, K+1, A]
        flat = lambda x: x.reshape((T * N,) + x.shape[2:])
        log_pi, log_q = self.chain_log_probs(state.policy, flat(s), flat(latents))
        log_pi, log_q = log_pi.reshape(T, N, K), log_q.reshape(T, N, K)

        steps = jnp.arange(K)
        s_k = jnp.broadcast_to(s[:, :, None], (T, N, K, s.shape[-1]))
        values = self.value(state.value, s_k, latents[:, :, :K], jnp.broadcast_to(steps, (T, N, K)))
        next_x0 = jnp.concatenate([latents[1:, :, 0], latents[-1:, :, 0]], axis=0)
        next_env_value = self.value(state.value, s_next, next_x0, jnp.zeros((T, N), jnp.int32))
        next_values = jnp.concatenate([values[..., 1:], next_env_value[..., None]], axis=-1)

        is_last = steps == K - 1
        rewards = soft_rewards(cfg.reward_scale * reward[..., None], log_pi, log_q, is_last, cfg.entropy_coef)
        at_last = lambda flag: jnp.where(is_last, flag[..., None].astype(rewards.dtype), 0.0)
        # time-major over augmented steps: [T, N, K] -> [T * K, N] and back
        aug = lambda x: jnp.swapaxes(x, 1, 2).reshape(T * K, N)
        unaug = lambda x: jnp.swapaxes(x.reshape(T, K, N), 1, 2)
        advantages, returns = ac.gae(aug(rewards), aug(values), aug(next_values), aug(at_last(trajectory["done"])),
                                     aug(at_last(trajectory["truncation"])), cfg.gamma, cfg.gae_lambda)
        return {"obs": s, "raw_obs": trajectory["obs"], "latents": latents, "log_pi": log_pi,
                "soft_reward": rewards, "value": values, "advantage": unaug(advantages), "return": unaug(returns)}

    def loss(self, params: dict, minibatch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """DA-MDP:PPO's loss on a prepared minibatch of env-step rows (see the module docstring)."""
        cfg, K = self.cfg, self.K
        s, latents = minibatch["obs"], minibatch["latents"]
        log_pi, log_q = self.chain_log_probs(params["policy"], s, latents)
        adv, scale = minibatch["advantage"], jnp.ones(())
        if cfg.normalize_advantages:
            adv, scale = pg.normalized_advantages(adv)
        policy_loss, active, diagnostics = pg.clipped_surrogate(log_pi - minibatch["log_pi"], adv, cfg.clip_ratio)
        kernel_loss = jnp.zeros(())
        if cfg.train_kernel:
            ratio = jax.lax.stop_gradient(jnp.exp(log_pi - minibatch["log_pi"]))
            log_q_active = jnp.where(active, log_q, jax.lax.stop_gradient(log_q))
            kernel_loss = -cfg.entropy_coef * jnp.mean(ratio * log_q_active) / scale
        B = s.shape[0]
        s_k = jnp.broadcast_to(s[:, None], (B, K, s.shape[-1]))
        logits = self.value_logits(params["value"], s_k, latents[:, :K], jnp.broadcast_to(jnp.arange(K), (B, K)))
        value_loss = jnp.mean(hl_gauss.loss(logits, minibatch["return"], self.bins))
        total = policy_loss + kernel_loss + cfg.value_coef * value_loss
        eta = jax.vmap(self.policy.eta, in_axes=(None, 0))(params["policy"], jnp.arange(K))
        return total, {"total_loss": total, "policy_loss": policy_loss, "kernel_loss": kernel_loss,
                       "value_loss": value_loss, "entropy": jnp.mean(entropy_estimate(log_pi, log_q)),
                       "value_mean": jnp.mean(hl_gauss.expected_value(logits, self.bins)),
                       "return_mean": jnp.mean(minibatch["return"]), "eta_mean": jnp.mean(eta), **diagnostics}

    def update(self, state: DAMDPPOState, minibatch: dict, key: jax.Array) -> tuple[DAMDPPOState, dict]:
        """One Adam step (global-norm clipped) on the minibatch's loss; the minibatch's raw observations
        are merged into the running statistics."""
        params, opt, metrics = pg.gradient_step(self.tx, self.loss, {"policy": state.policy, "value": state.value},
                                                state.opt, minibatch, key)
        obs_stats = state.obs_stats.update(minibatch["raw_obs"]) if self.cfg.normalize_obs else state.obs_stats
        return DAMDPPOState(params["policy"], params["value"], opt, obs_stats), metrics
