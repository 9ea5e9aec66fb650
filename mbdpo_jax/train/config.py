"""Experiment configs: flat frozen dataclasses, so `tyro` turns every field into a flag.

`AgentOptions` holds what builds an agent (algorithm, model size, planner, learning); the online,
pretraining and fine-tuning configs extend it with what their loops need.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

ALGORITHMS = ("mbdpo", "tdmpc2")


def _require_positive(cfg: object, names: list[str]) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")


@dataclasses.dataclass(frozen=True)
class AgentOptions:
    """What builds an agent."""

    algo: str = "mbdpo"
    """Algorithm: mbdpo (reverse-diffusion planning) or tdmpc2 (MPPI planning)."""
    model_size: str = "5M"
    """World-model preset: tiny, 1M, 5M, 19M, 48M, 317M."""
    batch_size: int = 256
    horizon: int = 3
    """Model rollout horizon for learning and planning."""
    lr: float = 3e-4
    iterations: int = 6
    """MPPI iterations (tdmpc2)."""
    diffusion_steps: int = 20
    """Reverse-diffusion steps K (mbdpo)."""
    beta_start: float = 1e-4
    """First beta of the linear noise schedule (mbdpo)."""
    beta_end: float = 1e-2
    """Last beta of the linear noise schedule (mbdpo)."""
    num_samples: int = 512
    """Candidate action sequences per planner iteration / diffusion step."""
    num_elites: int = 64
    num_pi_trajs: int = 24
    """Candidates proposed by rolling out the policy prior."""
    temperature: float = 0.5
    """MPPI temperature (tdmpc2) / lambda of exp(J / lambda) (mbdpo)."""
    exploration_std: float = 0.05
    """Gaussian noise added to the executed action while training (mbdpo)."""
    use_energy: bool = True
    """Train the implicit energy F(z, a) and add eta * F to the planning objective (mbdpo)."""
    eta: float = 0.01
    """Weight of the normalised energy in the planning objective (mbdpo)."""
    distill_coef: float = 0.1
    """Weight of distilling the planner's actions into the policy prior (mbdpo)."""
    use_score_network: bool = False
    """Train an amortised score network s_phi(z, x_k, k) on Monte-Carlo score targets after each update
    (mbdpo); acting keeps the Monte-Carlo planner unless --score-only."""
    score_only: bool = False
    """Plan by reverse diffusion on s_phi alone, without candidate rollouts (mbdpo; needs
    --use-score-network)."""
    score_samples: int = 64
    """Candidates per Monte-Carlo score target when training s_phi (mbdpo, --use-score-network)."""

    def validate(self) -> None:
        """Fail before anything compiles, naming the bad value and the allowed ones."""
        from mbdpo_jax.models.world_model import PRESETS

        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; allowed: {', '.join(ALGORITHMS)}")
        if self.model_size not in PRESETS:
            raise ValueError(f"unknown model size {self.model_size!r}; allowed: {', '.join(PRESETS)}")
        _require_positive(self, ["batch_size", "horizon", "lr", "iterations", "diffusion_steps", "num_samples",
                                 "num_elites", "temperature"])
        if not (self.num_elites <= self.num_samples and 0 <= self.num_pi_trajs < self.num_samples):
            raise ValueError(f"need 1 <= num-elites ({self.num_elites}) <= num-samples ({self.num_samples}) and "
                             f"0 <= num-pi-trajs ({self.num_pi_trajs}) < num-samples")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta-start ({self.beta_start}) <= beta-end ({self.beta_end}) < 1")
        if self.eta < 0 or self.distill_coef < 0 or self.exploration_std < 0:
            raise ValueError(f"need eta ({self.eta}), distill-coef ({self.distill_coef}) and exploration-std "
                             f"({self.exploration_std}) >= 0")
        self._validate_score_options()

    def _validate_score_options(self) -> None:
        if self.algo != "mbdpo" and (self.use_score_network or self.score_only):
            raise ValueError(f"--use-score-network and --score-only apply to --algo mbdpo only, got algo={self.algo!r}")
        if self.score_only and not self.use_score_network:
            raise ValueError("--score-only needs --use-score-network (score-only planning uses the trained score "
                             "network)")
        _require_positive(self, ["score_samples"])


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """What drives an online loop on one environment."""

    env: str = "dmc/cartpole-swingup"
    """Environment name, see `mbdpo_jax.envs.names()`."""
    steps: int = 100_000
    """Total env steps (all envs together); rounded up to whole chunks of eval_every."""
    num_envs: int = 1
    """Parallel environments stepped together (vmap)."""
    seed: int = 0
    run_dir: str = ""
    """Run directory; empty means runs/<algo>-<env>-s<seed>. Rerun with the same one to resume."""
    updates_per_step: float = 1.0
    """Gradient updates per env step (update-to-data ratio)."""
    seed_steps: Optional[int] = None
    """Random-action steps before learning; None means max(1000, 5 * episode length)."""
    buffer_size: int = 1_000_000
    eval_every: int = 10_000
    """Env steps between evaluations; also the jitted chunk size and the checkpoint period."""
    eval_episodes: int = 10
    action_repeat: Optional[int] = None
    """None means the env family's default (2 for dmc/, 1 otherwise)."""
    save_dataset: bool = False
    """At the end, save the replay buffer as an offline dataset in <run-dir>/dataset."""
    progress: bool = True
    """Show a progress bar."""

    def validate_loop(self) -> None:
        _require_positive(self, ["steps", "num_envs", "buffer_size", "eval_every", "eval_episodes",
                                 "updates_per_step"])
        if self.seed_steps is not None and self.seed_steps < 0:
            raise ValueError(f"seed-steps must be >= 0, got {self.seed_steps}")
        if self.action_repeat is not None and self.action_repeat < 1:
            raise ValueError(f"action-repeat must be >= 1, got {self.action_repeat}")
        if self.eval_every % self.num_envs:
            raise ValueError(f"eval-every={self.eval_every} must be a multiple of num-envs={self.num_envs}")


@dataclasses.dataclass(frozen=True)
class OnlineConfig(LoopOptions, AgentOptions):
    """Train an agent online on one environment.

    Env steps count agent steps (transitions); each is `action_repeat` control steps of the env.
    """

    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.algo}-{self.env.replace('/', '-')}-s{self.seed}"

    def validate(self) -> None:
        super().validate()
        self.validate_loop()


@dataclasses.dataclass(frozen=True)
class PretrainConfig(AgentOptions):
    """Pretrain one (multi-task) world model and prior offline on datasets, evaluating in the real envs."""

    data: tuple[str, ...] = ()
    """Dataset directories (see experiments.collect); one task per distinct env."""
    steps: int = 20_000
    """Gradient updates."""
    eval_every: int = 5_000
    """Updates between evaluations (also the jitted chunk size and the checkpoint period)."""
    eval_episodes: int = 5
    segment_length: int = 64
    """Datasets are cut into segments of this many steps; sequences are sampled within one."""
    seed: int = 0
    run_dir: str = ""
    """Run directory; empty means runs/pretrain-<algo>-<model-size>-s<seed>. Rerun to resume."""
    progress: bool = True

    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/pretrain-{self.algo}-{self.model_size}-s{self.seed}"

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise ValueError("--data needs at least one dataset directory")
        _require_positive(self, ["steps", "eval_every", "eval_episodes", "segment_length"])
        if self.segment_length <= self.horizon:
            raise ValueError(f"segment-length ({self.segment_length}) must exceed horizon ({self.horizon})")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(LoopOptions):
    """Continue online from a pretrained run on one of its tasks, or on a new one (new task embedding).

    Agent options (algorithm, model size, planner) are the pretrained run's.
    """

    checkpoint: str = ""
    """Run directory written by experiments.pretrain."""
    steps: int = 40_000
    seed_steps: Optional[int] = 0
    """Random-action steps before planning; the pretrained prior makes 0 reasonable."""
    eval_every: int = 5_000

    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/finetune-{self.env.replace('/', '-')}-s{self.seed}"

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint must name a pretraining run directory")
        self.validate_loop()
