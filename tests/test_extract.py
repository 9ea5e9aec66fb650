"""PWM's multi-task policy extraction from a frozen pretrained world model (train.extract, experiments.pwm)."""
import csv
import dataclasses
import functools
import json
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import collect, pwm
from mbdpo_jax import envs
from mbdpo_jax.agents.tdmpc2 import TDMPC2Config
from mbdpo_jax.data import datasets
from mbdpo_jax.train import collect as library_collect
from mbdpo_jax.train import extract as ex
from mbdpo_jax.train import offline
from mbdpo_jax.train.config import PretrainConfig, PretrainOptions, replace_flat
from mbdpo_jax.train.offline import load_pretrained, pretrain

# tdmpc2 pretraining small enough for CI (its evaluations plan with a tiny MPPI).
SMALL_PRETRAIN = dict(model_size="tiny", num_samples=16, num_elites=4, num_pi_trajs=2, iterations=2, eval_episodes=1,
                      progress=False)
# Extraction flags of the quick checks: a few tiny updates.
QUICK = ["--updates", "4", "--eval-every", "2", "--batch-size", "8", "--horizon", "4", "--eval-episodes", "1",
         "--actor-hidden", "16", "16", "--critic-hidden", "16", "--critic-iterations", "1", "--critic-minibatches", "2",
         "--no-progress"]


def _pretrain(data, run_dir, **settings):
    cfg = replace_flat(PretrainConfig(agent=TDMPC2Config(), offline=PretrainOptions()), **SMALL_PRETRAIN,
                       data=tuple(str(d) for d in data), run_dir=str(run_dir), **settings)
    return pretrain(cfg)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Random datasets of two toy tasks (different obs and action sizes) and a pretraining run directory
    on them as `pretrain` writes it at update 0: the model's values do not matter to these checks, so
    the run stops before its first chunk and evaluation (which would compile for a minute)."""
    root = tmp_path_factory.mktemp("extract")
    for env, name in [("toy/pendulum", "pend"), ("toy/point-mass", "pm")]:
        assert collect.main(["--env", env, "--policy", "random", "--steps", "512", "--num-envs", "4",
                             "--out", str(root / name)]) == 0
    real = offline.pretrain_program
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(offline, "pretrain_program", lambda *args: dataclasses.replace(
            real(*args), total=0, evaluate=lambda carry, count: {"eval_return": float("nan")}))
        run_dir = _pretrain([root / "pend", root / "pm"], root / "pre", steps=4, eval_every=4, batch_size=16)
    assert (run_dir / "checkpoints" / "0").is_dir()
    return root, run_dir


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _small_agent(pre_cfg, tasks):
    from mbdpo_jax.models import actor_critic as ac

    acc = ac.ActorCriticConfig(actor_hidden=(16, 16), critic_hidden=(16,), critic_iterations=1, critic_minibatches=2)
    return ex.extraction_agent(pre_cfg.agent, tasks, horizon=4, batch_size=8, discount=0.99, actor_critic=acc)


def _chunk(agent, params, ids, starts, updates=3, seed=0):
    """(initial policies, (policies, keys, metrics)) of `updates` extraction updates of tasks `ids`."""
    policies, keys = ex.init_policies(agent, ids, seed)
    return policies, _jitted_chunk(agent, updates)(policies, keys, params, ids, starts)


@functools.lru_cache
def _jitted_chunk(agent, updates):
    return jax.jit(lambda p, k, prm, i, s: ex.extraction_chunk(agent, prm, p, k, i, s, updates))


def test_extraction_leaves_the_world_model_bit_identical(pretrained, capsys):
    """The CLI extracts both tasks (one vmapped program), writes results.json with every task's eval
    curve and wall times, and the pretrained checkpoint's parameters are bit for bit what they were."""
    root, run_dir = pretrained
    _, _, before = load_pretrained(run_dir)
    out = root / "ext"
    assert pwm.main(["--checkpoint", str(run_dir), "--run-dir", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "toy/point-mass" in printed and "2 task(s) in one vmapped program" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["task_names"] == ["toy/pendulum", "toy/point-mass"] and results["vmapped_tasks"] == 2
    for name in results["task_names"]:
        task = results["tasks"][name]
        assert task["updates"] == [0, 2, 4] and len(task["eval_return"]) == 3
        assert np.isfinite(task["final_eval_return"]) and task["extraction_s"] > 0
    assert results["compile_s"] > 0
    assert results["extraction_s_per_task"] == pytest.approx(results["extraction_s_total"] / 2)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["updates"]) for r in rows] == [0, 2, 4] and rows[-1]["eval_return/toy/point-mass"] != ""
    _, _, after = load_pretrained(run_dir)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(before), _leaves(after)))

    # A rerun of the finished run resumes at its end: nothing recomputed, results.json kept.
    assert pwm.main(["--checkpoint", str(run_dir), "--run-dir", str(out), *QUICK]) == 0
    assert json.loads((out / "results.json").read_text())["evaluations"] == results["evaluations"]
    # After a crash before the last checkpoint, the rerun redoes the last chunk from the one before and
    # gets the same evaluations (CPU); results.json holds each evaluation once.
    shutil.rmtree(out / "checkpoints" / "4")
    assert pwm.main(["--checkpoint", str(run_dir), "--run-dir", str(out), *QUICK]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert [r["eval_return"] for r in resumed["evaluations"]] == [r["eval_return"] for r in results["evaluations"]]
    assert resumed["tasks"]["toy/pendulum"]["updates"] == [0, 2, 4]


def test_vmapped_tasks_equal_each_task_extracted_alone(pretrained):
    """Two tasks in one vmapped program give each task the policy it gets alone (same seed: keys come
    from the task id), to float tolerance; each task's start states are its own data only; the model
    parameters passed in are unchanged."""
    root, run_dir = pretrained
    pre_cfg, tasks, state = load_pretrained(run_dir)
    agent = _small_agent(pre_cfg, tasks)
    params = ex.frozen_learner(state).params
    data = [datasets.load_dataset(root / n) for n in ("pend", "pm")]
    both = ex.start_states(data, tasks, tasks.names)
    pend = data[0].arrays["obs"].reshape(-1, 3)
    assert int(both.count[0]) == len(pend) and int(both.count[1]) == data[1].rows * data[1].length
    np.testing.assert_array_equal(both.obs[0, : len(pend), :3], pend)
    np.testing.assert_array_equal(both.obs[0, :, 3:], 0.0)  # zero-padded to the model's obs size

    copy = jax.tree.map(np.array, params)
    initial, (together, _, m_together) = _chunk(agent, params, jnp.arange(2), both)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(copy), _leaves(params)))  # the model is untouched
    assert together.learner is None  # the model is an argument of the program, never part of its carry
    assert not np.allclose(_leaves(initial.actor)[0], _leaves(together.actor)[0])  # the actors moved
    for i in range(2):
        # The task alone: its own rows of the start states (same shapes for both tasks: one compile).
        alone_starts = ex.StartStates(both.obs[i : i + 1], both.count[i : i + 1])
        _, (alone, _, m_alone) = _chunk(agent, params, jnp.asarray([i]), alone_starts)
        for a, b in zip(_leaves((together.actor, together.critics)), _leaves((alone.actor, alone.critics))):
            np.testing.assert_allclose(a[i], b[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m_together["actor_loss"][i], m_alone["actor_loss"][0], rtol=1e-4)
    assert ex.start_states(data, tasks, ["toy/point-mass"]).obs.shape == (1, data[1].rows * data[1].length, 6)


def test_bad_tasks_and_missing_data_give_one_line_errors(pretrained, tmp_path, capsys):
    """--tasks naming a task the checkpoint lacks, or a task without data, stops before anything runs
    with one line naming the value and the allowed ones."""
    root, run_dir = pretrained
    assert pwm.main(["--checkpoint", str(run_dir), "--tasks", "toy/pendulum", "toy/multigoal",
                     "--run-dir", str(tmp_path / "r"), *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: task 'toy/multigoal' is not a task of checkpoint {run_dir}; "
                   "allowed: toy/pendulum, toy/point-mass")
    assert pwm.main(["--checkpoint", str(run_dir), "--tasks", "toy/point-mass", "--data", str(root / "pend"),
                     "--run-dir", str(tmp_path / "r2"), *QUICK]) == 2
    assert "no dataset of task 'toy/point-mass' among --data" in capsys.readouterr().err
    assert pwm.main(["--checkpoint", str(tmp_path / "nowhere"), *QUICK]) == 2
    assert "is not a pretraining run directory" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


# ---- learning check ------------------------------------------------------------------------------------
def swing_up(obs):
    """A scripted Pendulum-v1 controller (about -190 per episode): pump energy towards the upright
    energy, hold with a PD law near the top. Actions in [-1, 1] (torque / 2)."""
    c, s, thdot = obs[..., 0], obs[..., 1], obs[..., 2]
    energy = thdot ** 2 / 6.0 + 5.0 * c  # (m l^2 / 3) thdot^2 / 2 + m g l / 2 cos(th), m = l = 1, g = 10
    pump = jnp.sign(thdot + 1e-3) * jnp.clip(2.0 * (5.0 - energy), -1, 1)
    hold = jnp.clip(-(10 * jnp.arctan2(s, c) + 2 * thdot) / 2.0, -1, 1)
    return jnp.where(c > 0.85, hold, pump)[..., None]


def pendulum_dataset(path, num_envs=16, steps=1000, seed=0):
    """Medium-quality toy/pendulum data: 6 of 16 envs act uniformly at random, the others run the
    scripted controller with Gaussian action noise of std 0, 0.5, 1 or 2."""
    env = envs.make("toy/pendulum")
    noise = jnp.asarray([(0.0, 0.5, 1.0, 2.0)[i % 4] for i in range(num_envs)])[:, None]
    random_rows = (jnp.arange(num_envs) < num_envs * 3 // 8)[:, None]

    def act(obs, carry, key):
        k_noise, k_random = jax.random.split(key)
        a = swing_up(obs) + noise * jax.random.normal(k_noise, (num_envs, 1))
        a = jnp.where(random_rows, jax.random.uniform(k_random, (num_envs, 1), minval=-1, maxval=1), a)
        return jnp.clip(a, -1, 1), carry, {}

    policy = library_collect.Policy(env, jnp.zeros((num_envs,)), act, lambda carry, started: carry, "scripted")
    k_reset, k_run = jax.random.split(jax.random.PRNGKey(seed))
    _, fields, _, _ = library_collect.make_chunk(policy, 0.0, steps)(envs.reset_batch(env, k_reset, num_envs),
                                                                     policy.initial_carry, k_run)
    data = {k: np.asarray(v).swapaxes(0, 1) for k, v in jax.device_get(fields).items()}
    return datasets.save_dataset(path, data, env.spec, quality="medium", source="scripted swing-up, noisy")


# Measured (see the README): pretraining and extraction settings that learn within the CI budget.
LEARN_PRETRAIN = dict(steps=1000, eval_every=1000, batch_size=128, horizon=3, lr=2e-3)
LEARN_EXTRACT = ["--updates", "800", "--eval-every", "100", "--batch-size", "32", "--horizon", "16",
                 "--actor-lr", "3e-3", "--critic-lr", "3e-3", "--critic-iterations", "2", "--critic-minibatches", "2",
                 "--eval-episodes", "8", "--preset", "laptop", "--no-progress"]


@pytest.mark.slow
def test_pwm_extracts_a_pendulum_swing_up_from_a_pretrained_model(tmp_path):
    """From a tiny tdmpc2 world model pretrained on a toy/pendulum dataset, PWM's extraction (horizon 16,
    the model frozen) holds an eval return of at least -300 over its last 3 evaluations (untrained: about
    -1300). Measured on the CI machine (2026-12-02), every 100 updates: -1333, -1059, -321, -354, -357,
    -151, -186, -134, -150 (at 300 updates the best was -321 there, -261 on another machine)."""
    t0 = time.perf_counter()
    data = pendulum_dataset(tmp_path / "pend")
    run_dir = _pretrain([data], tmp_path / "pre", **LEARN_PRETRAIN)
    assert pwm.main(["--checkpoint", str(run_dir), "--run-dir", str(tmp_path / "ext"), *LEARN_EXTRACT]) == 0
    results = json.loads((tmp_path / "ext" / "results.json").read_text())
    curve = results["tasks"]["toy/pendulum"]["eval_return"]
    print(f"eval returns {curve}, {time.perf_counter() - t0:.0f} s in all")
    assert curve[0] < -900  # the fresh actor fails
    assert np.mean(curve[-3:]) >= -300, curve
