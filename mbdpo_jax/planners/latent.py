"""Planning from an observation in a latent world model: the acting step TD-MPC2 and MBDPO share.

encode the observation, propose sequences from the policy prior, score candidates with the
trajectory value J (`models.imagine.trajectory_value`, plus an optional per-step bonus), run the
agent's planner over them, and mask the result to the task's real action dimensions.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mbdpo_jax.analysis.deep_incoherence import IncoherenceConfig, policy_incoherence
from mbdpo_jax.models import imagine
from mbdpo_jax.models.world_model import WorldModel

# planner(key, value_fn, prior_fn, warm_start, eval_mode) -> (action, next warm start, aux)
Planner = Callable[..., tuple[jax.Array, jax.Array, dict]]


def planning_objective(model: WorldModel, params: dict, z: jax.Array, gamma: Any, task: Any = None,
                       step_bonus: imagine.StepBonus | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """J at latent z as a function (action sequences [N, H, A], key) -> [N], with the task's action mask
    applied to the candidates (padded action dimensions never act). The key draws the pair of Q
    heads and pi(z_H)'s noise; planners pass a fresh one at every iteration."""
    mask = model.action_mask(task)
    return lambda actions, key: imagine.trajectory_value(model, params, z, actions * mask, key, gamma, task,
                                                         step_bonus)


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


def prior_incoherence(model: WorldModel, params: dict, z: jax.Array, key: jax.Array, cfg: IncoherenceConfig,
                      task: Any = None) -> jax.Array:
    """Sampled KL(pi(.|z) || softmax(Q(z, .) / delta)) of the policy prior against the Q ensemble
    (`analysis.deep_incoherence.policy_incoherence`, an estimate, see there).

    Q is the one the prior's objective maximises (`losses.prior_loss`): the average of two randomly
    drawn Q heads, one pair for all samples at z, here without dropout. log pi is the density of the
    squashed action with the exact tanh Jacobian (`WorldModel.pi`'s log_prob floors 1 - a^2 at 1e-6;
    they differ only for saturated actions), over the task's real action dimensions.
    """
    k_pi, k_q = jax.random.split(key)
    mean, log_std = model.pi_distribution(params, z, task)
    q_fn = lambda actions: model.q_value(params, jnp.broadcast_to(z, actions.shape[:-1] + z.shape), actions, k_q, task)
    return policy_incoherence(k_pi, mean, log_std, q_fn, cfg, model.action_mask(task))


def incoherence_aux(model: WorldModel, params: dict, z: jax.Array, key: jax.Array, eval_mode: bool,
                    cfg: IncoherenceConfig | None, task: Any = None) -> dict:
    """{'incoherence': `prior_incoherence`} when evaluating with the estimate on, else {}. Its key is
    folded from the act key, so the planner's own draws (and actions) are unchanged."""
    if not eval_mode or cfg is None or not cfg.enabled:
        return {}
    return {"incoherence": prior_incoherence(model, params, z, jax.random.fold_in(key, 0x1C0), cfg, task)}


def plan_from_observation(model: WorldModel, params: dict, obs: jax.Array, warm_start: jax.Array, key: jax.Array,
                          planner: Planner, num_pi_trajs: int, gamma: Any, eval_mode: bool, task: Any = None,
                          step_bonus: imagine.StepBonus | None = None,
                          incoherence: IncoherenceConfig | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """One env's planning call: (action [A], next warm start, aux).

    aux holds the planner's own entries plus 'plan_action' (masked, before exploration noise),
    'planned' (1: the agent chose this action), 'prior_divergence' (`planner_prior_divergence`) and,
    in eval mode with `incoherence` on, 'incoherence' (`prior_incoherence`).
    """
    horizon = warm_start.shape[0]
    z = model.encode(params, obs, task)
    prior_fn = lambda k: imagine.rollout_prior(model, params, z, k, num_pi_trajs, horizon, task)
    value_fn = planning_objective(model, params, z, gamma, task, step_bonus)
    action, plan, aux = planner(key, value_fn, prior_fn, warm_start, eval_mode)
    action, aux = masked_to_task(model, action, aux, task)
    aux["prior_divergence"] = planner_prior_divergence(model, params, z, aux["elites"][:, 0], aux["weights"], task)
    aux.update(incoherence_aux(model, params, z, key, eval_mode, incoherence, task))
    return action, plan, aux


def masked_to_task(model: WorldModel, action: jax.Array, aux: dict, task: Any = None) -> tuple[jax.Array, dict]:
    """A planner's action and aux 'plan_action' masked to the task's real action dimensions, with
    aux 'planned' = 1 (the agent chose this action, not the seed phase)."""
    mask = model.action_mask(task)
    aux = {**aux, "plan_action": aux["plan_action"] * mask, "planned": jnp.ones((), action.dtype)}
    return action * mask, aux
