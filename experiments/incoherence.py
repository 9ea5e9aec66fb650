"""Reproduce the incoherence paper's artifacts (arXiv 2510.06545) on its random tree MDPs:

    python -m experiments.incoherence --out runs/incoherence

Writes DIR/results.json (correlation of misalignment with incoherence by temperature over the 140
instances, kappa and return over G-iterations on T4_A2, deterministic and stochastic dynamics),
DIR/table.md (next to the published values) and three plots. Exact tabular computation in float64;
a few seconds on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import tyro

# The paper code's temperature grid and the correlations published with it (Sec. 6).
TEMPERATURES = (0.1, 0.3, 0.5, 0.8, 1.0, 2.0, 4.0, 8.0)
PUBLISHED_CORRELATION = (0.062, 0.088, 0.155, 0.306, 0.369, -0.022, -0.102, -0.109)


@dataclasses.dataclass(frozen=True)
class IncoherenceOptions:
    """Settings of the incoherence reproduction."""

    out: Path = Path("runs/incoherence")
    """Directory for results.json, table.md and the plots."""
    instances_per_size: int = 20
    """Random deterministic trees per size for the misalignment correlation."""
    sizes: tuple[str, ...] = ("T2_A2", "T3_A2", "T4_A2", "T4_A3", "T5_A2", "T6_A2", "T3_A4")
    """Tree sizes of the correlation study (the paper's seven; TREE_SIZES names)."""
    iteration_instances: int = 20
    """T4_A2 trees per dynamics for kappa and return over G-iterations."""
    iteration_size: str = "T4_A2"
    """Tree size of the G-iteration study."""
    iterations: int = 5
    """G-iterations (policies G^0(uniform) .. G^iterations(uniform))."""
    kappa_temperature: float = 1.0
    """delta of kappa_delta over G-iterations."""
    seed: int = 0
    """Base seed; instance seeds derive from it, the size and the instance index."""


def instance_seed(base: int, group: int, index: int) -> int:
    return int(np.random.SeedSequence([base, group, index]).generate_state(1)[0])


def correlation_study(opts: IncoherenceOptions) -> dict:
    """Per instance: misalignment (three readings) and kappa_delta(G(uniform)) for each delta."""
    from mbdpo_jax.analysis import incoherence as inc

    rows = []
    for size in opts.sizes:
        group = list(inc.TREE_SIZES).index(size) if size in inc.TREE_SIZES else -1
        for i in range(opts.instances_per_size):
            seed = instance_seed(opts.seed, group, i)
            mdp = inc.tree_mdp(size, seed=seed)
            naive = inc.goal_condition(mdp, inc.uniform_policy(mdp))
            rows.append({
                "size": size, "seed": seed,
                "misalignment_expected_reward": float(inc.greedy_misalignment(mdp, "expected_reward")),
                "misalignment_success_probability": float(inc.greedy_misalignment(mdp, "success_probability")),
                "regret": float(inc.optimal_success_probability(mdp) - inc.success_probability(mdp, naive)),
                "kappa": {str(d): float(inc.incoherence(mdp, naive, d)) for d in TEMPERATURES},
            })
    readings = ("misalignment_expected_reward", "misalignment_success_probability", "regret")
    by_reading = {name: {str(d): pearson([r[name] for r in rows], [r["kappa"][str(d)] for r in rows])
                         for d in TEMPERATURES} for name in readings}
    return {"instances": rows, "by_reading": by_reading}


def pearson(x: list[float], y: list[float]) -> float | None:
    x, y = np.asarray(x), np.asarray(y)
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


# (name, stochastic dynamics); the last is the paper code's deterministic case: the same trees as
# "deterministic" with reward 1 for each state's most likely action and 0 for the others.
DYNAMICS = (("deterministic", False), ("stochastic", True), ("deterministic_01_rewards", False))


def zero_one_rewards(mdp):
    """Bernoulli rewards made certain: success probability 1 for each state's best action, else 0."""
    rewards = [np.asarray(r) for r in mdp.log_rewards]
    return mdp._replace(log_rewards=tuple(np.where(r == r.max(-1, keepdims=True), 0.0, -np.inf) for r in rewards))


def finite_or_none(value):
    """JSON has no inf/nan: non-finite floats become null, recursively."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def iteration_study(opts: IncoherenceOptions) -> dict:
    """kappa and J along G^k(uniform), k = 0..iterations, with the equivalence gaps."""
    from mbdpo_jax.analysis import incoherence as inc

    out = {}
    for group, (name, stochastic) in enumerate(DYNAMICS):
        kappas, returns, gaps = [], [], {"fold_vs_G": 0.0, "anneal_k_vs_G_k": 0.0, "cumfold_vs_G_2k": 0.0}
        for i in range(opts.iteration_instances):
            mdp = inc.tree_mdp(opts.iteration_size, stochastic=stochastic, seed=instance_seed(opts.seed, 100 + group % 2, i))
            if name == "deterministic_01_rewards":
                mdp = zero_one_rewards(mdp)
            uniform = inc.uniform_policy(mdp)
            sequence = inc.iterate_goal_conditioning(mdp, uniform, max(opts.iterations, 4))
            kappas.append([float(inc.incoherence(mdp, p, opts.kappa_temperature)) for p in sequence[:opts.iterations + 1]])
            returns.append([float(inc.success_probability(mdp, p)) for p in sequence[:opts.iterations + 1]])
            gap = lambda p, q: max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(p, q))
            gaps["fold_vs_G"] = max(gaps["fold_vs_G"], gap(inc.folded_policies(mdp, uniform, 2)[2], sequence[2]))
            gaps["anneal_k_vs_G_k"] = max(gaps["anneal_k_vs_G_k"], gap(inc.annealed_policy(mdp, uniform, 2.0), sequence[2]))
            gaps["cumfold_vs_G_2k"] = max(gaps["cumfold_vs_G_2k"], gap(inc.cumulatively_folded_policies(mdp, 2)[2], sequence[4]))
        kappas, returns = np.array(kappas), np.array(returns)
        with np.errstate(invalid="ignore"):  # the uniform prior's kappa is inf under 0/1 rewards
            kappa_std = kappas.std(0).tolist()
        out[name] = {
            "kappa_mean": kappas.mean(0).tolist(), "kappa_std": kappa_std,
            "return_mean": returns.mean(0).tolist(), "return_std": returns.std(0).tolist(),
            "kappa_monotone_decreasing_fraction": float(np.mean(np.all(np.diff(kappas, axis=1) <= 1e-12, axis=1))),
            "kappa_monotone_decreasing_fraction_from_k1": float(np.mean(np.all(np.diff(kappas[:, 1:], axis=1) <= 1e-12, axis=1))),
            "kappa_mean_monotone_decreasing": bool(np.all(np.diff(kappas.mean(0)) <= 0)),
            "min_return_step": float(np.diff(returns, axis=1).min()),
            "max_policy_gap": gaps, "kappa": kappas.tolist(), "return": returns.tolist(),
        }
    return out


def run(opts: IncoherenceOptions) -> Path:
    start = time.perf_counter()
    correlation = correlation_study(opts)
    iterations = iteration_study(opts)
    primary = correlation["by_reading"]["misalignment_expected_reward"]
    results = {
        "correlation_by_temperature": primary,
        "kappa_by_iteration": {k: iterations[k]["kappa_mean"] for k in ("deterministic", "stochastic")},
        "kappa_temperature": opts.kappa_temperature,
        "return_by_iteration": {k: iterations[k]["return_mean"] for k in ("deterministic", "stochastic")},
        "published_correlation_by_temperature": dict(zip(map(str, TEMPERATURES), PUBLISHED_CORRELATION)),
        "correlation_by_misalignment_reading": correlation["by_reading"],
        "iterations": iterations,
        "instances": correlation["instances"],
        "options": {k: str(v) for k, v in dataclasses.asdict(opts).items()},
        "num_instances": len(correlation["instances"]),
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    results["seconds"] = time.perf_counter() - start
    (opts.out / "table.md").write_text(markdown_table(results))
    plot(results, opts.out)
    (opts.out / "results.json").write_text(json.dumps(finite_or_none(results), indent=1))
    return opts.out


def markdown_table(results: dict) -> str:
    """The measured figures next to the published ones, with the readings that are ours."""
    readings = results["correlation_by_misalignment_reading"]
    lines = [
        f"# Incoherence reproduction ({results['num_instances']} random deterministic trees)", "",
        "Pearson correlation across instances of misalignment with kappa_delta(G(uniform)). The temperature",
        "grid is the paper code's; the definition of misalignment is our reading: (a) 1 - greedy-action",
        "agreement of the uniform policy's additive expected-reward Q with Q* (the paper code's), (b) the same",
        "with success-probability soft Q, (c) regret J* - J(G(uniform)) of the success probability.", "",
        "| temperature | (a) greedy, expected reward | (b) greedy, success prob. | (c) regret | published |",
        "|---|---|---|---|---|",
    ]
    fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"
    for d, published in results["published_correlation_by_temperature"].items():
        cells = [fmt(readings[name][d]) for name in readings]
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {published:+.3f} |")
    it = results["iterations"]
    lines += ["", f"kappa_1 and J = P(success) along G^k(uniform) on {results['options']['iteration_size']} ({len(it['deterministic']['kappa'])} trees per dynamics, mean ± std):", "",
              "| k | kappa, deterministic | kappa, stochastic | kappa, det. 0/1 rewards | J, deterministic | J, stochastic | J, det. 0/1 rewards |",
              "|---|---|---|---|---|---|---|"]
    names = [name for name, _ in DYNAMICS]
    for k in range(len(it["deterministic"]["kappa_mean"])):
        cell = lambda name, key: f"{it[name][key + '_mean'][k]:.4f} ± {it[name][key + '_std'][k]:.4f}"
        lines.append(f"| {k} | " + " | ".join(cell(n, "kappa") for n in names) + " | "
                     + " | ".join(cell(n, "return") for n in names) + " |")
    lines += ["", "| claim | deterministic | stochastic | det. 0/1 rewards | published |", "|---|---|---|---|---|"]
    row = lambda label, f, pub: lines.append(f"| {label} | " + " | ".join(f(it[n]) for n in names) + f" | {pub} |")
    row("trees with kappa decreasing at every step", lambda r: f"{r['kappa_monotone_decreasing_fraction']:.0%}",
        "deterministic: decreasing; stochastic: not")
    row("... from k = 1 on", lambda r: f"{r['kappa_monotone_decreasing_fraction_from_k1']:.0%}", "")
    row("mean kappa decreasing at every step", lambda r: str(r["kappa_mean_monotone_decreasing"]), "")
    row("smallest J(G^{k+1}) - J(G^k)", lambda r: f"{r['min_return_step']:.2e}", ">= 0 (Prop. 5.3)")
    row("max gap folds vs G^2", lambda r: f"{r['max_policy_gap']['fold_vs_G']:.1e}", "0 always")
    row("max gap annealing alpha=2 vs G^2", lambda r: f"{r['max_policy_gap']['anneal_k_vs_G_k']:.1e}", "0 iff deterministic")
    row("max gap 2 cumulative folds vs G^4", lambda r: f"{r['max_policy_gap']['cumfold_vs_G_2k']:.1e}", "0 iff deterministic")
    lines += ["", f"Wall time {results['seconds']:.1f} s."]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = results["iterations"]
    for key, label, name in (("kappa", r"incoherence $\kappa_1(G^k(\mathrm{uniform}))$", "kappa_by_iteration"),
                             ("return", r"$J = P(\mathrm{success})$", "return_by_iteration")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for dynamics, color in (("deterministic", "C0"), ("stochastic", "C3"), ("deterministic_01_rewards", "C2")):
            mean, std = np.array(it[dynamics][key + "_mean"]), np.array(it[dynamics][key + "_std"])
            ks = np.arange(len(mean))
            shown = np.isfinite(mean)  # kappa of the uniform prior is infinite under 0/1 rewards
            ks, mean, std = ks[shown], mean[shown], std[shown]
            ax.plot(ks, mean, marker="o", color=color, label=dynamics.replace("_01_rewards", ", 0/1 rewards") + " dynamics")
            ax.fill_between(ks, mean - std, mean + std, color=color, alpha=0.15)
        ax.set_xlabel("G-iteration k")
        ax.set_ylabel(label)
        ax.set_title(f"{results['options']['iteration_size']}, {len(it['deterministic'][key])} trees per dynamics (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    temps = [float(t) for t in results["published_correlation_by_temperature"]]
    ax.plot(temps, list(results["published_correlation_by_temperature"].values()), "k--o", label="published")
    for name, reading in results["correlation_by_misalignment_reading"].items():
        values = [np.nan if v is None else v for v in reading.values()]
        ax.plot(temps, values, marker="s", label=name.replace("misalignment_", "greedy, ").replace("_", " "))
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(r"temperature $\delta$")
    ax.set_ylabel("Pearson r (misalignment, incoherence)")
    ax.set_title(f"{results['num_instances']} random trees")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "correlation_by_temperature.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    opts = tyro.cli(IncoherenceOptions, args=argv, description=__doc__)
    from experiments.common import run_or_explain

    return run_or_explain(lambda: run(opts))


if __name__ == "__main__":
    sys.exit(main())
