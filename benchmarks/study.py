"""Study: MBDPO with and without its energy F, and with and without distillation into the prior,
against TD-MPC2 (Hansen et al., 2024); same env steps, seeds and budget.

    python -m benchmarks.study --tasks dmc/cartpole-swingup:6000 --seeds 0 1 2 \
        --runs-dir runs/study --out benchmarks/results/2026-12-02-cpu-study-swingup

Each (task, variant, seed) is one ordinary `python -m experiments.online ALGO` run in
`<runs-dir>/<task>/<variant>/seed<k>`, launched one after the other (a finished run is not
repeated; an interrupted one resumes from its checkpoint). All variants share the CPU settings of
`--preset laptop`, written out in each command (tiny model, 4 envs, batch 128, one update per env
step, action repeat 4, 64 candidates / 8 elites / 4 prior trajectories; the study of 2026-12-01 ran
the earlier laptop settings: half an update per env step, action repeat 2, 2000 seed steps). The variants (flags written out even
where they are today's defaults, so each run's command says what it ran):

- `mbdpo`: reverse diffusion (`--diffusion-steps`) with eta * F in the objective, no distillation
  (`--use-energy --distill-coef 0`);
- `mbdpo-no-F`: the same without F (`--no-use-energy --distill-coef 0`);
- `mbdpo-distill`: `mbdpo` with the planner's actions distilled into the prior (`--distill-coef 0.1`);
- `tdmpc2`: MPPI (`--iterations`);
- `pwm`, `shac`: the first-order learners with the laptop preset's settings (`LEARNER_SETTINGS`);
  SHAC's chunks are whole windows of 16 envs x 8 steps, so its evaluation period rounds up to them
  (6000 steps in 3 evaluations run as 3 x 2048 = 6144);
- `ppo`, `da-mdp-ppo`: the on-policy learners with the laptop preset's settings, whose chunks are whole
  rollouts (32 x 64 and 16 x 32 env steps), e.g. the DA-MDP study of 2026-12-03:

    python -m benchmarks.study --tasks dmc/cartpole-balance:204800 dmc/cartpole-swingup:204800 --seeds 0 1 2 \
        --variants ppo da-mdp-ppo --evals-per-run 10 --runs-dir runs/study-damdp \
        --out benchmarks/results/2026-12-03-cpu-study-da-mdp

`--previous OLD.json` fills the (task, variant) cells this study does not run from an earlier study's
curves (same settings), and the table names the file; e.g. the 4-way study of 2026-12-02:

    python -m benchmarks.study --tasks dmc/cartpole-swingup:6000 --seeds 0 1 2 --variants pwm shac ...
    python -m benchmarks.study --tasks dmc/cartpole-balance:6000 --seeds 0 1 2 --variants pwm shac tdmpc2 mbdpo ...
    python -m benchmarks.study --tasks dmc/cartpole-swingup:6000 dmc/cartpole-balance:6000 --seeds 0 1 2 \
        --variants pwm shac tdmpc2 mbdpo --report-only --previous benchmarks/results/2026-12-02-cpu-study-swingup.json ...

An existing run directory whose config.json (format 2: {"format", "algo", "agent", "loop"}) does
not hold its variant's algorithm and settings, e.g. one written by an older mbdpo_jax, stops the
study with a message naming it, rather than being reported as that variant.

Writes `<out>.json` (every eval return of every run, wall time and env steps/s), `<out>.md` (a
table) and `<out>.png` (eval return against env steps, mean over seeds with min-max band).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tyro

PRESET = "laptop"
"""`experiments.online --preset` of every run, named so the runs do not depend on the device ('auto')."""
SHARED_SETTINGS = {"model_size": "tiny", "num_envs": 4, "updates_per_step": 1.0, "batch_size": 128,
                   "num_samples": 64, "num_elites": 8, "num_pi_trajs": 4, "seed_steps": 1000, "eval_episodes": 4,
                   "action_repeat": 4}
"""Settings of every planning run (mbdpo, tdmpc2 variants), by flag name (underscored). They are the laptop
preset's today and are written out so that a later change of that preset does not change the study."""
LEARNER_SETTINGS = {
    # the laptop preset's PWM settings; planner settings do not exist for it
    "pwm": {"model_size": "tiny", "num_envs": 4, "updates_per_step": 0.25, "batch_size": 64, "actor_hidden": (128, 64),
            "critic_hidden": (128, 128), "seed_steps": 1000, "eval_episodes": 4, "action_repeat": 4},
    # the laptop preset's SHAC settings: 16 envs x 8-step windows (eval-every must be a multiple of 128)
    "shac": {"num_envs": 16, "window": 8, "init_log_std": -2.0, "on_nonfinite": "skip", "eval_episodes": 4,
             "action_repeat": 4},
    # the laptop preset's on-policy settings: rollouts of num_envs x num_steps (eval-every rounds up to them)
    "ppo": {"num_envs": 32, "num_steps": 64, "epochs": 8, "minibatches": 8, "policy_hidden": (64, 64),
            "value_hidden": (64, 64), "reward_scale": 1.0, "eval_episodes": 4, "action_repeat": 4},
    "da-mdp-ppo": {"num_envs": 16, "num_steps": 32, "epochs": 8, "minibatches": 8, "diffusion_steps": 4,
                   "score_hidden": (64, 64), "value_hidden": (64, 64), "num_bins": 101, "v_min": -100.0,
                   "v_max": 400.0, "learning_rate": 1e-3, "gamma": 0.9975, "gae_lambda": 0.99, "eval_episodes": 4,
                   "action_repeat": 4},
}
"""The first-order and on-policy learners' settings, by variant; every run sees the same env steps, seeds
and action repeat."""


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    tasks: tuple[str, ...] = ("dmc/cartpole-swingup:6000", "dmc/cartpole-balance:6000")
    """Env names with their env-step budget, as NAME:STEPS."""
    seeds: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = ("mbdpo", "mbdpo-no-F", "mbdpo-distill", "tdmpc2")
    diffusion_steps: int = 8
    """Reverse-diffusion steps of the mbdpo variants."""
    iterations: int = 4
    """MPPI iterations of the tdmpc2 variant."""
    distill_coef: float = 0.1
    """Distillation weight of the mbdpo-distill variant (the others use 0)."""
    evals_per_run: int = 10
    """Evaluations per run (eval every steps / evals_per_run env steps)."""
    runs_dir: str = "runs/study"
    out: str = "benchmarks/results/study"
    """Path prefix of the .json, .md and .png results."""
    report_only: bool = False
    """Only aggregate runs that already exist."""
    previous: tuple[str, ...] = ()
    """Study JSON files (an earlier `--out`.json) whose curves fill the (task, variant) cells this study
    does not run; the table and the JSON say which file each cell comes from."""


VARIANTS = {
    # name: study config -> (algorithm, its settings by flag name)
    "mbdpo": lambda c: ("mbdpo", {"diffusion_steps": c.diffusion_steps, "use_energy": True, "distill_coef": 0.0}),
    "mbdpo-no-F": lambda c: ("mbdpo", {"diffusion_steps": c.diffusion_steps, "use_energy": False,
                                       "distill_coef": 0.0}),
    "mbdpo-distill": lambda c: ("mbdpo", {"diffusion_steps": c.diffusion_steps, "use_energy": True,
                                          "distill_coef": c.distill_coef}),
    "tdmpc2": lambda c: ("tdmpc2", {"iterations": c.iterations}),
    "pwm": lambda c: ("pwm", {}),
    "shac": lambda c: ("shac", {}),
    "ppo": lambda c: ("ppo", {}),
    "da-mdp-ppo": lambda c: ("da-mdp-ppo", {}),
}


def flags(settings: dict) -> list[str]:
    """Command-line flags of settings by flag name: `--name value`, `--name`/`--no-name` for booleans,
    `--name v1 v2` for tuples."""
    out = []
    for name, value in settings.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, tuple):
            out += [f"--{flag}", *map(str, value)]
        else:
            out += [f"--{flag}", str(value)]
    return out


SHARED_OPTIONS = flags(SHARED_SETTINGS)


def parse_task(spec: str) -> tuple[str, int]:
    name, sep, steps = spec.rpartition(":")
    if not sep or not steps.isdigit() or int(steps) <= 0:
        raise ValueError(f"task {spec!r} must be NAME:STEPS with STEPS a positive integer, e.g. dmc/cartpole-swingup:30000")
    return name, int(steps)


def run_dir(cfg: StudyConfig, task: str, variant: str, seed: int) -> Path:
    return Path(cfg.runs_dir) / task.replace("/", "_") / variant / f"seed{seed}"


def env_steps_per_chunk(variant: str) -> int:
    """The env steps a variant's training chunk must be a multiple of: SHAC's whole windows of
    num_envs x window agent steps, an on-policy learner's rollouts of num_envs x num_steps, 1 for the
    others."""
    settings = LEARNER_SETTINGS.get(variant, {})
    per_env = settings.get("window", settings.get("num_steps"))
    return settings["num_envs"] * per_env if per_env else 1


def variant_budget(cfg: StudyConfig, steps: int, variant: str) -> tuple[int, int]:
    """(env steps, eval every) of a variant's run: steps / evals_per_run per evaluation, rounded up to
    whole chunks where the variant needs them (SHAC: 6000 steps in 3 evaluations run 3 x 2048 = 6144)."""
    unit = env_steps_per_chunk(variant)
    every = -(-(steps // cfg.evals_per_run) // unit) * unit
    return every * cfg.evals_per_run if unit > 1 else steps, every


def run_settings(cfg: StudyConfig, task: str, steps: int, variant: str, seed: int) -> tuple[str, dict]:
    """(algorithm, every setting the run's command sets, by flag name)."""
    algo, own = VARIANTS[variant](cfg)
    steps, every = variant_budget(cfg, steps, variant)
    return algo, {"env": task, "steps": steps, "eval_every": every, "seed": seed,
                  "run_dir": str(run_dir(cfg, task, variant, seed)), "progress": False,
                  **LEARNER_SETTINGS.get(variant, SHARED_SETTINGS), **own}


def command(cfg: StudyConfig, task: str, steps: int, variant: str, seed: int) -> list[str]:
    """`python -m experiments.online ALGO --flags` of one run."""
    algo, settings = run_settings(cfg, task, steps, variant, seed)
    return [sys.executable, "-m", "experiments.online", algo, "--preset", PRESET, *flags(settings)]


def config_mismatch(path: Path, algo: str, settings: dict) -> str | None:
    """Why the run in `path` is not (algo, settings), or None when it is or has no config.json yet.

    Reads config.json as `mbdpo_jax.train.config.to_dict` writes it and compares the settings by
    flag name, wherever they are nested; `run_dir` and `progress` may differ (moved or rerun runs).
    """
    from mbdpo_jax.train.config import OnlineConfig, flat_fields, from_dict

    config_path = path / "config.json"
    if not config_path.exists():
        return None
    try:
        online = from_dict(OnlineConfig, json.loads(config_path.read_text()))
    except (ValueError, TypeError, KeyError) as err:
        return f"its config.json does not load: {err}"
    if online.algo != algo:
        return f"it ran {online.algo}, not {algo}"
    paths = flat_fields(online)
    diffs = []
    for name, want in settings.items():
        if name in ("run_dir", "progress"):
            continue
        if name not in paths:
            diffs.append(f"{name} is not a setting of it")
            continue
        have = online
        for part in paths[name]:
            have = getattr(have, part)
        if have != want:
            diffs.append(f"{name}={have!r}, not {want!r}")
    return "; ".join(diffs) or None


def finished(path: Path, steps: int) -> bool:
    """Whether the run in `path` has logged its evaluation at `steps` env steps."""
    if not (path / "metrics.csv").exists():
        return False
    curve = read_curve(path)
    return bool(curve["env_steps"]) and curve["env_steps"][-1] >= steps


def read_curve(path: Path) -> dict:
    with open(path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval_return")]
    return {"env_steps": [int(float(r["env_steps"])) for r in rows],
            "eval_return": [float(r["eval_return"]) for r in rows],
            "wall_time": float(rows[-1]["wall_time"]) if rows else float("nan")}


def merge_previous(curves: dict, previous: tuple[str, ...]) -> dict:
    """Fill the empty (task, variant) cells of `curves` in place from earlier study JSON files (the
    first file holding the cell wins); returns {(task, variant): file} of the cells filled."""
    sources = {}
    for path in previous:
        earlier = json.loads(Path(path).read_text())["curves"]
        for task, by_variant in curves.items():
            for variant, runs in by_variant.items():
                if not runs and earlier.get(task, {}).get(variant):
                    by_variant[variant] = earlier[task][variant]
                    sources[(task, variant)] = Path(path).name
    return sources


def summarise(cfg: StudyConfig, curves: dict, sources: dict | None = None) -> str:
    sources = sources or {}
    lines = ["| task | variant | seeds | env steps | final eval return | best eval return | mean of last 3 evals | "
             "wall time (s) | runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, by_variant in curves.items():
        for variant, runs in by_variant.items():
            if not runs:
                continue
            steps = runs[0]["env_steps"][-1]
            final = np.array([r["eval_return"][-1] for r in runs])
            best = np.array([max(r["eval_return"]) for r in runs])
            last3 = np.array([np.mean(r["eval_return"][-3:]) for r in runs])
            wall = np.array([r["wall_time"] for r in runs])
            fmt = lambda a: f"{a.mean():.0f}" + (f" ± {a.std():.0f}" if len(a) > 1 else "")
            lines.append(f"| {task} | {variant} | {len(runs)} | {steps} | {fmt(final)} | {fmt(best)} | {fmt(last3)} | "
                         f"{wall.mean():.0f} | {sources.get((task, variant), 'this study')} |")
    return "\n".join(lines)


def plot(curves: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(curves), 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(curves), squeeze=False)[0]
    for ax, (task, by_variant) in zip(axes, curves.items()):
        for variant, runs in by_variant.items():
            if not runs:
                continue
            n = min(len(r["eval_return"]) for r in runs)
            x = runs[0]["env_steps"][:n]
            y = np.array([r["eval_return"][:n] for r in runs])
            ax.plot(x, y.mean(0), label=f"{variant} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            if len(runs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(StudyConfig, args=argv, prog="python -m benchmarks.study", description=__doc__)
    unknown = set(cfg.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; allowed: {', '.join(VARIANTS)}")
    tasks = [parse_task(t) for t in cfg.tasks]
    commands = {}
    for task, steps in tasks:
        for seed in cfg.seeds:
            for variant in cfg.variants:
                cmd = command(cfg, task, steps, variant, seed)
                commands[f"{task} {variant} seed{seed}"] = " ".join(cmd[1:])
                path = run_dir(cfg, task, variant, seed)
                mismatch = config_mismatch(path, *run_settings(cfg, task, steps, variant, seed))
                if mismatch:
                    raise SystemExit(f"run directory {path} is not the {variant} variant ({mismatch}); "
                                     "pick another --runs-dir")
                if cfg.report_only or finished(path, variant_budget(cfg, steps, variant)[0]):
                    continue
                start = time.perf_counter()
                print(f"[study] {task} {variant} seed {seed}", flush=True)
                subprocess.run(cmd, check=True)
                print(f"[study] done in {time.perf_counter() - start:.0f} s", flush=True)
    curves = {task: {variant: [read_curve(run_dir(cfg, task, variant, seed)) for seed in cfg.seeds
                               if (run_dir(cfg, task, variant, seed) / "metrics.csv").exists()]
                     for variant in cfg.variants} for task, _ in tasks}
    sources = merge_previous(curves, cfg.previous)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = summarise(cfg, curves, sources)
    out.with_suffix(".json").write_text(json.dumps(
        {"benchmark": "study", "device": _device(), "config": dataclasses.asdict(cfg),
         "preset": PRESET, "shared_options": SHARED_OPTIONS,
         "first_order_options": {v: flags(o) for v, o in LEARNER_SETTINGS.items()}, "commands": commands, "curves": curves,
         "previous_sources": {f"{t} {v}": f for (t, v), f in sources.items()}}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    plot(curves, out.with_suffix(".png"))
    print(table)
    return 0


def _device() -> dict:
    from benchmarks.throughput import device_info
    return device_info()


if __name__ == "__main__":
    sys.exit(main())
