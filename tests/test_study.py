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
    assert "| toy/pendulum | mbdpo | 2 | 100 | -150 ± 50 | -150 ± 50 | -550 ± 17 | 10 | this study |" in table
    assert "tdmpc2" not in table  # no runs of it
    assert (tmp_path / "out" / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_cells_not_run_are_filled_from_an_earlier_study_naming_its_file(tmp_path):
    """--previous fills only the (task, variant) cells without runs of their own, and the table names
    the file each filled cell comes from."""
    import json

    runs = str(tmp_path / "runs")
    _write_metrics(study.run_dir(study.StudyConfig(runs_dir=runs), "toy/pendulum", "pwm", 0),
                   [(0, 0.0, -1000.0), (100, 4.0, -400.0)])
    earlier = {"curves": {"toy/pendulum": {
        "tdmpc2": [{"env_steps": [0, 100], "eval_return": [-900.0, -200.0], "wall_time": 7.0}],
        "pwm": [{"env_steps": [0, 100], "eval_return": [-900.0, 0.0], "wall_time": 1.0}]}}}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    out = str(tmp_path / "s")
    assert study.main(["--tasks", "toy/pendulum:100", "--seeds", "0", "--variants", "pwm", "tdmpc2", "--runs-dir",
                       runs, "--out", out, "--report-only", "--previous", str(tmp_path / "earlier.json")]) == 0
    table = (tmp_path / "s.md").read_text()
    assert "| toy/pendulum | pwm | 1 | 100 | -400 | -400 | -700 | 4 | this study |" in table
    assert "| toy/pendulum | tdmpc2 | 1 | 100 | -200 | -200 | -550 | 7 | earlier.json |" in table
    assert json.loads((tmp_path / "s.json").read_text())["previous_sources"] == {"toy/pendulum tdmpc2": "earlier.json"}


def test_shac_budgets_round_up_to_whole_windows_per_evaluation():
    """SHAC's chunks are whole windows (16 envs x 8 steps = 128 env steps), so its evaluation period and
    budget round up to them; the other variants keep the task's budget exactly."""
    cfg = study.StudyConfig(evals_per_run=3)
    assert study.variant_budget(cfg, 6000, "shac") == (6144, 2048)
    assert study.variant_budget(cfg, 6144, "shac") == (6144, 2048)
    assert study.variant_budget(cfg, 6000, "pwm") == (6000, 2000)
    assert study.variant_budget(cfg, 6000, "tdmpc2") == (6000, 2000)


def test_run_commands_name_the_algorithm_first_and_spell_out_the_variant():
    """Each run is `experiments.online ALGO --flags` (no --algo); the MBDPO variants differ in F and
    distillation only, both written out, and the command parses to the variant's config."""
    from experiments.common import parse_config
    from mbdpo_jax.train.config import LoopOptions

    cfg = study.StudyConfig(runs_dir="r")
    cmds = {v: study.command(cfg, "toy/pendulum", 100, v, 0) for v in cfg.variants}
    assert set(cmds) == {"mbdpo", "mbdpo-no-F", "mbdpo-distill", "tdmpc2"}
    for variant, cmd in cmds.items():
        assert cmd[1:4] == ["-m", "experiments.online", variant.split("-")[0]] and "--algo" not in cmd
    assert "--no-use-energy" in cmds["mbdpo-no-F"] and "--use-energy" in cmds["mbdpo"]
    tail = lambda cmd: cmd[cmd.index("--distill-coef") + 1]
    assert (tail(cmds["mbdpo"]), tail(cmds["mbdpo-no-F"]), tail(cmds["mbdpo-distill"])) == ("0.0", "0.0", "0.1")
    assert cmds["tdmpc2"][4:6] == ["--preset", "laptop"]  # not 'auto': the same runs on any device
    agent, loop = parse_config("mbdpo", "loop", LoopOptions(), cmds["mbdpo-distill"][6:], "p", "d")
    assert (agent.distill_coef, agent.use_energy, agent.planner.diffusion_steps) == (0.1, True, 8)
    assert (agent.learner.model_size, loop.num_envs, loop.steps, loop.progress) == ("tiny", 4, 100, False)
    agent, _ = parse_config("tdmpc2", "loop", LoopOptions(), cmds["tdmpc2"][6:], "p", "d")
    assert agent.planner.iterations == 4


def test_first_order_variants_get_their_own_settings_and_parse():
    """pwm and shac runs carry no planner flags, their tuple settings are spelled out as separate
    values, and each command parses to its algorithm's config at the same env steps and action repeat."""
    from experiments.common import parse_config
    from mbdpo_jax.train.config import LoopOptions

    cfg = study.StudyConfig(runs_dir="r", variants=("pwm", "shac"), evals_per_run=2)
    for variant in cfg.variants:
        cmd = study.command(cfg, "toy/pendulum", 1024, variant, 0)
        assert "--num-samples" not in cmd and cmd[3] == variant
        agent, loop = parse_config(variant, "loop", LoopOptions(), cmd[6:], "p", "d")
        assert (loop.steps, loop.eval_every, loop.action_repeat) == (1024, 512, 4)
    agent, loop = parse_config("pwm", "loop", LoopOptions(), study.command(cfg, "toy/pendulum", 1024, "pwm", 0)[6:],
                               "p", "d")
    assert agent.actor_critic.actor_hidden == (128, 64) and loop.updates_per_step == 0.25


def test_a_run_directory_of_another_variant_or_format_is_refused(tmp_path):
    """config.json (format 2) must hold the variant's algorithm and settings; an older format or
    another variant's settings stop the study naming the difference; no config.json is accepted."""
    import json

    from mbdpo_jax.agents import config_class
    from mbdpo_jax.train.config import LoopOptions, OnlineConfig, replace_flat, to_dict

    cfg = study.StudyConfig(runs_dir=str(tmp_path))
    algo, settings = study.run_settings(cfg, "toy/pendulum", 100, "mbdpo", 0)
    path = study.run_dir(cfg, "toy/pendulum", "mbdpo", 0)
    assert study.config_mismatch(path, algo, settings) is None
    path.mkdir(parents=True)
    online = replace_flat(OnlineConfig(agent=config_class("mbdpo")(), loop=LoopOptions()), **settings)
    (path / "config.json").write_text(json.dumps(to_dict(online)))
    assert study.config_mismatch(path, algo, settings) is None
    (path / "config.json").write_text(json.dumps(to_dict(replace_flat(online, distill_coef=0.1))))
    assert "distill_coef=0.1, not 0.0" in study.config_mismatch(path, algo, settings)
    (path / "config.json").write_text(json.dumps({"algo": "mbdpo", "model_size": "tiny"}))
    assert "format" in study.config_mismatch(path, algo, settings)
    with pytest.raises(SystemExit, match="not the mbdpo variant"):
        study.main(["--tasks", "toy/pendulum:100", "--variants", "mbdpo", "--runs-dir", str(tmp_path),
                    "--out", str(tmp_path / "out"), "--report-only"])
