"""TD-MPC2's learning step as a small module agents compose (Hansen et al., 2024, Alg. 1).

`LatentLearner` owns the world model, its two optimisers (world model with the encoder at a
lower learning rate; policy prior) and one `update`: a gradient step on the world-model loss
(plus an optional extra loss over parameters the agent adds to the model's, e.g. MBDPO's energy),
a step on the prior loss, and the EMA of the target Qs. TD-MPC2 and MBDPO both use it; an agent
adds only what differs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models import losses
from mbdpo_jax.models.losses import LossCoefficients
from mbdpo_jax.models.world_model import PRESETS, WorldModel, WorldModelConfig


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """World-model size and learning settings; defaults are TD-MPC2's published ones."""

    model_size: str = "5M"
    """World-model preset: tiny, 1M, 5M, 19M, 48M, 317M."""
    horizon: int = 3
    """Model rollout horizon for learning and planning."""
    batch_size: int = 256
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    """The encoder's learning rate is lr * enc_lr_scale."""
    grad_clip_norm: float = 20.0
    discount: Optional[float] = None
    """None: from the episode length, gamma = clip((T/5 - 1)/(T/5), 0.95, 0.995) (TD-MPC2)."""
    episodic: Optional[bool] = None
    """Learn a termination head and mask planning after predicted terminations; None: on for envs
    whose episodes can terminate early (e.g. brax/hopper, brax/ant)."""
    losses: LossCoefficients = LossCoefficients()

    def validate(self) -> None:
        """One-line error naming the bad value and the allowed ones."""
        if self.model_size not in PRESETS:
            raise ValueError(f"unknown model size {self.model_size!r}; allowed: {', '.join(PRESETS)}")
        for name in ("horizon", "batch_size", "lr", "enc_lr_scale", "grad_clip_norm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.discount is not None and not 0 < self.discount <= 1:
            raise ValueError(f"discount must be in (0, 1] (or None: from the episode length), got {self.discount}")
        self.losses.validate()


@struct.dataclass
class LearnerState:
    """Parameters and optimiser states of a TD-MPC2-style learner."""

    params: dict
    target_qs: Any
    model_opt: optax.OptState
    pi_opt: optax.OptState
    q_scale: jax.Array
    step: jax.Array


# extra_loss(params, zs [H+1, B, Z] detached, mask [H+1, B], batch, key) -> (loss, aux)
ExtraLoss = Callable[[dict, jax.Array, jax.Array, dict, jax.Array], tuple[jax.Array, Any]]


class LatentLearner:
    """World model + prior + Q ensemble, their optimisers and one TD-MPC2 update; pure methods."""

    def __init__(self, cfg: LearnerConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        """action_masks: [num_tasks, action_size] real-action-dimension masks of a multi-task agent."""
        cfg.validate()
        self.cfg, self.spec = cfg, spec
        episodic = spec.terminates if cfg.episodic is None else cfg.episodic
        self.model = WorldModel(
            WorldModelConfig.from_preset(cfg.model_size, spec.obs_size, spec.action_size, num_tasks=num_tasks,
                                         episodic=episodic),
            action_masks,
        )
        self.discount = (cfg.discount if cfg.discount is not None
                         else losses.discount_from_episode_length(spec.episode_length))
        # Multi-task: one discount per task from its own episode length, as TD-MPC2 does.
        lengths = spec.task_episode_lengths
        self.task_discounts = None if cfg.discount is not None or not lengths else jnp.asarray(
            [losses.discount_from_episode_length(n) for n in lengths], jnp.float32)
        self.model_tx = optax.chain(
            optax.clip_by_global_norm(cfg.grad_clip_norm),
            optax.multi_transform(
                {"encoder": optax.adam(cfg.lr * cfg.enc_lr_scale), "rest": optax.adam(cfg.lr)},
                lambda params: {k: ("encoder" if k == "encoder" else "rest") for k in params},
            ),
        )
        self.pi_tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), optax.adam(cfg.lr, eps=1e-5))

    def init(self, key: jax.Array, extra_params: dict | None = None) -> LearnerState:
        """Fresh state; `extra_params` (e.g. {'energy': ...}) join the world model's parameters and optimiser."""
        params = {**self.model.init(key), **(extra_params or {})}
        return LearnerState(
            params=params,
            target_qs=params["qs"],
            model_opt=self.model_tx.init(params),
            pi_opt=self.pi_tx.init(params["pi"]),
            q_scale=jnp.ones(()),
            step=jnp.zeros((), jnp.int32),
        )

    def discount_of(self, task: Any = None) -> jax.Array | float:
        """gamma of `task` (an id or an array of ids); the single discount when there are no per-task ones."""
        if task is None or self.task_discounts is None:
            return self.discount
        return self.task_discounts[task]

    def _model_loss(self, params: dict, target_qs: Any, batch: dict, key: jax.Array,
                    extra_loss: ExtraLoss | None):
        k_model, k_extra = jax.random.split(key) if extra_loss is not None else (key, None)
        gamma = self.discount_of(batch.get("task"))
        total, (metrics, zs, mask) = losses.world_model_loss(self.model, self.cfg.losses, params, target_qs, batch,
                                                             k_model, gamma)
        if extra_loss is None:
            return total, (metrics, zs, mask, None)
        extra, extra_aux = extra_loss(params, zs, mask, batch, k_extra)
        return total + extra, (metrics, zs, mask, extra_aux)

    def update(self, state: LearnerState, batch: dict, key: jax.Array, extra_loss: ExtraLoss | None = None,
               pi_loss_term: Callable | None = None) -> tuple[LearnerState, dict, Any]:
        """One gradient step on the world model (+ extra loss), one on the prior, then the target-Q EMA.

        pi_loss_term(pi_params, params, zs, mask, batch) -> scalar is added to the prior loss (MBDPO's
        optional distillation). Returns (new state, metrics, the extra loss's aux).
        """
        k_model, k_pi = jax.random.split(key)
        grad_fn = jax.value_and_grad(self._model_loss, has_aux=True)
        (total, (metrics, zs, mask, extra_aux)), grads = grad_fn(state.params, state.target_qs, batch, k_model,
                                                                 extra_loss)
        updates, model_opt = self.model_tx.update(grads, state.model_opt, state.params)
        params = optax.apply_updates(state.params, updates)

        def pi_objective(pi_params):
            loss, aux = losses.prior_loss(self.model, self.cfg.losses, pi_params, params, state.q_scale, zs, mask,
                                          batch.get("task"), k_pi)
            if pi_loss_term is not None:
                loss = loss + pi_loss_term(pi_params, params, zs, mask, batch)
            return loss, aux

        (pi_loss, (q_scale, entropy)), pi_grads = jax.value_and_grad(pi_objective, has_aux=True)(params["pi"])
        pi_updates, pi_opt = self.pi_tx.update(pi_grads, state.pi_opt, params["pi"])
        params = {**params, "pi": optax.apply_updates(params["pi"], pi_updates)}
        target_qs = optax.incremental_update(params["qs"], state.target_qs, self.cfg.losses.tau)
        new_state = LearnerState(params, target_qs, model_opt, pi_opt, q_scale, state.step + 1)
        metrics = {**metrics, "total_loss": total, "pi_loss": pi_loss, "pi_entropy": entropy, "q_scale": q_scale,
                   "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics, extra_aux
