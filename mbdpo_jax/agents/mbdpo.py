"""MBDPO: policy optimisation as reverse diffusion over searched trajectories in a latent world model.

TD-MPC2's pieces (`models.learner.LatentLearner`: world model, Q ensemble, prior, same losses and
coefficients) composed with what differs:
  * acting: model-based reverse diffusion (`planners.mbd`) over action sequences instead of MPPI,
    targeting exp(J / lambda) with J = sum_t gamma^t [r_hat + eta * F_norm(z_t, a_t)] + gamma^H Q(z_H, pi(z_H));
  * an implicit energy F(z, a) (`models.classifier.ActionEnergy`), a real-vs-generated action
    classifier trained jointly with the world model (same optimiser, same clip) on the
    dynamics-rolled latents, that anchors the search to actions seen in the data (use_energy=False
    switches it off);
  * optionally, distillation of the planner's actions into the prior (`distill_coef` > 0; ours, off
    by default as in the official code: plan -> distil -> plan from the new prior is the
    G-iteration of Karwowski et al., 2025);
  * optionally (use_score_network), an amortised score network s_phi(z, x_k, k) (`planners.score`)
    trained on Monte-Carlo score targets; with score_only it replaces the candidate rollouts in
    acting (`mbd.plan_score_only`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.analysis.deep_incoherence import IncoherenceConfig
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models.classifier import ActionEnergy, EnergyConfig, Normalizer
from mbdpo_jax.models.learner import LatentLearner, LearnerConfig, LearnerState
from mbdpo_jax.planners import latent, mbd, mppi
from mbdpo_jax.planners.score import ScoreConfig, ScoreModel, ScoreState


@dataclasses.dataclass(frozen=True)
class MBDPOConfig:
    """MBDPO's settings; defaults are the official code's."""

    learner: LearnerConfig = LearnerConfig()
    planner: mbd.MBDConfig = mbd.MBDConfig()
    energy: EnergyConfig = EnergyConfig()
    score: ScoreConfig = ScoreConfig()
    eta: float = 0.01
    """Weight of the normalised energy F in the planning objective."""
    use_energy: bool = True
    """Train the implicit energy F(z, a) and add eta * F to the planning objective."""
    distill_coef: float = 0.0
    """Weight of distilling the planner's actions into the policy prior (ours; 0 = off, as the official code)."""
    use_score_network: bool = False
    """Train an amortised score network s_phi(z, x_k, k) on Monte-Carlo score targets after each update."""
    score_only: bool = False
    """Plan by reverse diffusion on s_phi alone, without candidate rollouts (needs use_score_network)."""
    incoherence: IncoherenceConfig = IncoherenceConfig()
    """The prior's sampled incoherence against the Q ensemble, logged at evaluation (ours)."""

    def validate(self) -> None:
        self.learner.validate()
        self.planner.validate()
        self.energy.validate()
        self.incoherence.validate()
        if self.eta < 0 or self.distill_coef < 0:
            raise ValueError(f"need eta ({self.eta}) and distill-coef ({self.distill_coef}) >= 0")
        if self.score_only and not self.use_score_network:
            raise ValueError("--score-only needs --use-score-network (score-only planning uses the trained score "
                             "network)")
        if self.use_score_network:
            self.score.validate()


@struct.dataclass
class MBDPOState:
    learner: LearnerState
    energy_stats: Normalizer
    score: Optional[ScoreState] = None


class MBDPO:
    """MBDPO agent; the same pure-function interface as TDMPC2 (`agents.protocols.OffPolicyAgent`)."""

    def __init__(self, cfg: MBDPOConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        self.cfg, self.spec = cfg, spec
        self.learner = LatentLearner(cfg.learner, spec, num_tasks, action_masks)
        self.model = self.learner.model
        self.horizon, self.batch_size = cfg.learner.horizon, cfg.learner.batch_size
        wm = self.model.cfg
        self.energy = ActionEnergy(cfg.energy, wm.latent_dim + (wm.task_dim if wm.multitask else 0), spec.action_size,
                                   wm.mlp_dim)
        self.score = ScoreModel(cfg.score, cfg.planner, self.horizon, wm.latent_dim, spec.action_size,
                                wm.mlp_dim) if cfg.use_score_network else None
        self.replay_extras = {"plan_action": (spec.action_size,), "planned": ()} if cfg.distill_coef > 0 else {}

    def init(self, key: jax.Array) -> MBDPOState:
        k_learner, k_energy, k_score = jax.random.split(key, 3)
        extra = {"energy": self.energy.init(k_energy)} if self.cfg.use_energy else None
        score = None if self.score is None else self.score.init(k_score)
        return MBDPOState(self.learner.init(k_learner, extra), Normalizer.create(), score)

    def initial_act_carry(self) -> jax.Array:
        """The previous plan x_0 [H, A] (zeros at an episode start)."""
        return jnp.zeros((self.horizon, self.spec.action_size))

    def next_act_carry(self, plan: jax.Array, episode_started: jax.Array) -> jax.Array:
        return mppi.shift_warm_start(plan, episode_started)

    # ---- acting -----------------------------------------------------------------------------
    def step_bonus(self, state: MBDPOState, task: Any = None):
        """Per-step eta * F_norm(z, a) of the planning objective (None when the energy is off)."""
        if not self.cfg.use_energy or self.cfg.eta == 0:
            return None
        params = state.learner.params
        return lambda z, a: self.cfg.eta * self.energy.normalized(
            params["energy"], state.energy_stats, self.model.with_task(params, z, task), a)

    def act(self, state: MBDPOState, obs: jax.Array, warm_start: jax.Array, key: jax.Array,
            eval_mode: bool = False, task: Any = None) -> tuple[jax.Array, jax.Array, dict]:
        """Reverse diffusion from one observation; with score_only, on s_phi alone (no candidates;
        'prior_divergence' is then NaN: there is no sample-based planner distribution). In eval mode aux
        also holds the prior's sampled 'incoherence' (`planners.latent.prior_incoherence`)."""
        params = state.learner.params
        if self.cfg.score_only:
            return self._act_score_only(state, obs, warm_start, key, eval_mode, task)
        planner = lambda k, value_fn, prior, warm, ev: mbd.plan(k, value_fn, prior, warm, self.cfg.planner, ev)
        return latent.plan_from_observation(self.model, params, obs, warm_start, key, planner,
                                            self.cfg.planner.num_pi_trajs, self.learner.discount_of(task), eval_mode,
                                            task, self.step_bonus(state, task), self.cfg.incoherence)

    def _act_score_only(self, state, obs, warm_start, key, eval_mode, task):
        z = self.model.encode(state.learner.params, obs, task)
        score_fn = lambda x, k: self.score.score(state.score.params, z, x, k)
        action, plan, aux = mbd.plan_score_only(key, score_fn, warm_start, self.cfg.planner, eval_mode)
        action, aux = latent.masked_to_task(self.model, action, aux, task)
        aux["prior_divergence"] = jnp.full((), jnp.nan, action.dtype)
        aux.update(latent.incoherence_aux(self.model, state.learner.params, z, key, eval_mode, self.cfg.incoherence,
                                          task))
        return action, plan, aux

    # ---- learning ---------------------------------------------------------------------------
    def energy_loss(self, params: dict, zs: jax.Array, mask: jax.Array, batch: dict, key: jax.Array):
        """F's BCE on the dynamics-rolled latents (detached) against hard negatives drawn from the
        prior before the update (MBDPO's official code)."""
        task = batch.get("task")
        k_pi, k_neg = jax.random.split(key)
        frozen = jax.lax.stop_gradient(params)
        z = zs[:-1]
        prior_action, _ = self.model.pi(frozen, z, k_pi, task)
        x = self.model.with_task(frozen, z, task)
        loss, aux = self.energy.loss(params["energy"], x, batch["action"], prior_action, mask[:-1], k_neg)
        return self.cfg.energy.energy_coef * loss, aux

    def distill_term(self, pi_params: dict, params: dict, zs: jax.Array, mask: jax.Array, batch: dict) -> jax.Array:
        """distill_coef * rho^t-weighted -log pi(planner action | z_t) over planned transitions."""
        log_pi = self.model.pi_log_prob({**params, "pi": pi_params}, zs[:-1], batch["plan_action"], batch.get("task"))
        rho = (self.cfg.learner.losses.rho ** jnp.arange(log_pi.shape[0]))[:, None]
        weight = rho * mask[:-1] * batch["planned"]
        return -self.cfg.distill_coef * jnp.sum(weight * log_pi) / jnp.maximum(jnp.sum(weight), 1.0)

    def update(self, state: MBDPOState, batch: dict, key: jax.Array) -> tuple[MBDPOState, dict]:
        """TD-MPC2's update with F in the world-model loss (and distillation when on), the EMA of F's
        logit statistics, then (if on) one step of the score network with the updated model."""
        k_learner, k_score = jax.random.split(key)
        extra = self.energy_loss if self.cfg.use_energy else None
        distill = self.distill_term if self.cfg.distill_coef > 0 else None
        learner, metrics, energy_aux = self.learner.update(state.learner, batch, k_learner, extra, distill)
        stats = state.energy_stats
        if self.cfg.use_energy:
            logits, energy_metrics = energy_aux
            stats = stats.update(logits, self.cfg.energy.energy_momentum)
            metrics = {**metrics, **energy_metrics}
        new = state.replace(learner=learner, energy_stats=stats)
        if self.score is None:
            return new, metrics
        score, score_metrics = self.update_score(new, batch, k_score)
        return new.replace(score=score), {**metrics, **score_metrics}

    def update_score(self, state: MBDPOState, batch: dict, key: jax.Array) -> tuple[ScoreState, dict]:
        """One step of s_phi on Monte-Carlo targets at forward-noised replay action sequences.

        Pairs: z = stop-grad latent of each sequence's first observation, x0 = its H actions, k uniform
        over 1..K, x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps; targets use the planning objective J
        (with the energy bonus when on) and the first `score_batch` sequences of the batch.
        """
        params = state.learner.params
        n = min(self.cfg.score.score_batch, batch["obs"].shape[1])
        task = None if batch.get("task") is None else batch["task"][:n]
        z = jax.lax.stop_gradient(self.model.encode(params, batch["obs"][0, :n], task))
        x0 = jnp.swapaxes(batch["action"][:, :n], 0, 1)
        k_pairs, k_mc = jax.random.split(key)
        steps, x_k = self.score.training_pairs(k_pairs, x0)

        def value_fn(cond):
            z_i, task_i = cond
            return latent.planning_objective(self.model, params, z_i, self.learner.discount_of(task_i), task_i,
                                             self.step_bonus(state, task_i))

        x0_bar = self.score.targets(k_mc, value_fn, (z, task), x_k, steps)
        return self.score.update(state.score, z, x_k, steps, x0_bar)
