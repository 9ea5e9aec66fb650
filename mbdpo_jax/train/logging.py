"""Metrics of a run: metrics.csv, TensorBoard event files and a learning-curve PNG.

`MetricsLogger` appends one CSV row per log step and mirrors the scalars to
TensorBoard with `env_steps` as the global step. Each CSV row is flushed and fsynced,
so a killed run loses at most the row being written (a torn last line is dropped when
the file is reopened). On resume, `truncate_after(checkpoint_env_steps)` drops rows
logged after the checkpoint, so the resumed run's CSV matches an uninterrupted run
row for row; TensorBoard gets a purge step so its curves are cut at the same place.

Numbers are written deterministically: ints as `str(int)`, floats as `repr(float)`
(shortest text that reads back to the same double), None as an empty cell.
"""

from __future__ import annotations

import csv
import io
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mbdpo_jax.train.run_dir import atomic_write, fsync_dir

METRICS_NAME = "metrics.csv"
TENSORBOARD_NAME = "tensorboard"
STEP_KEY = "env_steps"

Number = int | float


class MetricsLogger:
    """Appends metric rows to `<run_dir>/metrics.csv` and `<run_dir>/tensorboard/`.

    Columns are fixed by the existing file's header or else by the first row written;
    a row with a key outside them raises ValueError. Every row needs `env_steps`.
    Usable as a context manager.
    """

    def __init__(self, run_dir: str | os.PathLike[str], step_key: str = STEP_KEY) -> None:
        """Opens (and repairs a torn last line of) the run's metrics.csv, if any.

        step_key: the column used as TensorBoard step and for `truncate_after` (env_steps by default,
        updates for offline pretraining).
        """
        self.step_key = step_key
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / METRICS_NAME
        self.columns: list[str] | None = _repair_and_read_header(self.csv_path)
        self._file: io.TextIOWrapper | None = None
        self._writer: Any = None  # tensorboardX.SummaryWriter, created on first write
        self._purge_step: int | None = None

    def write(self, row: Mapping[str, Number | None]) -> None:
        """Appends `row` (scalar values; None or missing -> empty cell), then fsyncs."""
        if self.step_key not in row or row[self.step_key] is None:
            raise ValueError(f"metrics row needs '{self.step_key}' (the TensorBoard step); got keys {sorted(row)}")
        cells = {key: format_number(value, key) for key, value in row.items()}
        if self.columns is None:
            self.columns = list(row)
            self._append_line(_csv_line(self.columns))
        unknown = [key for key in row if key not in self.columns]
        if unknown:
            raise ValueError(
                f"metrics row has keys {unknown} not among the columns of {self.csv_path}: {self.columns}"
            )
        self._append_line(_csv_line(cells.get(key, "") for key in self.columns))
        self._write_tensorboard(row)

    def truncate_after(self, env_steps: int) -> None:
        """Keeps only rows with env_steps <= `env_steps` (atomic rewrite of the CSV).

        Also makes TensorBoard discard events after `env_steps` from earlier files.
        """
        self._close_files()
        self._purge_step = int(env_steps) + 1
        if not self.csv_path.exists():
            return
        lines = self.csv_path.read_text().splitlines(keepends=True)
        if not lines:
            return
        header = next(csv.reader([lines[0]]))
        if self.step_key not in header:
            raise ValueError(f"{self.csv_path} has no '{self.step_key}' column (columns: {header})")
        step_index = header.index(self.step_key)
        kept = [lines[0]] + [line for line in lines[1:] if _row_step(line, step_index) <= env_steps]
        atomic_write(self.csv_path, "".join(kept).encode())

    def close(self) -> None:
        """Flushes and closes the CSV and TensorBoard files."""
        self._close_files()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append_line(self, line: str) -> None:
        """Appends one line to the CSV and makes it durable."""
        if self._file is None:
            new = not self.csv_path.exists()
            self._file = open(self.csv_path, "a", newline="")
            if new:
                fsync_dir(self.run_dir)
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def _write_tensorboard(self, row: Mapping[str, Number | None]) -> None:
        """Writes every non-empty scalar except env_steps at global step env_steps."""
        if self._writer is None:
            from tensorboardX import SummaryWriter  # lazy: ~0.3 s import, not needed for --help

            # A unique suffix: tensorboardX names files by second and host, and a writer
            # reopened within the same second would otherwise overwrite the earlier file.
            self._writer = SummaryWriter(
                logdir=str(self.run_dir / TENSORBOARD_NAME),
                purge_step=self._purge_step,
                filename_suffix=f".{uuid.uuid4().hex[:8]}",
            )
        step = int(row[self.step_key])
        for key, value in row.items():
            if key != self.step_key and value is not None:
                self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def _close_files(self) -> None:
        """Closes open handles; the next write reopens them."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def format_number(value: Any, key: str = "value") -> str:
    """Deterministic CSV text of a scalar: str(int), repr(float), '' for None."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "biuf":
        raise TypeError(f"metric {key!r} must be a real scalar, got {type(value).__name__} {value!r}"[:200])
    if array.dtype.kind in "biu":
        return str(int(array))
    return repr(float(array))


def plot_learning_curve(
    csv_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    x: str = "env_steps",
    y: str = "eval_return",
) -> None:
    """Plots `y` against `x` from a metrics CSV into a PNG, written atomically.

    Rows with an empty `y` are skipped. If columns ending in `_loss` exist they are
    drawn in a second panel. Uses matplotlib's Agg canvas directly (no pyplot, so the
    global backend is left alone).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    losses = [c for c in columns if c.endswith("_loss")]
    figure = Figure(figsize=(7, 6.5 if losses else 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 if losses else 1, 1, sharex=True, squeeze=False)[:, 0]
    _plot_columns(axes[0], rows, x, [y], ylabel=y)
    if losses:
        _plot_columns(axes[1], rows, x, losses, ylabel="loss")
    axes[-1].set_xlabel(x)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write(png_path, buffer.getvalue())


def _plot_columns(axis: Any, rows: list[dict[str, str]], x: str, ys: list[str], ylabel: str) -> None:
    """Draws each column of `ys` against `x`, skipping rows where either is empty."""
    for y in ys:
        points = [(float(r[x]), float(r[y])) for r in rows if r.get(x) and r.get(y)]
        xs, values = zip(*points) if points else ((), ())
        axis.plot(xs, values, marker="." if len(points) < 50 else None, label=y)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if len(ys) > 1:
        axis.legend(fontsize="small")


def _csv_line(cells: Iterable[str]) -> str:
    """One CSV line (quoted only where needed) ending in a newline."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(list(cells))
    return out.getvalue()


def _row_step(line: str, step_index: int) -> float:
    """env_steps value of one CSV data line (inf if unparsable, so it is dropped)."""
    cells = next(csv.reader([line]), [])
    try:
        return float(cells[step_index])
    except (IndexError, ValueError):
        return math.inf


def _repair_and_read_header(csv_path: Path) -> list[str] | None:
    """Returns the CSV header; first drops a torn last line left by a killed write."""
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return None
    text = csv_path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        atomic_write(csv_path, text.encode())
    if not text:
        return None
    return next(csv.reader([text.splitlines()[0]]))
