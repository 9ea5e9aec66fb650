"""The multimodal benchmark: do diffusion policies keep the modes a Gaussian policy collapses?

    python -m experiments.multimodal --out runs/multimodal [--tasks toy/gmm-bandit ...] [--learners ppo ...]

Trains each learner (default: the Gaussian `ppo` and the diffusion `da-mdp-ppo`; `reppo`,
`da-mdp-reppo` and `da-mdp-wpo` by name) on each task (toy/gmm-bandit, toy/double-well,
toy/multi-well, toy/multigoal) for --seeds seeds, with small CPU settings (the laptop presets plus the
per-task settings of TASK_SETTINGS), then samples --samples actions of the trained stochastic policy
(training-mode sampling) at the task's start state and counts the modes reached: a mode (an action box
of `envs.multimodal.MODE_BOXES`) is reached when at least 10% of the samples land in it.

Writes under --out: coverage.json ({task: {learner: {"modes_reached", "num_modes", "mean_return",
"seeds"}}}, modes_reached the median over seeds rounded down, mean_return the eval return averaged
over seeds), details.json (per seed: counts per mode, on the bandit also in the narrow PEAK_BOXES,
modes reached, eval return, training wall time, the settings used) and actions.png (the sampled action
distributions, one panel per task and learner; the bandit's PEAK_BOXES shaded).
The defaults run on a 2-core CPU in under 15 minutes.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

TASKS = ("toy/gmm-bandit", "toy/double-well", "toy/multi-well", "toy/multigoal")
LEARNERS = ("ppo", "da-mdp-ppo", "reppo", "da-mdp-reppo", "da-mdp-wpo")
"""The learners this benchmark knows (on-policy ones with `act(state, obs, key, eval_mode)`)."""
DEFAULT_LEARNERS = ("ppo", "da-mdp-ppo")

# Per task: env steps of training (all envs together), the loop's settings, and changes for every learner that
# has the setting (names as on the command line). The bandit is one step per episode, so its rollouts are short.
TASK_SETTINGS: dict[str, dict] = {
    "toy/gmm-bandit": dict(steps=65_536, num_envs=16, num_steps=16, minibatches=4),
    "toy/double-well": dict(steps=98_304, num_envs=16, num_steps=32, minibatches=8, v_min=-10.0, v_max=40.0),
    "toy/multi-well": dict(steps=98_304, num_envs=16, num_steps=32, minibatches=8, v_min=-10.0, v_max=40.0),
    "toy/multigoal": dict(steps=98_304, num_envs=16, num_steps=32, minibatches=8, v_min=-10.0, v_max=40.0),
}
# Per (task, learner): changes on top of the laptop preset and TASK_SETTINGS. On the bandit (reward log p(a)) the
# diffusion learner's soft-reward weight is 0.05: its entropy is that of the pre-tanh latent x, so the max-entropy
# optimum is proportional to p(tanh x)^(1/alpha), which at alpha = 1 is not normalisable (p > 0 at a = +-1: the
# latent spreads out and the actions pile up near uniform: 8% of them within +-1 std of each mean, as a uniform
# policy's, seeds 0-2). Measured within +-1 std of the means (PEAK_BOXES; seeds 0-2, 1,000 actions): alpha 0.1
# 7-14%, 0.02 5-16%, 0.05 with 4x the steps 5-15% (the inner two peaks resolved, the outer two not). ppo keeps its
# laptop entropy cost 1e-2 (at 1 its Gaussian spreads over [-1, 1]: 4/4 by the 10% rule with no mode kept,
# seeds 0-3; at 1e-2 after 32k steps two seeds straddled the two middle modes, after 64k every seed of 0-3 sits in
# one mode).
LEARNER_SETTINGS: dict[tuple[str, str], dict] = {
    ("toy/gmm-bandit", "da-mdp-ppo"): dict(v_min=-20.0, v_max=5.0, entropy_coef=0.05),
    ("toy/gmm-bandit", "da-mdp-reppo"): dict(v_min=-20.0, v_max=5.0),
    ("toy/gmm-bandit", "da-mdp-wpo"): dict(v_min=-20.0, v_max=5.0),
}
CHUNKS = 4
"""Training runs as this many jitted chunks (steps is rounded down to a multiple of CHUNKS rollouts)."""


@dataclasses.dataclass(frozen=True)
class MultimodalOptions:
    """Settings of the multimodal benchmark."""

    out: Path = Path("runs/multimodal")
    """Directory for coverage.json, details.json and actions.png."""
    tasks: tuple[str, ...] = TASKS
    """Tasks to run (toy/gmm-bandit, toy/double-well, toy/multi-well, toy/multigoal)."""
    learners: tuple[str, ...] = DEFAULT_LEARNERS
    """Learners to run (ppo, da-mdp-ppo, reppo, da-mdp-reppo, da-mdp-wpo); unregistered ones are skipped with a note."""
    seeds: int = 3
    """Seeds per task and learner (0 .. seeds - 1)."""
    samples: int = 1000
    """Actions sampled from each trained policy for the mode count."""
    steps_scale: float = 1.0
    """Multiplies every task's training steps (small values for quick checks)."""
    eval_episodes: int = 8
    """Episodes of the eval return (eval mode)."""

    def validate(self) -> None:
        """One-line error naming the bad value and the allowed ones."""
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
        for learner in self.learners:
            if learner not in LEARNERS:
                raise ValueError(f"unknown learner {learner!r}; allowed: {', '.join(LEARNERS)}")
        if not self.tasks or not self.learners:
            raise ValueError("need at least one task and one learner")
        for name in ("seeds", "samples", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.steps_scale > 0:
            raise ValueError(f"steps-scale must be > 0, got {self.steps_scale}")


def available(learner: str) -> bool:
    """Whether `learner` is registered and its module imports (a learner still being written is not)."""
    from mbdpo_jax import agents

    if learner not in agents.ALGORITHMS:
        return False
    try:
        agents.config_class(learner)
    except (ImportError, AttributeError):
        return False
    return True


def settings(task: str, learner: str, opts: MultimodalOptions) -> dict:
    """The flat settings of one task and learner (laptop preset, then TASK_SETTINGS, LEARNER_SETTINGS)."""
    task_settings = {**TASK_SETTINGS[task], **LEARNER_SETTINGS.get((task, learner), {})}
    rollout = task_settings["num_envs"] * task_settings["num_steps"]
    rollouts = max(CHUNKS, int(task_settings["steps"] * opts.steps_scale) // rollout // CHUNKS * CHUNKS)
    return {**task_settings, "steps": rollouts * rollout, "eval_every": rollouts * rollout // CHUNKS,
            "eval_episodes": opts.eval_episodes}


def build(task: str, learner: str, opts: MultimodalOptions):
    """(on-policy trainer, settings applied) of one task and learner."""
    from mbdpo_jax.train import presets
    from mbdpo_jax.train.config import OnlineConfig, flat_fields, replace_flat
    from mbdpo_jax.train.runner import build_trainer

    agent, loop = presets.preset_defaults("laptop", learner)
    cfg = OnlineConfig(agent=agent, loop=loop)
    names = flat_fields(cfg)
    changes = {k: v for k, v in settings(task, learner, opts).items() if k in names}
    cfg = replace_flat(cfg, env=task, progress=False, **changes)
    trainer = build_trainer(cfg)
    if getattr(trainer.agent, "regime", None) != "on_policy":
        raise ValueError(f"{learner} is not an on-policy learner; this benchmark runs {', '.join(LEARNERS)}")
    return trainer, changes


def sample_actions(trainer, agent_state, key, samples: int) -> np.ndarray:
    """[samples, A] actions of the training-mode (stochastic) policy at start states of the env."""
    import jax

    k_reset, k_act = jax.random.split(key)
    obs = jax.vmap(trainer.env.reset)(jax.random.split(k_reset, samples)).obs
    act = lambda o, k: trainer.agent.act(agent_state, o, k, False)[0]
    return np.asarray(jax.jit(jax.vmap(act))(obs, jax.random.split(k_act, samples)))


def run_cell(task: str, learner: str, opts: MultimodalOptions) -> dict:
    """Train `learner` on `task` for every seed; per-seed results and the actions sampled."""
    import jax

    from mbdpo_jax.analysis.modes import mode_coverage
    from mbdpo_jax.envs.multimodal import MODE_BOXES, PEAK_BOXES

    trainer, changes = build(task, learner, opts)
    chunk, evaluate = jax.jit(trainer.train_chunk), jax.jit(trainer.evaluate)
    chunks = changes["steps"] // changes["eval_every"]
    boxes = MODE_BOXES[task]
    runs = []
    for seed in range(opts.seeds):
        start = time.perf_counter()
        key = jax.random.PRNGKey(seed)
        carry = jax.jit(trainer.init)(key)
        for _ in range(chunks):
            carry, metrics = chunk(carry)
        jax.block_until_ready(carry)
        seconds = time.perf_counter() - start
        finite = all(np.isfinite(float(v)) for v in metrics.values())
        actions = sample_actions(trainer, carry.agent, jax.random.fold_in(key, 1), opts.samples)
        counts, reached = mode_coverage(actions, boxes)
        peaks = {}
        if task in PEAK_BOXES:
            peaks["peak_counts"] = [int(c) for c in mode_coverage(actions, PEAK_BOXES[task])[0]]
        eval_return = float(evaluate(carry.agent, jax.random.fold_in(key, 2))["eval_return"])
        runs.append({"seed": seed, "counts": [int(c) for c in counts], **peaks, "modes_reached": int(reached),
                     "eval_return": eval_return, "train_seconds": seconds, "env_steps": int(carry.env_steps),
                     "finite_metrics": finite, "actions": actions})
        print(f"{task} {learner} seed {seed}: modes {int(reached)}/{len(boxes)} counts {list(map(int, counts))} "
              f"{peaks} eval return {eval_return:.3f} ({seconds:.0f} s)", flush=True)
    return {"settings": changes, "runs": runs}


def summary(cell: dict, num_modes: int) -> dict:
    """The issue's schema: modes reached (median over seeds, rounded down), modes, mean eval return, seeds."""
    reached = [r["modes_reached"] for r in cell["runs"]]
    return {"modes_reached": int(np.floor(np.median(reached))), "num_modes": num_modes,
            "mean_return": float(np.mean([r["eval_return"] for r in cell["runs"]])), "seeds": len(reached)}


def plot(results: dict, out: Path) -> None:
    """actions.png: per task (rows) and learner (columns) the sampled actions of every seed: histograms of 1-D
    actions with the mode boundaries, scatter of 2-D ones with the quadrant lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    learners = sorted({learner for cells in results.values() for learner in cells},
                      key=lambda name: LEARNERS.index(name))
    fig, axes = plt.subplots(len(tasks), len(learners), figsize=(3.6 * len(learners), 2.6 * len(tasks)),
                             squeeze=False)
    for i, task in enumerate(tasks):
        from mbdpo_jax.envs.multimodal import MODE_BOXES, PEAK_BOXES

        boxes = MODE_BOXES[task]
        for j, learner in enumerate(learners):
            ax = axes[i, j]
            cell = results[task].get(learner)
            if cell is None:
                ax.set_axis_off()
                continue
            for r in cell["runs"]:
                a = r["actions"]
                label = f"seed {r['seed']}: {r['modes_reached']}/{len(boxes)}"
                if a.shape[1] == 1:
                    ax.hist(a[:, 0], bins=80, range=(-1, 1), histtype="step", label=label)
                else:
                    ax.scatter(a[:, 0], a[:, 1], s=2, alpha=0.4, label=label)
            edges = sorted({float(e) for e in boxes[:, 0, :].ravel() if np.isfinite(e)})
            for e in edges:
                ax.axvline(e, color="grey", lw=0.8, ls="--")
            for lo, hi in PEAK_BOXES.get(task, np.zeros((0, 1, 2)))[:, 0]:
                ax.axvspan(lo, hi, color="grey", alpha=0.15, lw=0)
            if boxes.shape[1] == 2:
                ax.axhline(0.0, color="grey", lw=0.8, ls="--")
                ax.set_xlim(-1, 1)
                ax.set_ylim(-1, 1)
            ax.set_title(f"{task} / {learner}", fontsize=9)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "actions.png", dpi=110)
    plt.close(fig)


def run(opts: MultimodalOptions) -> Path:
    """Run the benchmark and write coverage.json, details.json and actions.png under opts.out."""
    opts.validate()
    from mbdpo_jax.envs.multimodal import MODE_BOXES

    learners = []
    for learner in opts.learners:
        if available(learner):
            learners.append(learner)
        else:
            print(f"note: skipping learner {learner!r}: not registered (or its module does not import) yet",
                  flush=True)
    if not learners:
        raise ValueError(f"none of the learners {', '.join(opts.learners)} is registered")
    opts.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {task: {learner: run_cell(task, learner, opts) for learner in learners} for task in opts.tasks}
    seconds = time.perf_counter() - start
    coverage = {task: {learner: summary(cell, len(MODE_BOXES[task])) for learner, cell in cells.items()}
                for task, cells in results.items()}
    details = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()},
               "min_fraction": 0.1, "seconds": seconds,
               "mode_boxes": {task: np.where(np.isfinite(MODE_BOXES[task]), MODE_BOXES[task], None).tolist()
                              for task in opts.tasks},
               "results": {task: {learner: {"settings": cell["settings"], "summary": coverage[task][learner],
                                            "runs": [{k: v for k, v in r.items() if k != "actions"} for r in cell["runs"]]}
                                  for learner, cell in cells.items()} for task, cells in results.items()}}
    (opts.out / "coverage.json").write_text(json.dumps(coverage, indent=2) + "\n")
    (opts.out / "details.json").write_text(json.dumps(details, indent=2) + "\n")
    plot(results, opts.out)
    print(json.dumps(coverage, indent=2))
    print(f"wall time {seconds:.0f} s")
    return opts.out


def main(argv: list[str] | None = None) -> int:
    import tyro

    from experiments.common import run_or_explain

    opts = tyro.cli(MultimodalOptions, args=argv, prog="python -m experiments.multimodal", description=__doc__)
    return run_or_explain(lambda: run(opts))


if __name__ == "__main__":
    sys.exit(main())
