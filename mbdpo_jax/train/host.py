"""The host loop, written once: run directory, resume, evaluation, metrics row, finite check,
checkpoint, plot and progress, around one jitted training chunk.

Every regime (online off-policy, offline pretraining, fine-tuning, and the regime loops to come)
describes itself as a `Program` and calls `run_program`. Between two host visits everything runs
in the compiled chunk; the host evaluates, writes one metrics row, and checkpoints the whole
carry. A rerun with the same run directory restores the newest good checkpoint, drops metrics rows
written after it, and continues; on the CPU the resumed metrics.csv equals an uninterrupted run's
except for wall-clock columns.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import jax

from mbdpo_jax.train import checkpoint, progress
from mbdpo_jax.train.logging import MetricsLogger, plot_learning_curve
from mbdpo_jax.train.run_dir import checkpoints_dir

WALL_CLOCK_COLUMNS = ("wall_time", "env_steps_per_s", "updates_per_s")


class NonFiniteLossError(FloatingPointError):
    """A training metric became NaN or infinite; the run stops and keeps the last good checkpoint."""


@dataclasses.dataclass
class Program:
    """A training regime as the host loop sees it.

    init: the fresh carry (the whole training state; a checkpoint is this pytree).
    chunk: carry -> (carry, metrics), jitted by the caller (one compiled program per chunk).
    evaluate: (carry, count) -> {name: float} evaluation results of the current carry.
    count: the progress counter of a carry (env steps or updates).
    metric_names: () -> the names of the chunk's metrics (called only when a run starts, to name the
    CSV columns; tracing the chunk for them is not needed on resume).
    """

    init: Callable[[], Any]
    chunk: Callable[[Any], tuple[Any, dict]]
    evaluate: Callable[[Any, int], dict[str, float]]
    count: Callable[[Any], int]
    total: int
    metric_names: Callable[[], Iterable[str]]
    step_key: str = "env_steps"
    unit: str = "env step"
    label: str = ""


def check_finite(metrics: dict[str, float], step: int, unit: str = "env step") -> None:
    """Raise NonFiniteLossError naming the step and every non-finite metric."""
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"non-finite {', '.join(bad)} at {unit} {step} "
                                 f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); the last good checkpoint is kept")


def floats(tree: dict[str, Any]) -> dict[str, float]:
    """A dict of device scalars as Python floats."""
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def run_program(program: Program, run_dir: Path, progress: bool = True) -> Any:
    """Train (or resume) `program` in a prepared run directory; returns the final carry."""
    ckpt_dir = checkpoints_dir(run_dir)
    carry = program.init()
    logger = MetricsLogger(run_dir, step_key=program.step_key)
    restored = checkpoint.restore_latest_good(ckpt_dir, carry)
    if restored is None:
        # The first row fixes the CSV columns, so it names every metric (empty until measured).
        logger.write({program.step_key: 0, "wall_time": 0.0, **program.evaluate(carry, 0),
                      f"{program.step_key}_per_s": None, **{k: None for k in program.metric_names()}})
        checkpoint.save(ckpt_dir, 0, carry)
        wall_offset = 0.0
    else:
        step, carry = restored
        logger.truncate_after(step)
        wall_offset = _last_wall_time(run_dir)
    bar = _progress_bar(program, program.count(carry), progress)
    try:
        carry = _loop(program, carry, logger, ckpt_dir, bar, wall_offset)
    finally:
        bar.close()
        logger.close()
    plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png", x=program.step_key)
    return carry


def _loop(program: Program, carry: Any, logger: MetricsLogger, ckpt_dir: Path, bar: Any, wall_offset: float) -> Any:
    start = time.perf_counter()
    while program.count(carry) < program.total:
        t0, count0 = time.perf_counter(), program.count(carry)
        with progress.listening(lambda n: bar.update(max(0, n - bar.n))):
            carry, metrics = program.chunk(carry)
            metrics = floats(metrics)
        count = program.count(carry)
        check_finite(metrics, count, program.unit)
        evaluation = program.evaluate(carry, count)
        rate = (count - count0) / (time.perf_counter() - t0)
        logger.write({program.step_key: count, "wall_time": round(wall_offset + time.perf_counter() - start, 3),
                      **evaluation, f"{program.step_key}_per_s": round(rate, 2), **metrics})
        checkpoint.save(ckpt_dir, count, carry)
        bar.update(max(0, count - bar.n))
        bar.set_postfix(rate=f"{rate:.0f}/s", eval_return=f"{evaluation.get('eval_return', float('nan')):.1f}")
    return carry


def _progress_bar(program: Program, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=program.total, initial=initial, disable=not enabled, unit=program.unit.split()[-1],
                dynamic_ncols=True, desc=program.label)


def _last_wall_time(run_dir: Path) -> float:
    """Wall time of the last row of metrics.csv (after truncation to the checkpoint)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1].get("wall_time") or 0.0) if rows else 0.0
