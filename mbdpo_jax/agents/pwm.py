"""PWM (Georgiev et al., 2024, "PWM: Policy Learning with Multi-Task World Models"): a policy learned by
first-order gradients through a TD-MPC2 world model, no planning.

    agent = PWM(PWMConfig(), spec)
    state = agent.init(key)
    action, carry, aux = agent.act(state, obs, carry, key, eval_mode)    # one env; vmap it
    state, metrics = agent.update(state, batch, key)                      # world model + actor-critic
    state, metrics = agent.policy_update(state, params, obs, key)         # actor-critic on a frozen model

The pieces: `models.learner.LatentLearner` (the world model, trained with TD-MPC2's losses at PWM's
settings: horizon 16, rho 0.99; its Q ensemble and prior are learned but unused by PWM),
`models.imagine.imagine` (a differentiable H-step latent rollout) and `models.actor_critic` (actor,
critics, TD(lambda), return normalisation). The actor loss (PWM, Eq. 5):

    L_pi = -(1/H) E_z0[ (sum_{t<H} gamma^t r_hat(z_t, a_t) + gamma^H min_j V_j(z_H)) / sigma_R ],
    a_t = tanh(mu(sg(z_t)) + sigma eps),  z_{t+1} = d(z_t, a_t),

with gradients through the dynamics and the reward but not into the model's or the critics' parameters;
sigma_R is a running std of those returns. The critics then fit TD(lambda) targets over the same
imagined rollouts. It follows `agents.protocols.OffPolicyAgent`.

At evaluation `act` also reports the actor's sampled incoherence (ours, `actor_incoherence`) against the
one-step form of that objective, Q(z, a) = r_hat(z, a) + gamma min_j V_j(d(z, a)).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.analysis.deep_incoherence import IncoherenceConfig, policy_incoherence
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models.imagine import Imagined, imagine
from mbdpo_jax.models.learner import LatentLearner, LearnerConfig, LearnerState
from mbdpo_jax.models.losses import LossCoefficients


@dataclasses.dataclass(frozen=True)
class PWMConfig:
    """PWM's settings; defaults are the published ones (world model horizon 16, rho 0.99, gamma 0.99)."""

    learner: LearnerConfig = LearnerConfig(horizon=16, discount=0.99, losses=LossCoefficients(rho=0.99))
    actor_critic: ac.ActorCriticConfig = ac.ActorCriticConfig()
    incoherence: IncoherenceConfig = IncoherenceConfig()
    """The actor's sampled incoherence against its one-step Q, logged at evaluation (ours)."""

    def validate(self) -> None:
        self.learner.validate()
        self.actor_critic.validate()
        self.incoherence.validate()
        if self.learner.batch_size * self.learner.horizon % self.actor_critic.critic_minibatches:
            raise ValueError(f"batch-size x horizon ({self.learner.batch_size} x {self.learner.horizon}) must "
                             f"divide into critic-minibatches={self.actor_critic.critic_minibatches}")


@struct.dataclass
class PWMState:
    """World-model learner state plus the actor-critic's parameters and optimiser states."""

    learner: LearnerState
    actor: Any
    critics: Any
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    returns: ac.RunningMeanStd


class PWM:
    """PWM agent: static config + env spec; all methods are pure."""

    replay_extras: dict = {}

    def __init__(self, cfg: PWMConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        self.cfg, self.spec = cfg, spec
        self.learner = LatentLearner(cfg.learner, spec, num_tasks, action_masks)
        self.model = self.learner.model
        self.horizon, self.batch_size = cfg.learner.horizon, cfg.learner.batch_size
        self.actor, self.critics, self.actor_tx, self.critic_tx = ac.networks(cfg.actor_critic, spec.action_size)

    def init(self, key: jax.Array) -> PWMState:
        k_model, k_actor, k_critic = jax.random.split(key, 3)
        return self.init_policy(k_actor, k_critic, self.learner.init(k_model))

    def init_policy(self, k_actor: jax.Array, k_critic: jax.Array, learner: LearnerState) -> PWMState:
        """Fresh actor and critics next to an existing (e.g. pretrained) learner state."""
        z = jnp.zeros((self.model.cfg.latent_dim,))
        actor = self.actor.init(k_actor, z)["params"]
        critics = self.critics.init(k_critic, z)["params"]
        return PWMState(learner, actor, critics, self.actor_tx.init(actor), self.critic_tx.init(critics),
                        ac.RunningMeanStd.create())

    def initial_act_carry(self) -> jax.Array:
        return jnp.zeros(())

    def next_act_carry(self, carry: jax.Array, episode_started: jax.Array) -> jax.Array:
        return carry

    def act(self, state: PWMState, obs: jax.Array, carry: jax.Array, key: jax.Array, eval_mode: bool = False,
            task: Any = None) -> tuple[jax.Array, jax.Array, dict]:
        """The actor's action at encode(obs): tanh of its mean in eval mode, of a Gaussian sample otherwise;
        a multi-task model's padded action dimensions are 0. In eval mode with the estimate on, aux holds
        'incoherence' (`actor_incoherence`, from a key folded from `key`)."""
        z = self.model.encode(state.learner.params, obs, task)
        mean, log_std = self.actor.apply({"params": state.actor}, z)
        action = ac.sample_action(mean, log_std, key, eval_mode) * self.model.action_mask(task)
        if not (eval_mode and self.cfg.incoherence.enabled):
            return action, carry, {}
        kappa = self.actor_incoherence(state, z, jax.random.fold_in(key, 0x1C0), task, (mean, log_std))
        return action, carry, {"incoherence": kappa}

    def one_step_q(self, state: PWMState, params: dict, z: jax.Array, actions: jax.Array, task: Any = None
                   ) -> jax.Array:
        """Q(z, a) = r_hat(z, a) + gamma alive(z') min_j V_j(z'), z' = d(z, a), for actions [N, A] at one z:
        the actor's objective (`_actor_loss`) at horizon 1, before its division by the running return std
        (alive: 0 after a predicted termination, episodic models only)."""
        zs = jnp.broadcast_to(z, actions.shape[:-1] + z.shape)
        z_next = self.model.next(params, zs, actions, task)
        alive = self._alive(params, jnp.stack([zs, z_next]), task)[1]
        v_next = jnp.min(self.critics.apply({"params": state.critics}, z_next), axis=0)
        return self.model.reward_value(params, zs, actions, task) + self.learner.discount_of(task) * alive * v_next

    def actor_incoherence(self, state: PWMState, z: jax.Array, key: jax.Array, task: Any = None,
                          distribution: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """Sampled KL(pi(.|z) || softmax(Q(z, .) / delta)) of the stochastic actor (its tanh-squashed
        Gaussian, not the deterministic eval action tanh(mean)) against `one_step_q`
        (`analysis.deep_incoherence.policy_incoherence`, an estimate, see there)."""
        params = state.learner.params
        mean, log_std = self.actor.apply({"params": state.actor}, z) if distribution is None else distribution
        q_fn = lambda actions: self.one_step_q(state, params, z, actions, task)
        return policy_incoherence(key, mean, log_std, q_fn, self.cfg.incoherence, self.model.action_mask(task))

    def update(self, state: PWMState, batch: dict, key: jax.Array) -> tuple[PWMState, dict]:
        """A world-model step on the replayed sequences, then an actor-critic step on the updated model
        from the batch's first observations."""
        k_model, k_policy = jax.random.split(key)
        learner, metrics, _ = self.learner.update(state.learner, batch, k_model)
        state, policy_metrics = self.policy_update(state.replace(learner=learner), learner.params, batch["obs"][0],
                                                   k_policy, batch.get("task"))
        return state, {**metrics, **policy_metrics}

    def policy_update(self, state: PWMState, params: dict, obs: jax.Array, key: jax.Array, task: Any = None
                      ) -> tuple[PWMState, dict]:
        """One actor step through H-step imagination in the (frozen) model `params` from encode(obs [B, O]),
        then the critics' regression on TD(lambda) targets of that imagination (PWM, Alg. 1)."""
        k_imagine, k_critic = jax.random.split(key)
        z0 = jax.lax.stop_gradient(self.model.encode(params, obs, task))
        loss_fn = lambda actor: self._actor_loss(actor, state.critics, state.returns, params, z0, k_imagine, task)
        (loss, (traj, returns)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.actor)
        grads, finite = ac.zero_if_not_finite(grads)  # PWM's online runs skip such steps
        updates, actor_opt = self.actor_tx.update(grads, state.actor_opt, state.actor)
        actor = optax.apply_updates(state.actor, updates)
        critics, critic_opt, critic_loss = self._fit_critics(state, params, traj, k_critic, task)
        new = PWMState(state.learner, actor, critics, actor_opt, critic_opt, returns)
        _, log_std = self.actor.apply({"params": actor}, z0[:1])
        metrics = {"actor_loss": loss, "critic_loss": critic_loss, "actor_grad_norm": optax.tree.norm(grads),
                   "imagined_reward": jnp.mean(traj.rewards), "actor_std": jnp.mean(jnp.exp(log_std)),
                   "nonfinite_actor_grads": 1.0 - finite.astype(jnp.float32)}
        return new, metrics

    def _actor_loss(self, actor: Any, critics: Any, returns: ac.RunningMeanStd, params: dict, z0: jax.Array,
                    key: jax.Array, task: Any):
        gamma, horizon = self.learner.discount_of(task), self.horizon

        mask = self.model.action_mask(task)  # padded dims of a multi-task model stay 0, as in its data

        def policy(z, k):
            mean, log_std = self.actor.apply({"params": actor}, z)
            return ac.sample_action(mean, log_std, k) * mask

        traj = imagine(self.model, params, z0, policy, horizon, key, task)
        alive = self._alive(params, traj.latents, task)  # [H+1, B]
        discounts = gamma ** jnp.arange(horizon + 1)[:, None]
        v_h = jnp.min(self.critics.apply({"params": jax.lax.stop_gradient(critics)}, traj.latents[-1]), axis=0)
        ret = jnp.sum(discounts[:-1] * alive[:-1] * traj.rewards, 0) + discounts[-1] * alive[-1] * v_h
        returns = returns.update(ret)
        return -jnp.mean(ret / returns.std) / horizon, (jax.lax.stop_gradient(traj), returns)

    def _alive(self, params: dict, latents: jax.Array, task: Any) -> jax.Array:
        """1 until the model predicts a termination (episodic models only; logit > 0 means p > 0.5)."""
        if not self.model.cfg.episodic:
            return jnp.ones(latents.shape[:-1])
        terminated = self.model.termination(params, latents[1:], task) > 0.0
        alive_after = jnp.cumprod(1.0 - terminated.astype(jnp.float32), axis=0)
        return jnp.concatenate([jnp.ones_like(alive_after[:1]), alive_after], 0)

    def _fit_critics(self, state: PWMState, params: dict, traj: Imagined, key: jax.Array, task: Any):
        acc = self.cfg.actor_critic
        alive = self._alive(params, traj.latents, task)
        values = jnp.min(self.critics.apply({"params": state.critics}, traj.latents[1:]), axis=0)
        ended = 1.0 - alive[1:] / jnp.maximum(alive[:-1], 1e-8)  # terminated at this step
        targets = ac.td_lambda_targets(traj.rewards * alive[:-1], values * alive[1:], ended,
                                       self.learner.discount_of(task), acc.td_lambda)
        inputs = traj.latents[:-1].reshape(-1, traj.latents.shape[-1])
        return ac.fit_critics(self.critics, self.critic_tx, state.critics, state.critic_opt, inputs,
                              targets.reshape(-1), acc.critic_iterations, acc.critic_minibatches, key)

