"""Run-directory outputs: metrics.csv, TensorBoard events, learning-curve PNG, config guard."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mbdpo_jax.train.logging import MetricsLogger, format_number, plot_learning_curve
from mbdpo_jax.train.run_dir import RunDirError, checkpoints_dir, prepare_run_dir

ROWS = [
    {"env_steps": 100, "eval_return": 1.5, "critic_loss": 0.25, "actor_loss": -1.0},
    {"env_steps": 200, "critic_loss": 0.2, "actor_loss": np.float32(0.1)},
    {"env_steps": 300, "eval_return": 7.25, "critic_loss": 0.1, "actor_loss": None},
]


def test_metrics_csv_rows_and_deterministic_numbers(tmp_path):
    """Columns come from the first row, missing/None cells are empty, floats are repr(float),
    and a reopened logger keeps the header and appends."""
    with MetricsLogger(tmp_path) as logger:
        logger.write(ROWS[0])
        logger.write(ROWS[1])
    with MetricsLogger(tmp_path) as logger:
        logger.write(ROWS[2])
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "env_steps,eval_return,critic_loss,actor_loss",
        "100,1.5,0.25,-1.0",
        "200,,0.2,0.10000000149011612",
        "300,7.25,0.1,",
    ]


def test_metrics_rejects_new_key_and_missing_step(tmp_path):
    """A key outside the fixed columns, a row without env_steps, or a non-scalar value
    raise a clear error and write nothing."""
    with MetricsLogger(tmp_path) as logger:
        logger.write(ROWS[0])
        with pytest.raises(ValueError, match=r"keys \['lr'\] not among the columns"):
            logger.write({"env_steps": 200, "lr": 0.1})
        with pytest.raises(ValueError, match="needs 'env_steps'"):
            logger.write({"eval_return": 1.0})
        with pytest.raises(TypeError, match="'eval_return' must be a real scalar"):
            logger.write({"env_steps": 300, "eval_return": np.ones(2)})
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2


def test_truncate_after_matches_uninterrupted_run(tmp_path):
    """Resuming from a checkpoint at 200 env steps: truncate_after drops later rows and
    re-logging them gives a CSV byte-identical to an uninterrupted run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with MetricsLogger(straight) as logger:
        for row in ROWS:
            logger.write(row)
    with MetricsLogger(resumed) as logger:
        for row in ROWS:
            logger.write(row)
    with MetricsLogger(resumed) as logger:
        logger.truncate_after(200)
        assert len((resumed / "metrics.csv").read_text().splitlines()) == 3
        logger.write(ROWS[2])
    assert (resumed / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes()


def test_torn_last_line_is_dropped_on_reopen(tmp_path):
    """A row cut short by a kill mid-write is removed when the logger is reopened."""
    with MetricsLogger(tmp_path) as logger:
        logger.write(ROWS[0])
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("200,,0.")
    with MetricsLogger(tmp_path) as logger:
        logger.write(ROWS[1])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[1:] == ["100,1.5,0.25,-1.0", "200,,0.2,0.10000000149011612"]


def test_format_number_is_deterministic():
    """ints stay ints, floats of any width print as repr(float), bools as 0/1."""
    assert [format_number(v) for v in (3, np.int64(3), 0.1, np.float64(0.1), True, None, float("nan"))] == [
        "3", "3", "0.1", "0.1", "1", "", "nan",
    ]


def read_events(event_file: Path) -> list:
    """Parses a TFRecord event file: records of u64 length, u32 crc, payload, u32 crc."""
    from tensorboardX.proto.event_pb2 import Event

    data, pos, events = event_file.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        events.append(Event.FromString(data[pos + 12 : pos + 12 + length]))
        pos += 12 + length + 4
    return events


def read_scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the scalar summaries in an event file."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(event_file):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def read_purge_steps(event_file: Path) -> list[int]:
    """Steps of SessionLog.START events, which make TensorBoard purge later steps of older files."""
    from tensorboardX.proto.event_pb2 import SessionLog

    events = read_events(event_file)
    return [e.step for e in events if e.HasField("session_log") and e.session_log.status == SessionLog.START]


def test_tensorboard_events_written(tmp_path):
    """Scalars go to an event file under run_dir/tensorboard at global step env_steps."""
    with MetricsLogger(tmp_path) as logger:
        for row in ROWS:
            logger.write(row)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = read_scalars(events[0])
    assert scalars["eval_return"] == [(100, 1.5), (300, 7.25)]
    assert scalars["critic_loss"] == [(100, 0.25), (200, pytest.approx(0.2)), (300, pytest.approx(0.1))]
    assert "env_steps" not in scalars


def test_tensorboard_resume_keeps_old_events_and_purges_after_checkpoint(tmp_path):
    """After truncate_after(100) a reopened logger writes a new event file, leaves the old
    one intact, and marks step 101 so TensorBoard drops the old events after the checkpoint."""
    with MetricsLogger(tmp_path) as logger:
        logger.write({"env_steps": 100, "x": 1.0})
        logger.write({"env_steps": 200, "x": 2.0})
    with MetricsLogger(tmp_path) as logger:
        logger.truncate_after(100)
        logger.write({"env_steps": 200, "x": 3.0})
    files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    assert [read_scalars(f)["x"] for f in files] == [[(100, 1.0), (200, 2.0)], [(200, 3.0)]]
    assert read_purge_steps(files[1]) == [101]


def test_plot_learning_curve_writes_png(tmp_path):
    """A PNG with the return curve (empty cells skipped) and a loss panel is written."""
    with MetricsLogger(tmp_path) as logger:
        for row in ROWS:
            logger.write(row)
    png = tmp_path / "learning_curve.png"
    plot_learning_curve(tmp_path / "metrics.csv", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_dir_writes_config_and_rejects_a_different_one(tmp_path):
    """The first call writes config.json; the same config (up to ignored keys) is accepted;
    a different one raises a one-line RunDirError naming key, old and new value."""
    run = tmp_path / "run"
    config = {"env": "dmc/cheetah-run", "seed": 0, "agent": {"lr": 0.001}, "total_steps": 1000}
    assert prepare_run_dir(run, config) == run
    assert json.loads((run / "config.json").read_text()) == config
    assert checkpoints_dir(run) == run / "checkpoints"
    prepare_run_dir(run, {**config, "total_steps": 5000}, resume_keys_ignored=("total_steps",))
    expected = r"agent\.lr: 0\.001 -> 0\.0003; seed: 0 -> 1\); pick another --run-dir"
    with pytest.raises(RunDirError, match=expected) as info:
        prepare_run_dir(run, {**config, "seed": 1, "agent": {"lr": 3e-4}})
    assert "\n" not in str(info.value)
    assert json.loads((run / "config.json").read_text()) == config


def test_run_dir_from_before_an_option_existed_resumes_when_the_option_keeps_its_default(tmp_path):
    """An option added after a run started is absent from its config.json: resuming is accepted
    when the option is at its default, and refused (naming the option) when it is not."""
    run = tmp_path / "run"
    prepare_run_dir(run, {"env": "toy/pendulum", "seed": 0})
    defaults = {"env": "dmc/cartpole-swingup", "seed": 0, "new_option": False}
    assert prepare_run_dir(run, {"env": "toy/pendulum", "seed": 0, "new_option": False}, defaults=defaults) == run
    with pytest.raises(RunDirError, match=r"new_option: False -> True"):
        prepare_run_dir(run, {"env": "toy/pendulum", "seed": 0, "new_option": True}, defaults=defaults)
    with pytest.raises(RunDirError, match=r"new_option"):
        prepare_run_dir(run, {"env": "toy/pendulum", "seed": 0, "new_option": False})
