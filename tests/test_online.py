"""The online loop: one compiled chunk, vmappable seeds, resume equality, clear failures."""
import csv
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_online_config
from mbdpo_jax.train import checkpoint, host, runner
from mbdpo_jax.train.runner import build_trainer, run_online


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in host.WALL_CLOCK_COLUMNS} for row in csv.DictReader(f)]


@pytest.mark.parametrize("seed_burst,expected", [(True, [32, 64, 96]), (False, [2, 34, 66])])
def test_train_chunk_compiles_once_across_seed_phase_burst_and_learning(seed_burst, expected):
    """The chunk is compiled once: seed-phase, burst and learning chunks are the same program. When the
    32 seed steps are in, one burst of 32 updates runs (the references' pretraining on seed data) before
    2 updates per iteration of 2 envs; without the burst learning starts at 2 updates per iteration."""
    trainer = build_trainer(tiny_online_config(seed_burst=seed_burst))
    chunk = jax.jit(trainer.train_chunk)
    carry = trainer.init(jax.random.PRNGKey(0))
    updates = []
    for _ in range(3):
        carry, _ = chunk(carry)
        updates.append(int(carry.updates))
    assert updates == expected
    assert chunk._cache_size() == 1
    assert int(carry.env_steps) == 96


def test_seeds_vmap_over_the_whole_carry():
    """vmap over the carry trains several seeds in one program; seeds give different results."""
    trainer = build_trainer(tiny_online_config())
    carries = jax.vmap(trainer.init)(jax.random.split(jax.random.PRNGKey(0), 2))
    carries, metrics = jax.jit(jax.vmap(trainer.train_chunk))(carries)
    carries, metrics = jax.jit(jax.vmap(trainer.train_chunk))(carries)
    assert metrics["total_loss"].shape == (2,)
    assert np.all(np.isfinite(metrics["total_loss"]))
    assert float(metrics["total_loss"][0]) != float(metrics["total_loss"][1])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted tiny run shared by the tests below."""
    return run_online(tiny_online_config(run_dir=str(tmp_path_factory.mktemp("full") / "run"), save_dataset=True))


class SimulatedKill(BaseException):
    """Stands for SIGKILL: raised right after a chosen checkpoint commits."""


def _run_killed_after(cfg, monkeypatch, step):
    real_save = checkpoint.save

    def save_then_die(directory, at_step, tree, **kw):
        real_save(directory, at_step, tree, **kw)
        if at_step == step:
            raise SimulatedKill

    monkeypatch.setattr(host.checkpoint, "save", save_then_die)
    with pytest.raises(SimulatedKill):
        run_online(cfg)
    monkeypatch.setattr(host.checkpoint, "save", real_save)


def test_run_directory_contents(full_run):
    """A run writes config.json, metrics.csv with steps, time, eval return and losses, TensorBoard
    events, checkpoints and the learning-curve plot."""
    for name in ["config.json", "metrics.csv", "learning_curve.png"]:
        assert (full_run / name).is_file(), name
    assert list((full_run / "tensorboard").iterdir())
    assert checkpoint.latest_step(full_run / "checkpoints") == 96
    rows = _rows(full_run)
    assert [int(r["env_steps"]) for r in rows] == [0, 32, 64, 96]
    for column in ["eval_return", "consistency_loss", "reward_loss", "value_loss", "pi_loss"]:
        assert rows[-1][column] != "", column


def test_save_dataset_writes_the_replay_buffer(full_run):
    """--save-dataset leaves <run-dir>/dataset holding every collected transition, loadable and schema-checked."""
    from mbdpo_jax.data.datasets import load_dataset

    data = load_dataset(full_run / "dataset", expect_env="toy/pendulum")
    assert data.num_transitions == 96 and data.arrays["obs"].shape == (2, 48, 3)


def test_resume_gives_identical_metrics(full_run, tmp_path, monkeypatch):
    """Killed right after a checkpoint, the same command resumes and ends with the same metrics.csv
    as an uninterrupted run (every column but wall-clock time)."""
    cfg = tiny_online_config(run_dir=str(tmp_path / "run"))
    _run_killed_after(cfg, monkeypatch, step=32)
    resumed = run_online(cfg)
    assert _rows(resumed) == _rows(full_run)


def test_resume_drops_rows_logged_after_the_last_checkpoint(full_run, tmp_path, monkeypatch):
    """Rows written after the newest good checkpoint (a crash between log and save, or a corrupt
    newest checkpoint) are discarded on resume, and the run still matches the uninterrupted one."""
    cfg = tiny_online_config(run_dir=str(tmp_path / "run"))
    _run_killed_after(cfg, monkeypatch, step=64)
    newest = tmp_path / "run" / "checkpoints" / "64"
    victim = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # torn write of the newest
    resumed = run_online(cfg)
    assert _rows(resumed) == _rows(full_run)


def test_non_finite_loss_stops_with_step_and_loss_and_keeps_checkpoint(tmp_path, monkeypatch):
    """A NaN in the losses stops the run with an error naming the step and the loss; the last good
    checkpoint stays the newest one."""
    real_make_agent = runner.make_agent

    def nan_agent(cfg, spec):
        agent = real_make_agent(cfg, spec)
        update = agent.update

        def poisoned(state, batch, key):
            state, metrics = update(state, batch, key)
            return state, {**metrics, "value_loss": metrics["value_loss"] * jnp.nan}

        agent.update = poisoned
        return agent

    monkeypatch.setattr(runner, "make_agent", nan_agent)
    cfg = tiny_online_config(run_dir=str(tmp_path / "run"))
    with pytest.raises(host.NonFiniteLossError, match=r"value_loss.*env step 32"):
        run_online(cfg)
    assert checkpoint.latest_step(tmp_path / "run" / "checkpoints") == 0


@pytest.mark.parametrize("flag,value,message", [
    ("--steps", "-5", "steps must be > 0"),
    ("--model-size", "7M", "unknown model size '7M'"),
    ("--horizon", "0", "horizon must be > 0"),
    ("--num-envs", "0", "num-envs must be > 0"),
    ("--env", "dmc/cartpole-swingupp", "unknown env 'dmc/cartpole-swingupp'"),
])
def test_bad_config_fails_fast_with_one_line(flag, value, message, tmp_path):
    """Bad options fail before compiling, with one line naming the bad value (and no traceback)."""
    out = subprocess.run([sys.executable, "-m", "experiments.online", flag, value, "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unknown_algorithm_is_refused_naming_the_allowed_ones(tmp_path):
    """`experiments.online nosuchalgo` fails with one line naming the registered algorithms."""
    out = subprocess.run([sys.executable, "-m", "experiments.online", "nosuchalgo", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "unknown algorithm 'nosuchalgo'; allowed: mbdpo, tdmpc2" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("algo", ["tdmpc2", "mbdpo"])
def test_help_of_an_algorithm_lists_every_setting_with_its_default(algo):
    """`experiments.online ALGO --help` names every setting of that algorithm's config and of the loop,
    with short flag names (no nested prefixes), and no setting of another algorithm."""
    from mbdpo_jax.agents import config_class
    from mbdpo_jax.train.config import LoopOptions, OnlineConfig, flat_fields

    out = subprocess.run([sys.executable, "-m", "experiments.online", algo, "--preset", "paper", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for name in flat_fields(OnlineConfig(agent=config_class(algo)(), loop=LoopOptions())):
        assert "--" + name.replace("_", "-") in out.stdout, name
    assert "default: 100000" in out.stdout and "--agent." not in out.stdout
    other = {"tdmpc2": "--diffusion-steps", "mbdpo": "--iterations"}[algo]
    assert other not in out.stdout
