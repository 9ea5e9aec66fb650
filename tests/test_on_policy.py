"""The on-policy loop: a chunk runs whole rollouts with finite metrics and the right counts, compiles
once, resumes bit for bit from a checkpoint (carry and host loop alike), refuses impossible configs with
one line, and is reachable from `experiments.online ppo`."""
import csv
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_online_config
from mbdpo_jax.train import checkpoint, host
from mbdpo_jax.train.on_policy import OnPolicyLoopConfig
from mbdpo_jax.train.runner import build_trainer, online_program, run_online

# 2 iterations of 4 envs x 8 steps per chunk, 2 epochs of 2 minibatches of 16 samples each
TINY = dict(num_envs=4, num_steps=8, epochs=2, minibatches=2, eval_every=64, steps=128, policy_hidden=(16,),
            value_hidden=(16,))


def tiny_ppo(**changes):
    return tiny_online_config("ppo", **{**TINY, **changes})


def leaves_equal(a, b) -> bool:
    """Same structure and the same bytes in every leaf."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def trainer_and_chunk():
    """The trainer and the chunk exactly as `run_online` compiles them (jitted, carry donated), so the
    host-loop test below reuses the compiled program from the persistent cache."""
    cfg = tiny_ppo()
    trainer = build_trainer(cfg)
    return trainer, online_program(trainer, cfg.loop).chunk


def test_a_chunk_runs_whole_rollouts_with_finite_metrics_and_compiles_once(trainer_and_chunk):
    """One chunk = 2 rollouts of 4 x 8 env steps, each followed by 2 epochs x 2 minibatches: 64 env steps
    and 8 updates per chunk; every metric is finite, and the second chunk reuses the compiled program."""
    trainer, chunk = trainer_and_chunk
    assert trainer.cfg.iterations_per_chunk == 2 and trainer.cfg.minibatch_size == 16
    carry = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    for expected in (1, 2):
        carry, metrics = chunk(carry)
        assert int(carry.env_steps) == 64 * expected and int(carry.updates) == 8 * expected
    assert chunk._cache_size() == 1
    values = host.floats(metrics)
    assert {"policy_loss", "value_loss", "entropy", "approx_kl", "train_episode_return"} <= set(values)
    assert all(np.isfinite(v) for v in values.values()), values


def test_two_chunks_equal_one_chunk_checkpoint_restore_one_chunk(trainer_and_chunk, tmp_path):
    """Two chunks in a row and one chunk -> checkpoint -> restore into a fresh carry -> one chunk end in
    the same carry and metrics, bit for bit (on the CPU)."""
    trainer, chunk = trainer_and_chunk  # donates its argument: each carry is passed once
    init = jax.jit(trainer.init)
    once, _ = chunk(init(jax.random.PRNGKey(1)))
    checkpoint.save(tmp_path, int(once.env_steps), once)
    restored = checkpoint.restore(tmp_path, init(jax.random.PRNGKey(2)))
    assert leaves_equal(restored, once)
    straight, straight_metrics = chunk(once)
    resumed, resumed_metrics = chunk(restored)
    assert leaves_equal(resumed, straight)
    assert leaves_equal(resumed_metrics, straight_metrics)


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in host.WALL_CLOCK_COLUMNS} for row in csv.DictReader(f)]


class SimulatedKill(BaseException):
    """Stands for SIGKILL right after the first checkpoint of a chunk commits."""


def test_ppo_trains_through_the_host_loop_and_a_killed_run_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    """`experiments.online ppo` on toy/pendulum writes the run directory (config, metrics rows at every
    evaluation with the eval return and the losses, checkpoints, curve); a run killed after its first
    chunk's checkpoint, rerun, ends with the uninterrupted run's metrics.csv (wall-clock columns aside),
    and rerunning a finished run trains no more."""
    full = run_online(tiny_ppo(run_dir=str(tmp_path / "full")))
    rows = _rows(full)
    assert [int(r["env_steps"]) for r in rows] == [0, 64, 128]
    assert all(rows[-1][k] != "" for k in ("eval_return", "policy_loss", "value_loss", "entropy"))
    assert (full / "config.json").is_file() and (full / "learning_curve.png").is_file()
    assert checkpoint.latest_step(full / "checkpoints") == 128

    real_save = checkpoint.save

    def save_then_die(directory, step, tree, **kw):
        real_save(directory, step, tree, **kw)
        if step == 64:
            raise SimulatedKill

    cfg = tiny_ppo(run_dir=str(tmp_path / "killed"))
    monkeypatch.setattr(host.checkpoint, "save", save_then_die)
    with pytest.raises(SimulatedKill):
        run_online(cfg)
    monkeypatch.setattr(host.checkpoint, "save", real_save)
    assert _rows(run_online(cfg)) == rows
    assert _rows(run_online(cfg)) == rows


@pytest.mark.parametrize("changes,message", [
    (dict(eval_every=100), "eval_every=100 must be a positive multiple of num_envs x num_steps = 4 x 8 = 32 env steps"),
    (dict(minibatches=3), "minibatches=3 must divide the rollout of num_envs x num_steps = 4 x 8 = 32 samples"),
    (dict(epochs=0), "epochs must be > 0, got 0"),
    (dict(save_dataset=True), "--save-dataset needs a replay, which ppo (on-policy) does not keep"),
])
def test_impossible_configs_are_refused_with_one_line_naming_the_value(changes, message):
    """Configs the loop cannot run fail before anything compiles, in one line naming the value."""
    with pytest.raises(ValueError) as err:
        build_trainer(tiny_ppo(**changes))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_loop_config_lists_every_bad_value():
    """A loop config with several bad values names them all in one line."""
    with pytest.raises(ValueError, match=r"^invalid on-policy loop config: num_steps=0 \(must be >= 1\); "
                                         r"eval_episodes=0 \(must be >= 1\)$"):
        OnPolicyLoopConfig(num_envs=2, num_steps=0, epochs=1, minibatches=1, steps_per_chunk=8,
                           eval_episodes=0).validate()


def test_help_of_ppo_lists_its_settings_with_defaults():
    """`experiments.online ppo --help` names every PPO and loop setting with short flags and its
    defaults (the paper preset: Playground's 2048 envs), and no setting of another algorithm."""
    from mbdpo_jax.agents import config_class
    from mbdpo_jax.train.config import LoopOptions, OnlineConfig, flat_fields

    out = subprocess.run([sys.executable, "-m", "experiments.online", "ppo", "--preset", "paper", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in flat_fields(OnlineConfig(agent=config_class("ppo")(), loop=LoopOptions())):
        assert "--" + name.replace("_", "-") in out.stdout, name
    assert "default: 2048" in out.stdout and "--agent." not in out.stdout and "--diffusion-steps" not in out.stdout
