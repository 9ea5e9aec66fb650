"""The MnM tabular reproduction: gridworld learning curves and the exact joint optimisation of the bound.

Example: `python -m experiments.mnm_tabular --out benchmarks/results/2026-12-02-cpu-mnm-tabular`.

Runs the learners of `mbdpo_jax.analysis.tabular.train` (Q-learning, MnM, VMBPO and a model
trained for accuracy alone) on the 10 x 10 gridworld of MnM (Eysenbach et al., arXiv 2110.02758,
Sec. 5, Fig. 2a) for --seeds seeds, and the exact alternation of `joint_optimisation` (Fig. 3b).
--out is a path prefix: it writes OUT.json (every number), OUT.md (the table) and OUT.png (the plot).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tyro


@dataclasses.dataclass(frozen=True)
class Options:
    """The MnM tabular reproduction on a 2-core CPU (a few minutes at the defaults)."""

    out: str
    """Path prefix of the outputs: OUT.json, OUT.md and OUT.png."""
    seeds: int = 5
    iterations: int = 1501
    """Learner iterations, as in the authors' notebook."""
    rollout_steps: int = 200
    learning_rate: float = 1e-2
    epsilon: float = 0.5
    methods: tuple[str, ...] = ("q_learning", "mnm", "vmbpo", "accuracy_model")
    target_fractions: tuple[float, ...] = (0.95, 0.99)
    """Fractions of the optimal return whose first crossing is reported."""
    joint_iterations: int = 30
    smoothing: float = 0.5
    curve_every: int = 10
    """Keep every n-th point of the return curves in the JSON (the crossings use all of them)."""


def _summarise(returns: np.ndarray, optimal: float, opts: Options) -> dict:
    from mbdpo_jax.analysis.tabular import iterations_to_reach

    reach = {}
    for fraction in opts.target_fractions:
        hits = [iterations_to_reach(run, fraction * optimal) for run in returns]
        reached = [h for h in hits if h is not None]
        reach[str(fraction)] = dict(per_seed=hits, reached=len(reached),
                                    mean=float(np.mean(reached)) if reached else None,
                                    min=min(reached, default=None), max=max(reached, default=None))
    tail = returns[:, -100:].mean(-1)
    return dict(reach=reach, final_return_mean=float(tail.mean()), final_return_min=float(tail.min()),
                final_return_max=float(tail.max()))


def _reach_cell(entry: dict, seeds: int) -> str:
    if not entry["reached"]:
        return f"never (0/{seeds})"
    return f"{entry['mean']:.0f} [{entry['min']}, {entry['max']}] ({entry['reached']}/{seeds})"


def _markdown(result: dict, opts: Options) -> str:
    fr = opts.target_fractions
    lines = [f"# MnM tabular reproduction ({result['date']}, {result['device']})", "",
             f"Gridworld 10 x 10, slip 0.5, gamma 0.9; optimal return {result['optimal_return']:.4f}. "
             f"{opts.seeds} seeds, {opts.iterations} iterations of {opts.rollout_steps} steps. Iterations to "
             "reach a fraction of the optimal return: mean over the seeds that reach it [min, max] (seeds that do).",
             "", "| method | " + " | ".join(f"iterations to {f:.0%}" for f in fr)
             + " | return, last 100 iterations: mean [min, max] | max TD step |", "|---" * (len(fr) + 3) + "|"]
    for method, summary in result["methods"].items():
        cells = [_reach_cell(summary["reach"][str(f)], opts.seeds) for f in fr]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {summary['final_return_mean']:.3f} "
                     f"[{summary['final_return_min']:.3f}, {summary['final_return_max']:.3f}] | "
                     f"{max(summary['max_td_step']):.2f} |")
    joint = result["joint"]
    lines += ["", f"Exact joint optimisation ({opts.joint_iterations} updates, smoothing {opts.smoothing}): bound "
              f"{joint['bound'][0]:.4f} -> {joint['bound'][-1]:.4f} (maximum {joint['bound_optimum']:.4f}), "
              f"smallest increase {joint['smallest_increase']:.2e}; log return {joint['log_return'][0]:.4f} -> "
              f"{joint['log_return'][-1]:.4f} (optimal {np.log(result['optimal_return']):.4f}).",
              "", f"Command: `{result['command']}`; wall time {result['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _plot(result: dict, curves: dict, opts: Options, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = np.arange(opts.iterations)
    for method, returns in curves.items():
        (line,) = left.plot(steps, returns.mean(0), label=method)
        left.fill_between(steps, returns.min(0), returns.max(0), color=line.get_color(), alpha=0.2)
    left.axhline(result["optimal_return"], color="k", ls="--", lw=1, label="optimal")
    left.set(xlabel="iteration", ylabel="true return of the greedy policy",
             title=f"Gridworld, {opts.seeds} seeds (mean, min-max band)")
    left.legend(fontsize=8)
    joint = result["joint"]
    right.plot(joint["bound"], "-v", ms=4, label="MnM bound L(pi, q)")
    right.plot(joint["log_return"], "-o", ms=4, label="log expected return")
    right.set(xlabel="joint update", title="Exact joint optimisation of the bound")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _joint(mdp, opts: Options) -> dict:
    from mbdpo_jax.analysis import tabular as T

    history = T.joint_optimisation(mdp, opts.joint_iterations, opts.smoothing)
    bound = np.asarray(history["bound"])
    optimum = float(np.asarray(mdp.initial) @ np.asarray(T.soft_value_iteration(mdp)) - np.log(1 - mdp.gamma))
    return dict(bound=bound.tolist(), log_return=np.asarray(history["log_return"]).tolist(),
                bound_optimum=optimum, smallest_increase=float(np.diff(bound).min()))


def run(opts: Options) -> Path:
    """Run every method and the joint optimisation; write OUT.json, OUT.md and OUT.png."""
    import jax

    from mbdpo_jax.analysis import tabular as T

    bad = [m for m in opts.methods if m not in T.METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; allowed: {', '.join(T.METHODS)}")
    start = time.time()
    mdp = T.gridworld()
    optimal = float(T.expected_return(mdp, T.greedy_policy(T.value_iteration(mdp))))
    result = dict(date=datetime.date.today().isoformat(), device=f"{jax.devices()[0].platform}, {os.cpu_count()} cores",
                  command="python -m experiments.mnm_tabular " + " ".join(sys.argv[1:]),
                  config=dataclasses.asdict(opts), optimal_return=optimal, methods={})
    curves = {}
    for method in opts.methods:
        t0 = time.time()
        out = T.train(mdp, method, list(range(opts.seeds)), opts.iterations, opts.rollout_steps,
                      opts.learning_rate, opts.epsilon)
        curves[method] = returns = np.asarray(out["returns"])
        summary = _summarise(returns, optimal, opts)
        summary.update(max_td_step=np.asarray(out["max_td_step"]).tolist(), seconds=time.time() - t0,
                       curves=returns[:, ::opts.curve_every].tolist())
        result["methods"][method] = summary
        print(f"{method}: {summary['reach']} ({summary['seconds']:.0f} s)", flush=True)
    result["joint"] = _joint(mdp, opts)
    result["wall_seconds"] = time.time() - start
    prefix = Path(opts.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=1))
    prefix.with_suffix(".md").write_text(_markdown(result, opts))
    _plot(result, curves, opts, prefix.with_suffix(".png"))
    return prefix


def main(argv: list[str] | None = None) -> int:
    opts = tyro.cli(Options, args=argv, description=__doc__)
    from experiments.common import run_or_explain

    return run_or_explain(lambda: run(opts))


if __name__ == "__main__":
    sys.exit(main())
