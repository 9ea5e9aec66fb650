"""DA-MDP:WPO (arXiv 2512.02019, code sanokows/Diffusion-Augmented-Markov-Decision-Processes): DA-MDP:REPPO
(`agents.da_mdp_reppo`) with its pathwise actor step replaced by Wasserstein Policy Optimisation (Pfau et al.,
2025, arXiv 2505.00663) on every augmented (denoising) step.

    agent = DAMDPWPO(DAMDPWPOConfig(), env.spec)
    state = agent.init(key)
    action, aux = agent.act(state, obs, key, eval_mode)      # one env step: the whole K-step chain (SDE)
    prepared = agent.prepare(state, trajectory)               # DA-MDP:REPPO's soft TD(lambda) targets
    state, metrics = agent.update(state, minibatch, key)      # critic, WPO actor, multipliers

Everything but the actor's loss is DA-MDP:REPPO's, composed (the agent holds a `DAMDPREPPO` as `core`): the
chain, acting, `prepare`, the categorical critic Q(s, x_k, x_{k+1}, k) and its loss, the KL trust region and the
multipliers alpha and lambda_KL with their losses and optimiser.

Actor, per augmented step (s, x_k, k) of a minibatch of env-step rows: x~ = sg(mean_theta(x_k, s, k) +
sqrt(2 eta_k) eps), a sample of the current kernel pi(.|x_k, s) taken as a fixed point, and

    g(theta) = grad_x [log pi_theta(x | x_k, s) - log q_theta(x_k | x)] at x = x~     (the kernel's score)
    h        = grad_x Q(s, x_k, x, k) at x = x~                                          (critic fixed)
    L_WPO    = sum over action dims of sg(alpha g - h) . g(theta)

so that d L_WPO / d theta = (alpha g - h) . d g / d theta: gradient descent moves the kernel along -grad_x of
(alpha log pi/q - Q), the Wasserstein gradient flow of the soft objective, and the step is 0 where grad_x Q =
alpha grad_x (log pi - log q). For the Gaussian kernel g = -(x~ - mean) / (2 eta_k) - grad_x log q, so theta
enters through the mean (u_theta, dt) and the variance and q's eta_{k+1} (dt). As in DA-MDP:REPPO the step's
loss is where(KL < bound, L_WPO, sg(lambda_KL) KL), KL = K x the kl_samples-sample KL(pi_old || pi) of that
step's kernel, averaged over steps and rows; alpha sg(H - H_target) and -lambda_KL sg(KL - bound) train the
multipliers (H = -K mean(log pi - log q) at x~). Friction is frozen, as in the reference's WPO runs: its
gradient is stopped in every loss, so Adam leaves it at its initial value. Evaluation samples the chain with
the SDE (the reference's WPO evaluation).

Not taken from the reference: its critic's auxiliary-loss weight for WPO is 0.05 (this library's is
`models.reppo.AUX_WEIGHT`, 0.1, for both), and its optional diagonal-Fisher preconditioning of the actor's
gradient (off in its WPO runs: remove_fisher_precond true) is not implemented.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mbdpo_jax.agents.da_mdp_reppo import DAMDPREPPO, DAMDPREPPOConfig, DAMDPREPPOState
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models import policy_gradient as pg
from mbdpo_jax.models import reppo


@dataclasses.dataclass(frozen=True)
class DAMDPWPOConfig(DAMDPREPPOConfig):
    """DA-MDP:WPO's settings: DA-MDP:REPPO's, with the reference's WPO values where they differ (its
    config/experiment_overrides/DA_MDP_WPO run): KL bound 0.02, entropy target -8 |A|, HL-Gauss 301 bins on
    [-100, 200], multipliers' Adam at 6e-4, SDE evaluation, friction frozen (always, not a setting). The rest
    as DA-MDP:REPPO's reference: K = 8, score net 4 x 256, critic 2 x 512, 8 epochs x 64 minibatches, lr 1e-3,
    gamma 0.999 and lambda 0.98 per augmented step, K x 16 KL samples, alpha 0.01 and lambda_KL 0.3 at the
    start, grad clip 0.5."""

    num_bins: int = 301
    """HL-Gauss bins of the critic on [v_min, v_max]."""
    kl_bound: float = 0.02
    """Trust region: a step's loss is the WPO term while its K x KL(pi_old || pi) is below this, else lambda_KL KL."""
    multiplier_lr: float = 6e-4
    """Adam learning rate of log alpha and log lambda_KL."""
    entropy_target: float = -8.0
    """Target of the chain's entropy estimate per action dimension."""
    eval_sampler: str = "sde"
    """How eval mode samples the chain: sde (the reference WPO's) or ode."""


class DAMDPWPO:
    """DA-MDP:WPO agent: static config + env spec; all methods are pure (`agents.protocols.OnPolicyAgent`).
    Composes DA-MDP:REPPO (`core`) and replaces its actor loss."""

    regime = "on_policy"

    def __init__(self, cfg: DAMDPWPOConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        if num_tasks != 1:
            raise ValueError(f"da-mdp-wpo is single-task, got num_tasks={num_tasks}")
        self.cfg, self.spec = cfg, spec
        self.core = DAMDPREPPO(cfg, spec)
        self.num_steps, self.epochs, self.minibatches = cfg.num_steps, cfg.epochs, cfg.minibatches
        self.policy = self.core.policy
        self.target_entropy = self.core.target_entropy

    @property
    def K(self) -> int:
        return self.cfg.diffusion_steps

    def init(self, key: jax.Array) -> DAMDPREPPOState:
        return self.core.init(key)

    def act(self, state: DAMDPREPPOState, obs: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, dict]:
        """DA-MDP:REPPO's `act` (eval mode samples by `eval_sampler`, the SDE by default)."""
        return self.core.act(state, obs, key, eval_mode)

    def prepare(self, state: DAMDPREPPOState, trajectory: dict) -> dict:
        """DA-MDP:REPPO's `prepare`: soft TD(lambda) targets and the kernels at prepare time."""
        return self.core.prepare(state, trajectory)

    def q(self, critic: Any, s: jax.Array, x: jax.Array, x_next: jax.Array, k: jax.Array) -> jax.Array:
        """Q(s, x_k, x_{k+1}, k) of the core's critic."""
        return self.core.q(critic, s, x, x_next, k)

    def loss(self, params: dict, minibatch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """DA-MDP:REPPO's critic loss + the WPO actor and multiplier losses (see the module docstring)."""
        critic_loss, critic_metrics = self.core.critic_loss(params, minibatch)
        policy_loss, actor_metrics = self.actor_loss(params, minibatch, key)
        total = critic_loss + policy_loss
        return total, {"total_loss": total, "critic_loss": critic_loss, **critic_metrics, **actor_metrics}

    def actor_loss(self, params: dict, minibatch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """The WPO actor loss in the KL trust region plus the multipliers' losses on env-step rows. The sample
        is x~ = mean + scale * normal(k_step, [B, K, A]) with (k_step, k_kl) = split(key), as in DA-MDP:REPPO;
        friction's gradient is stopped."""
        cfg, K, core = self.cfg, self.K, self.core
        s, x = minibatch["obs"], minibatch["latents"][:, :K]
        steps = jnp.broadcast_to(jnp.arange(K), x.shape[:2])
        k_step, k_kl = jax.random.split(key)
        policy = {**params["policy"], "friction": jax.lax.stop_gradient(params["policy"]["friction"])}
        mean, scale = core.kernels(policy, s, x)
        x_tilde = jax.lax.stop_gradient(mean + scale * jax.random.normal(k_step, mean.shape))
        # per-sample gradients in x~: each sample's log-ratio and Q depend on its own x~ only
        log_ratio, ratio_vjp = jax.vjp(lambda xn: core.log_ratio(policy, x, xn, mean, scale, steps), x_tilde)
        score = ratio_vjp(jnp.ones_like(log_ratio))[0]
        critic = jax.lax.stop_gradient(params["critic"])
        q, q_vjp = jax.vjp(lambda xn: self.q(critic, s[:, None], x, xn, steps), x_tilde)
        q_grad = q_vjp(jnp.ones_like(q))[0]
        alpha, lambda_kl = jnp.exp(params["log_alpha"]), jnp.exp(params["log_lambda_kl"])
        flow = jax.lax.stop_gradient(alpha * score - q_grad)
        wpo = jnp.sum(flow * score, axis=-1)
        kl = K * reppo.sampled_gaussian_kl(minibatch["old_mean"], minibatch["old_scale"], mean, scale, k_kl,
                                           cfg.kl_samples)
        inside = kl < cfg.kl_bound
        actor_loss = jnp.mean(jnp.where(inside, wpo, jax.lax.stop_gradient(lambda_kl) * kl))
        entropy = -K * jnp.mean(log_ratio)
        multiplier_loss, multipliers = reppo.multiplier_losses(params, entropy, self.target_entropy, jnp.mean(kl),
                                                               cfg.kl_bound)
        eta = jnp.square(scale[0]) / 2.0
        return actor_loss + multiplier_loss, {
            "actor_loss": actor_loss, "multiplier_loss": multiplier_loss, "entropy": entropy, "kl": jnp.mean(kl),
            "kl_inside_fraction": jnp.mean(inside.astype(actor_loss.dtype)), "actor_q": jnp.mean(q),
            "flow_sq_norm": jnp.mean(jnp.sum(jnp.square(flow), axis=-1)), "eta_mean": jnp.mean(eta), **multipliers}

    def update(self, state: DAMDPREPPOState, minibatch: dict, key: jax.Array) -> tuple[DAMDPREPPOState, dict]:
        """One step of every loss; the minibatch's raw observations are merged into the running statistics."""
        params, opt, metrics = pg.gradient_step(self.core.tx, self.loss, state.params, state.opt, minibatch, key)
        obs_stats = state.obs_stats.update(minibatch["raw_obs"]) if self.cfg.normalize_obs else state.obs_stats
        return DAMDPREPPOState(params, opt, obs_stats), metrics
