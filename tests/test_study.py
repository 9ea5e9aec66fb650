"""The study script's bookkeeping: task specs, finished runs, and the table and plot it writes."""
import pytest

from benchmarks import study


def test_task_specs_need_a_positive_step_budget():
    """NAME:STEPS parses; a missing or non-positive budget fails naming the bad value."""
    assert study.parse_task("dmc/cartpole-swingup:30000") == ("dmc/cartpole-swingup", 30000)
    for bad in ["dmc/cartpole-swingup", "dmc/cartpole-swingup:0", "dmc/cartpole-swingup:ten"]:
        with pytest.raises(ValueError, match=bad):
            study.parse_task(bad)


def _write_metrics(path, rows):
    path.mkdir(parents=True)
    lines = ["env_steps,wall_time,eval_return"] + [f"{s},{w},{r}" for s, w, r in rows]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_a_run_counts_as_finished_once_it_logged_its_last_evaluation(tmp_path):
    """finished() is false without metrics and before the budget's evaluation, true at it."""
    assert not study.finished(tmp_path / "none", 100)
    _write_metrics(tmp_path / "half", [(0, 0.0, 1.0), (50, 5.0, 2.0)])
    _write_metrics(tmp_path / "done", [(0, 0.0, 1.0), (50, 5.0, 2.0), (100, 9.0, 3.0)])
    assert not study.finished(tmp_path / "half", 100)
    assert study.finished(tmp_path / "done", 100)


def test_report_table_and_plot_from_run_directories(tmp_path):
    """The table gives final, best and last-3 mean eval return per (task, variant) over seeds; the plot
    is written as a PNG."""
    cfg = study.StudyConfig(tasks=("toy/pendulum:100",), seeds=(0, 1), variants=("mbdpo", "tdmpc2"),
                            runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out" / "s"), report_only=True)
    for seed, final in [(0, -200.0), (1, -100.0)]:
        _write_metrics(study.run_dir(cfg, "toy/pendulum", "mbdpo", seed),
                       [(0, 0.0, -1200.0), (50, 5.0, -300.0), (100, 10.0, final)])
    assert study.main(["--tasks", "toy/pendulum:100", "--seeds", "0", "1", "--variants", "mbdpo", "tdmpc2",
                       "--runs-dir", cfg.runs_dir, "--out", cfg.out, "--report-only"]) == 0
    table = (tmp_path / "out" / "s.md").read_text()
    assert "| toy/pendulum | mbdpo | 2 | -150 ± 50 | -150 ± 50 | -550 ± 17 | 10 |" in table
    assert "tdmpc2" not in table  # no runs of it
    assert (tmp_path / "out" / "s.png").read_bytes()[:4] == b"\x89PNG"
