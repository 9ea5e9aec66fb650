"""REPPO (Voelcker et al., 2025, "Relative Entropy Pathwise Policy Optimization", arXiv 2507.11019) with a
tanh-Gaussian policy: on-policy rollouts, a categorical Q critic on soft TD(lambda) targets, and an actor
trained pathwise through Q inside a KL trust region; the pieces are `models.reppo`'s.

    agent = REPPO(REPPOConfig(), env.spec)
    state = agent.init(key)
    action, aux = agent.act(state, obs, key, eval_mode)      # one env; vmap it
    prepared = agent.prepare(state, trajectory)               # soft TD(lambda) targets, the old policy
    state, metrics = agent.update(state, minibatch, key)      # critic, actor and multipliers, one step

Policy: u ~ N(mu(s), sigma(s)), sigma = softplus(.) + min_std, action tanh(u) (tanh(mu) in eval mode),
log pi(a|s) = log N(u) - sum log(1 - tanh(u)^2). `act` also draws the noise of a bootstrap action at the
state the step reaches, so `prepare` (which gets no key) can sample a' ~ pi(.|s') there, the kept final
observation included.

`prepare` (the acting statistics normalise the rollout, as in `agents.ppo`): the soft TD(lambda) targets
of `models.reppo.soft_lambda_returns` with Q(s', a') and log pi(a'|s') of that bootstrap action and the
current alpha, and the old policy's (mu, sigma) at every state: the KL of the trust region is measured
against the policy at the start of the learn step. Loss per minibatch, one Adam step (the multipliers on
their own Adam):

    critic   CE_HL(Q(s, a), G) + 0.1 (|f(h(s, a)) - sg h(s', a')|^2 + (g(h(s, a)) - r)^2)
    actor    where(KL_16 < bound, sg(alpha) log pi(a~|s) - Q_sg(s, a~), sg(lambda_KL) KL_16),  a~ = tanh(mu + sigma eps)
    mult     alpha sg(H - H_target) - lambda_KL sg(KL - bound),  H = -mean log pi(a~|s), H_target = entropy_target |A|

where Q_sg is the critic with its parameters detached (the actor's gradient flows only through a~) and
KL_16 a 16-sample estimate of KL(pi_old(.|s) || pi(.|s)) on the pre-tanh Gaussians (equal to that of the
actions: tanh is a bijection). It follows `agents.protocols.OnPolicyAgent`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.agents.ppo import gaussian_log_prob
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models import hl_gauss
from mbdpo_jax.models import policy_gradient as pg
from mbdpo_jax.models import reppo
from mbdpo_jax.nn.layers import MLP


@dataclasses.dataclass(frozen=True)
class REPPOConfig:
    """REPPO's settings. Defaults follow the REPPO settings the DA-MDP reference states (hidden 512, 8 epochs
    x 64 minibatches of 1024 envs x 128 steps, lr 1e-3, KL bound 0.04 with 16 samples, multipliers on Adam
    3e-4 from alpha 0.01 and lambda_KL 0.3, HL-Gauss 151 bins on [-100, 200], grad clip 0.5); gamma 0.99,
    lambda 0.95 and the entropy target -0.5 |A| are this library's choices for env-step (not denoising-step)
    transitions."""

    actor_hidden: tuple[int, ...] = (512, 512)
    critic_hidden: tuple[int, ...] = (512, 512)
    """Hidden widths of the critic (LayerNorm swish); the last one is the embedding the aux loss predicts."""
    num_bins: int = 151
    v_min: float = -100.0
    v_max: float = 200.0
    sigma_ratio: float = 0.75
    num_steps: int = 128
    """Env steps per env in one rollout."""
    epochs: int = 8
    minibatches: int = 64
    """Minibatches per pass; they must divide num_envs x num_steps."""
    learning_rate: float = 1e-3
    grad_clip: float = 0.5
    """Global gradient-norm clip of the actor and critic (not the multipliers)."""
    gamma: float = 0.99
    td_lambda: float = 0.95
    kl_bound: float = 0.04
    """Trust region: the actor's loss turns into sg(lambda_KL) KL where KL(pi_old || pi) exceeds this."""
    kl_samples: int = 16
    """Samples of the forward-KL estimate per state."""
    init_alpha: float = 0.01
    init_lambda_kl: float = 0.3
    multiplier_lr: float = 3e-4
    """Adam learning rate of log alpha and log lambda_KL."""
    entropy_target: float = -0.5
    """Target entropy per action dimension (H_target = entropy_target x |A|)."""
    aux_loss: bool = True
    """Add the critic's next-embedding and reward prediction losses (weight 0.1)."""
    reward_scale: float = 1.0
    min_std: float = 1e-3
    normalize_obs: bool = True

    def validate(self) -> None:
        """One-line error naming the bad value and the allowed range."""
        reppo.check_settings(self, ("actor_hidden", "critic_hidden"))


@struct.dataclass
class REPPOState:
    params: dict
    """{"actor", "critic", "log_alpha", "log_lambda_kl"}."""
    opt: optax.OptState
    obs_stats: ac.RunningMeanStd


class REPPO:
    """Gaussian REPPO agent: static config + env spec; all methods are pure."""

    regime = "on_policy"

    def __init__(self, cfg: REPPOConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        if num_tasks != 1:
            raise ValueError(f"reppo is single-task, got num_tasks={num_tasks}")
        self.cfg, self.spec = cfg, spec
        self.num_steps, self.epochs, self.minibatches = cfg.num_steps, cfg.epochs, cfg.minibatches
        self.bins = hl_gauss.HLGauss(cfg.num_bins, cfg.v_min, cfg.v_max, cfg.sigma_ratio)
        self.actor_net = MLP(tuple(cfg.actor_hidden), 2 * spec.action_size, activation=nn.swish)
        self.q_net = reppo.CategoricalQ(tuple(cfg.critic_hidden), cfg.num_bins)
        self.tx = reppo.optimizer(cfg.learning_rate, cfg.grad_clip, cfg.multiplier_lr)
        self.target_entropy = cfg.entropy_target * spec.action_size

    def init(self, key: jax.Array) -> REPPOState:
        k_actor, k_critic = jax.random.split(key)
        obs, action = jnp.zeros((self.spec.obs_size,)), jnp.zeros((self.spec.action_size,))
        params = {"actor": self.actor_net.init(k_actor, obs)["params"],
                  "critic": self.q_net.init(k_critic, jnp.concatenate([obs, action]))["params"],
                  **reppo.init_multipliers(self.cfg.init_alpha, self.cfg.init_lambda_kl)}
        return REPPOState(params, self.tx.init(params), ac.RunningMeanStd.create((self.spec.obs_size,)))

    def normalize(self, state: REPPOState, obs: jax.Array) -> jax.Array:
        return state.obs_stats.normalize(obs) if self.cfg.normalize_obs else obs

    def distribution(self, actor: Any, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(loc, scale) of the pre-tanh Gaussian at normalised states."""
        loc, raw_scale = jnp.split(self.actor_net.apply({"params": actor}, s), 2, axis=-1)
        return loc, jax.nn.softplus(raw_scale) + self.cfg.min_std

    def sample(self, actor: Any, s: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(tanh(loc + scale noise), its log pi) at normalised states: reparameterised."""
        loc, scale = self.distribution(actor, s)
        u = loc + scale * noise
        return jnp.tanh(u), gaussian_log_prob(u, loc, scale) - jnp.sum(ac.tanh_log_det_jacobian(u), axis=-1)

    def q(self, critic: Any, s: jax.Array, action: jax.Array) -> jax.Array:
        """Q(s, a): the expected bin centre."""
        return hl_gauss.expected_value(self.q_net.apply({"params": critic}, self.q_input(s, action))[0], self.bins)

    @staticmethod
    def q_input(s: jax.Array, action: jax.Array) -> jax.Array:
        return jnp.concatenate([s, action], axis=-1)

    def act(self, state: REPPOState, obs: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, dict]:
        """tanh(u), u ~ N(loc, scale) (tanh(loc) in eval mode); aux: the noise of the bootstrap action at the
        state this step reaches."""
        k_act, k_next = jax.random.split(key)
        loc, scale = self.distribution(state.params["actor"], self.normalize(state, obs))
        u = loc if eval_mode else loc + scale * jax.random.normal(k_act, loc.shape)
        return jnp.tanh(u), {"next_noise": jax.random.normal(k_next, loc.shape)}

    def prepare(self, state: REPPOState, trajectory: dict) -> dict:
        """Normalised states (the acting statistics), soft TD(lambda) targets, the bootstrap transition for
        the aux loss and the old policy's (loc, scale)."""
        cfg, params = self.cfg, state.params
        s, s_next = self.normalize(state, trajectory["obs"]), self.normalize(state, trajectory["next_obs"])
        next_action, next_log_prob = self.sample(params["actor"], s_next, trajectory["next_noise"])
        reward = cfg.reward_scale * trajectory["reward"]
        target = reppo.soft_lambda_returns(reward, next_log_prob, self.q(params["critic"], s_next, next_action),
                                           trajectory["done"], trajectory["truncation"], jnp.exp(params["log_alpha"]),
                                           cfg.gamma, cfg.td_lambda)
        old_loc, old_scale = self.distribution(params["actor"], s)
        return {"obs": s, "raw_obs": trajectory["obs"], "action": trajectory["action"], "target": target,
                "next_obs": s_next, "next_action": next_action, "reward": reward, "old_loc": old_loc,
                "old_scale": old_scale}

    def loss(self, params: dict, minibatch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """Critic + actor + multiplier losses on a prepared minibatch (see the module docstring)."""
        cfg, s = self.cfg, minibatch["obs"]
        aux_mask = jnp.full(s.shape[:1], float(cfg.aux_loss))
        critic_loss, critic_metrics = reppo.critic_loss(
            self.q_net, params["critic"], self.q_input(s, minibatch["action"]), minibatch["target"],
            self.q_input(minibatch["next_obs"], minibatch["next_action"]), minibatch["reward"], aux_mask, self.bins)
        k_action, k_kl = jax.random.split(key)
        loc, scale = self.distribution(params["actor"], s)
        action, log_prob = self.sample(params["actor"], s, jax.random.normal(k_action, loc.shape))
        q = self.q(jax.lax.stop_gradient(params["critic"]), s, action)
        kl = reppo.sampled_gaussian_kl(minibatch["old_loc"], minibatch["old_scale"], loc, scale, k_kl, cfg.kl_samples)
        policy_loss, actor_metrics = reppo.actor_and_multiplier_losses(params, log_prob, q, kl, -jnp.mean(log_prob),
                                                                       self.target_entropy, cfg.kl_bound)
        total = critic_loss + policy_loss
        return total, {"total_loss": total, "critic_loss": critic_loss, "policy_std": jnp.mean(scale),
                       **critic_metrics, **actor_metrics}

    def update(self, state: REPPOState, minibatch: dict, key: jax.Array) -> tuple[REPPOState, dict]:
        """One step of every loss; the minibatch's raw observations are merged into the running statistics."""
        params, opt, metrics = pg.gradient_step(self.tx, self.loss, state.params, state.opt, minibatch, key)
        obs_stats = state.obs_stats.update(minibatch["raw_obs"]) if self.cfg.normalize_obs else state.obs_stats
        return REPPOState(params, opt, obs_stats), metrics
