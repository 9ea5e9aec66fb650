"""TD-MPC2 (Hansen et al., 2024): latent world model + MPPI planning + policy prior.

Pure functions over one state pytree:

    agent = TDMPC2(cfg, spec)
    state = agent.init(key)
    action, plan_state, aux = agent.act(state, obs, plan_state, key, eval_mode)   # one env; vmap it
    state, metrics = agent.update(state, batch, key)

Batches are time-major sequences of H transitions: obs/next_obs [H, B, O], action [H, B, A],
reward/done/end [H, B] ('end' = termination or truncation), optional task [B].
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models.world_model import PRESETS, WorldModel, WorldModelConfig
from mbdpo_jax.planners import mppi


@dataclasses.dataclass(frozen=True)
class TDMPC2Config:
    """TD-MPC2 hyperparameters; defaults are the published ones (REFERENCE.md)."""

    model_size: str = "5M"
    horizon: int = 3
    rho: float = 0.5
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    entropy_coef: float = 1e-4
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    grad_clip_norm: float = 20.0
    batch_size: int = 256
    tau: float = 0.01
    discount: float | None = None  # None: from the episode length (TD-MPC2's heuristic)
    num_tasks: int = 1
    planner: mppi.MPPIConfig = mppi.MPPIConfig()

    def validate(self) -> None:
        if self.model_size not in PRESETS:
            raise ValueError(f"unknown model size {self.model_size!r}; allowed: {', '.join(PRESETS)}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.planner.horizon != self.horizon:
            raise ValueError(f"planner horizon {self.planner.horizon} != model horizon {self.horizon}")
        self.planner.validate()


def discount_from_episode_length(length: int, lo: float = 0.95, hi: float = 0.995) -> float:
    """TD-MPC2's heuristic gamma = clip((T/5 - 1) / (T/5), lo, hi)."""
    frac = length / 5
    return float(min(max((frac - 1) / frac, lo), hi))


@struct.dataclass
class TDMPC2State:
    params: dict
    target_qs: Any
    model_opt: optax.OptState
    pi_opt: optax.OptState
    q_scale: jax.Array
    step: jax.Array


def sequence_mask(end: jax.Array) -> jax.Array:
    """m_t = 1 while no episode boundary occurred before step t ([H, B] -> [H, B])."""
    alive = jnp.cumprod(1.0 - end, axis=0)
    return jnp.concatenate([jnp.ones_like(end[:1]), alive[:-1]], axis=0)


def planner_prior_divergence(model: WorldModel, params: dict, z: jax.Array, actions: jax.Array,
                             weights: jax.Array, task: Any = None) -> jax.Array:
    """Estimate of KL(planner || prior) for the first action.

    The planner's action distribution is its weighted elites; we fit it with a diagonal Gaussian q
    and return E_q-weights[-log pi(a|z)] - H(q). Zero only when the prior covers the planner's
    choices as tightly as the planner itself: a coherence gauge, not an exact divergence.
    """
    mean = jnp.sum(weights[:, None] * actions, 0)
    var = jnp.sum(weights[:, None] * (actions - mean) ** 2, 0) + 1e-4
    entropy_q = 0.5 * jnp.sum(jnp.log(2 * jnp.pi * jnp.e * var))
    log_pi = model.pi_log_prob(params, jnp.broadcast_to(z, (actions.shape[0],) + z.shape), actions, task)
    return -jnp.sum(weights * log_pi) - entropy_q


class TDMPC2:
    """TD-MPC2 agent: static config + env spec; all methods are pure."""

    def __init__(self, cfg: TDMPC2Config, spec: EnvSpec, action_masks: Any = None):
        """action_masks: [num_tasks, action_size] real-action-dimension masks of a multi-task agent."""
        cfg.validate()
        self.cfg = cfg
        self.spec = spec
        self.model = WorldModel(
            WorldModelConfig.from_preset(cfg.model_size, spec.obs_size, spec.action_size, num_tasks=cfg.num_tasks),
            action_masks,
        )
        self.discount = cfg.discount if cfg.discount is not None else discount_from_episode_length(spec.episode_length)
        # Multi-task: one discount per task from its own episode length, as TD-MPC2 does.
        lengths = spec.task_episode_lengths
        self.task_discounts = None if cfg.discount is not None or not lengths else jnp.asarray(
            [discount_from_episode_length(n) for n in lengths], jnp.float32)
        self.model_tx = optax.chain(
            optax.clip_by_global_norm(cfg.grad_clip_norm),
            optax.multi_transform(
                {"encoder": optax.adam(cfg.lr * cfg.enc_lr_scale), "rest": optax.adam(cfg.lr)},
                lambda params: {k: ("encoder" if k == "encoder" else "rest") for k in params},
            ),
        )
        self.pi_tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), optax.adam(cfg.lr, eps=1e-5))

    # ---- state ------------------------------------------------------------------------------
    def init(self, key: jax.Array) -> TDMPC2State:
        params = self.model.init(key)
        return TDMPC2State(
            params=params,
            target_qs=params["qs"],
            model_opt=self.model_tx.init(params),
            pi_opt=self.pi_tx.init(params["pi"]),
            q_scale=jnp.ones(()),
            step=jnp.zeros((), jnp.int32),
        )

    def initial_plan_state(self) -> jax.Array:
        """Warm start of one env's planner: a [H, A] mean."""
        return jnp.zeros((self.cfg.horizon, self.spec.action_size))

    def discount_of(self, task: Any = None) -> jax.Array | float:
        """gamma of `task` (an id or an array of ids); the single discount when there are no per-task ones."""
        if task is None or self.task_discounts is None:
            return self.discount
        return self.task_discounts[task]

    # ---- acting -----------------------------------------------------------------------------
    def rollout_prior(self, params: dict, z: jax.Array, key: jax.Array, num: int, task: Any = None) -> jax.Array:
        """Action sequences [num, H, A] from the policy prior rolled through the latent dynamics."""
        zs = jnp.broadcast_to(z, (num,) + z.shape)

        def step(z_t, k):
            a, _ = self.model.pi(params, z_t, k, task)
            return self.model.next(params, z_t, a, task), a

        _, actions = jax.lax.scan(step, zs, jax.random.split(key, self.cfg.horizon))
        return jnp.swapaxes(actions, 0, 1)

    def trajectory_value(self, params: dict, z: jax.Array, actions: jax.Array, key: jax.Array,
                         task: Any = None, step_bonus: Any = None) -> jax.Array:
        """sum_t gamma^t [r_hat(z_t, a_t) + bonus(z_t, a_t)] + gamma^H * avg Q(z_H, pi(z_H)), actions [N, H, A]."""
        zs = jnp.broadcast_to(z, (actions.shape[0],) + z.shape)
        gamma = self.discount_of(task)

        def step(carry, a_t):
            z_t, ret, disc = carry
            r_t = self.model.reward_value(params, z_t, a_t, task)
            if step_bonus is not None:
                r_t = r_t + step_bonus(z_t, a_t)
            ret = ret + disc * r_t
            return (self.model.next(params, z_t, a_t, task), ret, disc * gamma), None

        init = (zs, jnp.zeros(actions.shape[0]), jnp.ones(()))
        (z_h, ret, disc), _ = jax.lax.scan(step, init, jnp.swapaxes(actions, 0, 1))
        k_pi, k_q = jax.random.split(key)
        a_h, _ = self.model.pi(params, z_h, k_pi, task)
        return ret + disc * self.model.q_value(params, z_h, a_h, k_q, task)

    def planning_objective(self, state: Any, z: jax.Array, key: jax.Array, task: Any = None):
        """J at latent z as a function of action sequences [N, H, A] -> [N]: `trajectory_value` with
        the task's action mask and the agent's step bonus, as the planner scores candidates."""
        params, mask, bonus = self.core_state(state).params, self.model.action_mask(task), self.step_bonus(state)
        return lambda actions: self.trajectory_value(params, z, actions * mask, key, task, bonus)

    def act(self, state: Any, obs: jax.Array, plan_state: jax.Array, key: jax.Array,
            eval_mode: bool = False, task: Any = None) -> tuple[jax.Array, jax.Array, dict]:
        """Plan from one observation; plan_state is the shifted previous plan [H, A].

        Returns (action, plan for the next warm start, aux with 'plan_action' (before exploration
        noise) and 'prior_divergence' (see `planner_prior_divergence`)).
        """
        params = self.core_state(state).params
        k_prior, k_value, k_plan = jax.random.split(key, 3)
        z = self.model.encode(params, obs, task)
        prior = self.rollout_prior(params, z, k_prior, self.cfg.planner.num_pi_trajs, task)
        value_fn = self.planning_objective(state, z, k_value, task)
        action, plan, aux = self.run_planner(k_plan, value_fn, prior, plan_state, eval_mode)
        mask = self.model.action_mask(task)
        action, aux["plan_action"] = action * mask, aux["plan_action"] * mask
        aux["prior_divergence"] = planner_prior_divergence(self.model, params, z, aux["elites"][:, 0],
                                                           aux["weights"], task)
        return action, plan, aux

    # Hooks that MBDPO overrides.
    def core_state(self, state: Any) -> TDMPC2State:
        """The TD-MPC2 part of the agent state."""
        return state

    def step_bonus(self, state: Any) -> Any:
        """Per-step term added to predicted rewards in the planning objective (none for TD-MPC2)."""
        return None

    def run_planner(self, key, value_fn, prior, plan_state, eval_mode):
        return mppi.plan(key, value_fn, prior, plan_state, self.cfg.planner, eval_mode)

    def next_plan_state(self, mean: jax.Array, episode_started: jax.Array) -> jax.Array:
        return mppi.shift_warm_start(mean, episode_started)

    # ---- learning ---------------------------------------------------------------------------
    def _td_targets(self, params, target_qs, batch, key):
        next_z = self.model.encode(params, batch["next_obs"], batch.get("task"))
        k_pi, k_q = jax.random.split(key)
        a, _ = self.model.pi(params, next_z, k_pi, batch.get("task"))
        q = self.model.q_value(params, next_z, a, k_q, batch.get("task"), qs_params=target_qs, reduce="min")
        gamma = self.discount_of(batch.get("task"))
        return next_z, batch["reward"] + gamma * (1.0 - batch["done"]) * q

    def model_loss(self, params, target_qs, batch, key):
        """TD-MPC2 world-model loss: 20 * consistency + 0.1 * reward CE + 0.1 * value CE, rho^t weighted."""
        cfg, two_hot, task = self.cfg, self.model.cfg.two_hot, batch.get("task")
        k_td, k_drop = jax.random.split(key)
        next_z, td = jax.lax.stop_gradient(self._td_targets(params, target_qs, batch, k_td))
        mask = sequence_mask(batch["end"])
        weight = (cfg.rho ** jnp.arange(cfg.horizon))[:, None] * mask  # [H, B]

        def roll(z, inputs):
            a_t, target_t = inputs
            z_next = self.model.next(params, z, a_t, task)
            return z_next, (z, jnp.mean((z_next - target_t) ** 2, -1))

        z0 = self.model.encode(params, batch["obs"][0], task)
        z_last, (zs, consistency) = jax.lax.scan(roll, z0, (batch["action"], next_z))
        reward_ce = two_hot.cross_entropy(self.model.reward(params, zs, batch["action"], task), batch["reward"])
        q_logits = self.model.Q(params, zs, batch["action"], task, dropout_key=k_drop)
        value_ce = two_hot.cross_entropy(q_logits, td[None]).mean(0)
        per_step = lambda x: jnp.sum(weight * x) / (cfg.horizon * x.shape[1])
        losses = {
            "consistency_loss": per_step(consistency),
            "reward_loss": per_step(reward_ce),
            "value_loss": per_step(value_ce),
        }
        total = (cfg.consistency_coef * losses["consistency_loss"] + cfg.reward_coef * losses["reward_loss"]
                 + cfg.value_coef * losses["value_loss"])
        all_zs = jnp.concatenate([zs, z_last[None]], 0)
        all_mask = jnp.concatenate([mask, mask[-1:] * (1.0 - batch["end"][-1:])], 0)
        return total, (losses, jax.lax.stop_gradient(all_zs), all_mask)

    def pi_loss(self, pi_params, params, q_scale, zs, mask, batch, key):
        """Policy prior loss: -(alpha * entropy + avg Q) / S, rho^t weighted, latents detached."""
        cfg, task = self.cfg, batch.get("task")
        k_pi, k_q = jax.random.split(key)
        full = {**params, "pi": pi_params}
        a, aux = self.model.pi(full, zs, k_pi, task)
        q = self.model.q_value(jax.lax.stop_gradient(params), zs, a, k_q, task)
        q_scale = self.updated_q_scale(q_scale, jax.lax.stop_gradient(q[0]))
        rho = (cfg.rho ** jnp.arange(zs.shape[0]))[:, None]
        per_sample = -(cfg.entropy_coef * aux["entropy"] + q / q_scale)
        loss = jnp.sum(rho * mask * per_sample) / (zs.shape[0] * zs.shape[1])
        return loss, (q_scale, aux["entropy"].mean())

    def updated_q_scale(self, scale: jax.Array, q: jax.Array) -> jax.Array:
        """EMA of the 5th-95th percentile range of Q (TD-MPC2's RunningScale), floored at 1e-3."""
        spread = jnp.percentile(q, 95) - jnp.percentile(q, 5)
        return jnp.maximum(scale + self.cfg.tau * (spread - scale), 1e-3)

    def update(self, state: TDMPC2State, batch: dict, key: jax.Array) -> tuple[TDMPC2State, dict]:
        """One gradient step on the world model, one on the prior, then the EMA of the target Qs."""
        k_model, k_pi = jax.random.split(key)
        grad_fn = jax.value_and_grad(self.model_loss, has_aux=True)
        (total, (losses, zs, mask)), grads = grad_fn(state.params, state.target_qs, batch, k_model)
        updates, model_opt = self.model_tx.update(grads, state.model_opt, state.params)
        params = optax.apply_updates(state.params, updates)

        pi_grad_fn = jax.value_and_grad(self.pi_loss, has_aux=True)
        (pi_loss, (q_scale, entropy)), pi_grads = pi_grad_fn(
            params["pi"], params, state.q_scale, zs, mask, batch, k_pi)
        pi_updates, pi_opt = self.pi_tx.update(pi_grads, state.pi_opt, params["pi"])
        params = {**params, "pi": optax.apply_updates(params["pi"], pi_updates)}
        target_qs = optax.incremental_update(params["qs"], state.target_qs, self.cfg.tau)
        new_state = TDMPC2State(params, target_qs, model_opt, pi_opt, q_scale, state.step + 1)
        metrics = {**losses, "total_loss": total, "pi_loss": pi_loss, "pi_entropy": entropy, "q_scale": q_scale,
                   "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics
