"""What REPPO (Voelcker et al., 2025, "Relative Entropy Pathwise Policy Optimization", arXiv 2507.11019)
needs beyond a policy: soft TD(lambda) targets for a Q critic, a categorical (HL-Gauss) Q network with
auxiliary heads, the KL trust-region actor loss, the two Lagrange multipliers and their optimiser.
Shared by the Gaussian agent (`agents.reppo`) and DA-MDP:REPPO (`agents.da_mdp_reppo`), whose policies
are both Gaussian per step (a pre-tanh Gaussian; one Gaussian kernel per denoising step).

    targets = soft_lambda_returns(reward, next_log_prob, next_q, done, truncation, alpha, gamma, lam)
    kl = sampled_gaussian_kl(old_loc, old_scale, new_loc, new_scale, key, 16)      # per sample [B]
    actor, diag = trust_region_actor_loss(log_prob, q, kl, alpha, lambda_kl, bound)
    mult, diag = multiplier_losses(log_alpha, log_lambda_kl, entropy, target_entropy, kl, bound)

Soft targets (REPPO's and the DA-MDP reference's placement): the transition t -> t + 1 earns
r_t - gamma alpha log pi(a'|s'_t), with a' ~ pi(.|s'_t) at the state it reached (the kept final
observation where an episode ended); the entropy term is dropped at a termination (no action follows).
G_t = soft_r_t + gamma ((1 - lambda) Q(s', a') + lambda G_{t+1}), cut to soft_r_t + gamma Q(s', a') at a
truncation and at the rollout's last step, to r_t at a termination (`actor_critic.td_lambda_targets`).

Actor, per sample: sg(alpha) log pi(a~|s) - Q(s, a~) with a~ reparameterised while the sampled forward
KL(pi_old || pi) is below the bound, else sg(lambda_KL) KL. Multipliers (both exp-parametrised):
alpha sg(H - H_target) (alpha rises while the entropy is below the target) and -lambda_KL sg(KL - bound)
(lambda_KL rises while the KL is above the bound), on their own Adam.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mbdpo_jax.models import hl_gauss
from mbdpo_jax.models.actor_critic import td_lambda_targets
from mbdpo_jax.nn.layers import MLP

AUX_WEIGHT = 0.1  # weight of the critic's next-embedding and reward losses (REPPO, DA-MDP reference)
MULTIPLIERS = ("log_alpha", "log_lambda_kl")


def soft_lambda_returns(reward: jax.Array, next_log_prob: jax.Array, next_q: jax.Array, done: jax.Array,
                        truncation: jax.Array, alpha: Any, gamma: Any, lam: float) -> jax.Array:
    """Soft TD(lambda) targets [T, ...] of a time-major rollout (see the module docstring). next_log_prob
    and next_q are log pi(a'|s'_t) and Q(s'_t, a') of a fresh a' at the state each step reached; gamma is a
    scalar or per-step array (DA-MDP's augmented steps)."""
    dtype = next_q.dtype
    alive = 1.0 - done.astype(dtype)
    soft = reward - gamma * alpha * alive * jax.lax.stop_gradient(next_log_prob)
    ends = jnp.maximum(done.astype(dtype), truncation.astype(dtype))
    return jax.lax.stop_gradient(td_lambda_targets(soft, alive * next_q, ends, gamma, lam))


def sampled_gaussian_kl(old_loc: jax.Array, old_scale: jax.Array, loc: jax.Array, scale: jax.Array,
                        key: jax.Array, num_samples: int) -> jax.Array:
    """A num_samples-sample estimate of KL(N(old) || N(new)) per leading entry [...] (diagonal Gaussians
    over the last axis); the samples come from the old distribution, gradients flow into loc and scale."""
    old_loc, old_scale = jax.lax.stop_gradient(old_loc), jax.lax.stop_gradient(old_scale)
    x = old_loc + old_scale * jax.random.normal(key, (num_samples,) + old_loc.shape, old_loc.dtype)
    log_ratio = (-0.5 * jnp.square((x - old_loc) / old_scale) - jnp.log(old_scale)
                 + 0.5 * jnp.square((x - loc) / scale) + jnp.log(scale))
    return jnp.mean(jnp.sum(log_ratio, axis=-1), axis=0)


def trust_region_actor_loss(log_prob: jax.Array, q: jax.Array, kl: jax.Array, alpha: jax.Array,
                            lambda_kl: jax.Array, bound: float) -> tuple[jax.Array, dict]:
    """Mean over samples of where(KL < bound, sg(alpha) log pi - Q, sg(lambda_KL) KL), and diagnostics."""
    alpha, lambda_kl = jax.lax.stop_gradient(alpha), jax.lax.stop_gradient(lambda_kl)
    inside = kl < bound
    loss = jnp.where(inside, alpha * log_prob - q, lambda_kl * kl)
    return jnp.mean(loss), {"kl": jnp.mean(kl), "kl_inside_fraction": jnp.mean(inside.astype(loss.dtype)),
                            "actor_q": jnp.mean(q)}


def multiplier_losses(params: dict, entropy: jax.Array, target_entropy: float, kl: jax.Array,
                      bound: float) -> tuple[jax.Array, dict]:
    """alpha sg(H - H_target) - lambda_KL sg(KL - bound) of the exp-parametrised multipliers in `params`
    ({"log_alpha", "log_lambda_kl"}); entropy and kl are batch means."""
    alpha, lambda_kl = jnp.exp(params["log_alpha"]), jnp.exp(params["log_lambda_kl"])
    loss = (alpha * jax.lax.stop_gradient(entropy - target_entropy)
            - lambda_kl * jax.lax.stop_gradient(kl - bound))
    return loss, {"alpha": alpha, "lambda_kl": lambda_kl}


def actor_and_multiplier_losses(params: dict, log_prob: jax.Array, q: jax.Array, kl: jax.Array, entropy: jax.Array,
                                target_entropy: float, bound: float) -> tuple[jax.Array, dict]:
    """The trust-region actor loss plus the multipliers' losses, with the current alpha and lambda_KL of
    `params`; log_prob, q and kl are per sample (log_prob: the entropy term's log-density), entropy the
    batch's estimate. Returns (loss, metrics)."""
    actor_loss, actor_metrics = trust_region_actor_loss(
        log_prob, q, kl, jnp.exp(params["log_alpha"]), jnp.exp(params["log_lambda_kl"]), bound)
    multiplier_loss, multipliers = multiplier_losses(params, entropy, target_entropy, jnp.mean(kl), bound)
    return actor_loss + multiplier_loss, {"actor_loss": actor_loss, "multiplier_loss": multiplier_loss,
                                          "entropy": entropy, **actor_metrics, **multipliers}


def check_settings(cfg: Any, widths: tuple[str, ...]) -> None:
    """The checks of REPPO's two configs (`agents.reppo`, `agents.da_mdp_reppo`) on their fields of these
    names, one-line errors naming the value and the allowed range; `widths` names their tuples of widths."""
    for name in ("num_steps", "epochs", "minibatches", "kl_samples"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    for name in ("learning_rate", "grad_clip", "kl_bound", "init_alpha", "init_lambda_kl", "multiplier_lr",
                 "reward_scale"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if not 0 < cfg.gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {cfg.gamma}")
    if not 0 <= cfg.td_lambda <= 1:
        raise ValueError(f"td-lambda must be in [0, 1], got {cfg.td_lambda}")
    for name in widths:
        value = tuple(getattr(cfg, name))
        if not (value and min(value) > 0):
            raise ValueError(f"{name.replace('_', '-')} needs positive widths, got {value}")
    hl_gauss.HLGauss(cfg.num_bins, cfg.v_min, cfg.v_max, cfg.sigma_ratio).validate()


def init_multipliers(alpha: float, lambda_kl: float) -> dict:
    """{"log_alpha", "log_lambda_kl"} at the given initial values."""
    return {"log_alpha": jnp.log(jnp.asarray(alpha, jnp.result_type(float))),
            "log_lambda_kl": jnp.log(jnp.asarray(lambda_kl, jnp.result_type(float)))}


def optimizer(learning_rate: float, grad_clip: float, multiplier_lr: float) -> optax.GradientTransformation:
    """Global-norm clip + Adam(learning_rate) on the networks, plain Adam(multiplier_lr) on the multipliers
    (the top-level keys of MULTIPLIERS in the params dict)."""
    labels = lambda params: {k: "multiplier" if k in MULTIPLIERS else "network" for k in params}
    return optax.multi_transform(
        {"network": optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(learning_rate)),
         "multiplier": optax.adam(multiplier_lr)}, labels)


class CategoricalQ(nn.Module):
    """Q(x) on an input x (state and action features): LayerNorm swish hidden layers give an embedding h;
    heads give HL-Gauss logits [num_bins], a prediction of the next transition's embedding [width] and of
    the reward [] (the auxiliary losses)."""

    hidden: Sequence[int]
    num_bins: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(logits, embedding, predicted next embedding, predicted reward)."""
        *body, width = tuple(self.hidden)
        h = MLP(tuple(body), width, out_activation=nn.swish, activation=nn.swish, name="embed")(x)
        logits = nn.Dense(self.num_bins, name="logits")(h)
        aux = nn.Dense(width + 1, name="aux")(h)
        return logits, h, aux[..., :width], aux[..., width]


def critic_loss(q_net: CategoricalQ, params: Any, x: jax.Array, target: jax.Array, next_x: jax.Array,
                reward: jax.Array, aux_mask: jax.Array, bins: hl_gauss.HLGauss) -> tuple[jax.Array, dict]:
    """HL-Gauss cross-entropy to the soft targets plus AUX_WEIGHT x (next-embedding MSE against the
    detached embedding of next_x, reward MSE), the auxiliary terms averaged where aux_mask is 1."""
    logits, _, next_pred, reward_pred = q_net.apply({"params": params}, x)
    next_embedding = jax.lax.stop_gradient(q_net.apply({"params": params}, next_x)[1])
    value_loss = jnp.mean(hl_gauss.loss(logits, target, bins))
    mask = aux_mask.astype(logits.dtype)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    embed_loss = jnp.sum(mask * jnp.mean(jnp.square(next_pred - next_embedding), axis=-1)) / count
    reward_loss = jnp.sum(mask * jnp.square(reward_pred - reward)) / count
    total = value_loss + AUX_WEIGHT * (embed_loss + reward_loss)
    return total, {"value_loss": value_loss, "embed_loss": embed_loss, "reward_loss": reward_loss,
                   "q_mean": jnp.mean(hl_gauss.expected_value(logits, bins)), "target_mean": jnp.mean(target)}
