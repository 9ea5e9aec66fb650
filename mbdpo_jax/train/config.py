"""The online experiment config: one flat frozen dataclass, so `tyro` turns every field into a flag."""
from __future__ import annotations

import dataclasses
from typing import Optional

ALGORITHMS = ("mbdpo", "tdmpc2")


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Train an agent online on one environment.

    Env steps count agent steps (transitions); each is `action_repeat` control steps of the env.
    """

    algo: str = "mbdpo"
    """Algorithm: mbdpo (reverse-diffusion planning) or tdmpc2 (MPPI planning)."""
    env: str = "dmc/cartpole-swingup"
    """Environment name, see `mbdpo_jax.envs.names()`."""
    steps: int = 100_000
    """Total env steps (all envs together); rounded up to whole chunks of eval_every."""
    num_envs: int = 1
    """Parallel environments stepped together (vmap)."""
    seed: int = 0
    run_dir: str = ""
    """Run directory; empty means runs/<algo>-<env>-s<seed>. Rerun with the same one to resume."""
    model_size: str = "5M"
    """World-model preset: tiny, 1M, 5M, 19M, 48M, 317M."""
    batch_size: int = 256
    horizon: int = 3
    """Model rollout horizon for learning and planning."""
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
    progress: bool = True
    """Show a progress bar."""

    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.algo}-{self.env.replace('/', '-')}-s{self.seed}"

    def validate(self) -> None:
        """Fail before anything compiles, naming the bad value and the allowed ones."""
        from mbdpo_jax.models.world_model import PRESETS

        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; allowed: {', '.join(ALGORITHMS)}")
        if self.model_size not in PRESETS:
            raise ValueError(f"unknown model size {self.model_size!r}; allowed: {', '.join(PRESETS)}")
        positive = ["steps", "num_envs", "batch_size", "horizon", "buffer_size", "eval_every", "eval_episodes",
                    "iterations", "diffusion_steps", "num_samples", "num_elites"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta-start ({self.beta_start}) <= beta-end ({self.beta_end}) < 1")
        if self.eta < 0 or self.distill_coef < 0 or self.exploration_std < 0 or self.temperature <= 0:
            raise ValueError(f"need eta ({self.eta}), distill-coef ({self.distill_coef}), exploration-std "
                             f"({self.exploration_std}) >= 0 and temperature ({self.temperature}) > 0")
        if self.updates_per_step <= 0 or self.lr <= 0:
            raise ValueError(f"updates-per-step and lr must be > 0, got {self.updates_per_step} and {self.lr}")
        if self.seed_steps is not None and self.seed_steps < 0:
            raise ValueError(f"seed-steps must be >= 0, got {self.seed_steps}")
        if self.action_repeat is not None and self.action_repeat < 1:
            raise ValueError(f"action-repeat must be >= 1, got {self.action_repeat}")
        if self.eval_every % self.num_envs:
            raise ValueError(f"eval-every={self.eval_every} must be a multiple of num-envs={self.num_envs}")
        if not (1 <= self.num_elites <= self.num_samples and 0 <= self.num_pi_trajs < self.num_samples):
            raise ValueError(f"need 1 <= num-elites ({self.num_elites}) <= num-samples ({self.num_samples}) and "
                             f"0 <= num-pi-trajs ({self.num_pi_trajs}) < num-samples")
