"""Offline datasets: on-disk format and its checks, replay export, multi-task mixing, sampling, collection."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_online_config
from experiments import collect
from mbdpo_jax.train import collect as library_collect
from mbdpo_jax import envs
from mbdpo_jax.data import datasets, replay
from mbdpo_jax.data.datasets import DatasetError, DatasetExistsError

PENDULUM = envs.EnvSpec("toy/pendulum", obs_size=3, action_size=1, episode_length=200)
POINT_MASS = envs.EnvSpec("toy/point-mass", obs_size=6, action_size=2, episode_length=100)


def fake_transitions(spec: envs.EnvSpec, rows: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 fields; obs[..., 0] = 1000 * row + t so that time order can be checked."""
    rng = np.random.default_rng(seed)
    data = {
        "obs": rng.normal(size=(rows, length, spec.obs_size)),
        "action": rng.uniform(-1, 1, size=(rows, length, spec.action_size)),
        "reward": rng.normal(size=(rows, length)),
        "next_obs": rng.normal(size=(rows, length, spec.obs_size)),
        "done": (rng.uniform(size=(rows, length)) < 0.05),
        "end": (rng.uniform(size=(rows, length)) < 0.1),
    }
    data["obs"][..., 0] = 1000 * np.arange(rows)[:, None] + np.arange(length)[None, :]
    return {k: v.astype(np.float32) for k, v in data.items()}


def rewrite_npz(path, **changes) -> None:
    """Replace (array) or drop (None) fields of a saved dataset's transitions.npz."""
    with np.load(path / datasets.ARRAYS_NAME) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    np.savez(path / datasets.ARRAYS_NAME, **arrays)


def test_round_trip_is_bit_exact(tmp_path):
    """save_dataset then load_dataset returns the same bytes for every field and the same meta facts,
    and leaves no temporary directory behind."""
    data = fake_transitions(PENDULUM, rows=3, length=17)
    path = datasets.save_dataset(tmp_path / "d", data, PENDULUM, quality="random", source="unit test")
    loaded = datasets.load_dataset(path, expect_env="toy/pendulum")
    for name in datasets.FIELDS:
        assert loaded.arrays[name].dtype == np.float32
        assert loaded.arrays[name].tobytes() == data[name].tobytes()
    assert (loaded.env, loaded.obs_size, loaded.action_size, loaded.episode_length, loaded.action_repeat) == (
        "toy/pendulum", 3, 1, 200, 1)
    assert (loaded.quality, loaded.source, loaded.rows, loaded.length, loaded.num_transitions) == (
        "random", "unit test", 3, 17, 51)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "mbdpo_jax.dataset" and meta["format_version"] == 1
    assert meta["fields"]["obs"] == {"shape": [3], "dtype": "float32"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def _filled_buffer(steps: int, num_envs: int = 2, capacity: int = 20):
    """A real flashbax trajectory buffer (rows of capacity / num_envs = 10 steps) after `steps` adds;
    obs[..., 0] of the transition added at time t is 1000 * env + t."""
    buffer = replay.make_replay(PENDULUM, capacity=capacity, num_envs=num_envs, batch_size=4, horizon=3)
    state = buffer.init(replay.example_transition(PENDULUM))
    add = jax.jit(lambda s, b: replay.add_step(buffer, s, b))
    for t in range(steps):
        step = {k: jnp.zeros((num_envs,) + v.shape, v.dtype) for k, v in replay.example_transition(PENDULUM).items()}
        step["obs"] = step["obs"].at[:, 0].set(1000.0 * jnp.arange(num_envs) + t)
        step["reward"] = step["reward"] + t
        state = add(state, step)
    return state


@pytest.mark.parametrize("steps, expected_times", [(6, range(0, 6)), (13, range(3, 13)), (20, range(10, 20))])
def test_save_replay_keeps_valid_steps_in_time_order(tmp_path, steps, expected_times):
    """save_replay keeps only written steps before the buffer wraps, and after it wraps keeps all
    steps rolled so that the oldest comes first; plan_action/planned are dropped."""
    state = _filled_buffer(steps)
    assert bool(state.is_full) == (steps >= 10)
    path = datasets.save_replay(tmp_path / "replay", state, PENDULUM)
    loaded = datasets.load_dataset(path)
    times = np.asarray(list(expected_times), np.float32)
    np.testing.assert_array_equal(loaded.arrays["obs"][:, :, 0], 1000.0 * np.arange(2)[:, None] + times[None])
    np.testing.assert_array_equal(loaded.arrays["reward"], np.broadcast_to(times, (2, len(times))))
    assert set(loaded.arrays) == set(datasets.FIELDS) and loaded.quality == "replay"


def _saved(tmp_path):
    return datasets.save_dataset(tmp_path / "d", fake_transitions(PENDULUM, 2, 8), PENDULUM, quality="q", source="s")


def test_wrong_obs_shape_names_field_and_shapes(tmp_path):
    """An obs array whose per-step shape differs from the schema is refused, naming path, field and shapes."""
    path = _saved(tmp_path)
    rewrite_npz(path, obs=np.zeros((2, 8, 5), np.float32))
    with pytest.raises(DatasetError, match=r"field 'obs' has per-step shape \(5,\), schema says \(3,\)") as err:
        datasets.load_dataset(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_field_is_named(tmp_path):
    """A field absent from transitions.npz is refused, naming it."""
    path = _saved(tmp_path)
    rewrite_npz(path, reward=None)
    with pytest.raises(DatasetError, match=r"field 'reward' is missing from transitions.npz"):
        datasets.load_dataset(path)


def test_wrong_dtype_is_named(tmp_path):
    """A field stored with another dtype is refused, naming the field, the dtype found and the schema's."""
    path = _saved(tmp_path)
    rewrite_npz(path, done=np.zeros((2, 8), np.float64))
    with pytest.raises(DatasetError, match=r"field 'done' has dtype float64, schema says float32"):
        datasets.load_dataset(path)


def test_unknown_version_names_supported_ones(tmp_path):
    """A format version this code does not know is refused, listing the supported versions."""
    path = _saved(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(DatasetError, match=r"format version 2 is not supported; supported: 1"):
        datasets.load_dataset(path)


def test_schema_shape_mismatch_and_other_refusals(tmp_path):
    """Refused with a clear message: a meta schema disagreeing with obs_size, inconsistent rows, a missing
    file, another env than expected, and saving transitions that lack a field."""
    path = _saved(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "obs_size": 17}))
    with pytest.raises(DatasetError, match=r"schema of field 'obs'"):
        datasets.load_dataset(path)
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"is for env 'toy/pendulum', expected 'toy/point-mass'"):
        datasets.load_dataset(path, expect_env="toy/point-mass")
    rewrite_npz(path, end=np.zeros((3, 8), np.float32))
    with pytest.raises(DatasetError, match=r"field 'end' has \[rows, T\] = \[3, 8\]"):
        datasets.load_dataset(path)
    (path / "transitions.npz").unlink()
    with pytest.raises(DatasetError, match=r"missing file transitions.npz"):
        datasets.load_dataset(path)
    with pytest.raises(DatasetError, match=r"no such directory"):
        datasets.load_dataset(tmp_path / "absent")
    partial = {k: v for k, v in fake_transitions(PENDULUM, 2, 8).items() if k != "next_obs"}
    with pytest.raises(DatasetError, match=r"field 'next_obs' is missing"):
        datasets.save_dataset(tmp_path / "e", partial, PENDULUM, quality="q", source="s")
    assert not (tmp_path / "e").exists()


def test_refuses_to_overwrite(tmp_path):
    """Saving onto an existing dataset fails and keeps it; overwrite=True replaces it; a directory that is
    not a dataset is never replaced; no temporary directories are left."""
    path = _saved(tmp_path)
    other = fake_transitions(PENDULUM, 4, 5, seed=1)
    with pytest.raises(DatasetExistsError, match="already exists"):
        datasets.save_dataset(path, other, PENDULUM, quality="q", source="s")
    assert datasets.load_dataset(path).rows == 2
    datasets.save_dataset(path, other, PENDULUM, quality="q2", source="s", overwrite=True)
    assert (datasets.load_dataset(path).rows, datasets.load_dataset(path).quality) == (4, "q2")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetExistsError, match="not a dataset directory"):
        datasets.save_dataset(tmp_path / "notes", other, PENDULUM, quality="q", source="s", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "notes"]


def _loaded(tmp_path, name, spec, rows, length, seed):
    data = fake_transitions(spec, rows, length, seed)
    return datasets.load_dataset(datasets.save_dataset(tmp_path / name, data, spec, quality="q", source="s")), data


def test_mix_pads_with_zeros_masks_actions_and_labels_tasks(tmp_path):
    """mix cuts rows into segments (dropping remainders), zero-pads obs/next_obs and actions to the largest
    sizes, keeps the real values, and records task ids, action masks and per-task facts."""
    pend, pend_data = _loaded(tmp_path, "p", PENDULUM, rows=2, length=25, seed=0)
    point, point_data = _loaded(tmp_path, "m", POINT_MASS, rows=3, length=20, seed=1)
    mixed = datasets.mix([pend, point], segment_length=10)
    assert mixed.obs.shape == (10, 10, 6) and mixed.action.shape == (10, 10, 2) and mixed.reward.shape == (10, 10)
    np.testing.assert_array_equal(mixed.task, [0] * 4 + [1] * 6)
    np.testing.assert_array_equal(mixed.action_mask, [[1, 0], [1, 1]])
    obs, action = np.asarray(mixed.obs), np.asarray(mixed.action)
    assert not obs[:4, :, 3:].any() and not np.asarray(mixed.next_obs)[:4, :, 3:].any() and not action[:4, :, 1:].any()
    np.testing.assert_array_equal(obs[:4, :, :3], pend_data["obs"][:, :20].reshape(4, 10, 3))
    np.testing.assert_array_equal(action[4:], point_data["action"].reshape(6, 10, 2))
    assert mixed.task_names == ("toy/pendulum", "toy/point-mass")
    assert mixed.episode_lengths == (200, 100) and mixed.action_repeats == (1, 1)

    single = datasets.mix([point], segment_length=20)
    assert single.obs.shape == (3, 20, 6) and not np.asarray(single.task).any()
    np.testing.assert_array_equal(single.action_mask, [[1, 1]])
    with pytest.raises(DatasetError, match="shorter than segment_length=30"):
        datasets.mix([pend], segment_length=30)


def test_sample_sequences_shapes_and_stay_within_one_segment(tmp_path):
    """sample_sequences (jitted) returns time-major [H, B, ...] fields and 'task' [B]; every sequence is
    consecutive steps of one row and never crosses a segment boundary; starts cover [0, L - H]."""
    pend, _ = _loaded(tmp_path, "p", PENDULUM, rows=2, length=25, seed=0)
    point, _ = _loaded(tmp_path, "m", POINT_MASS, rows=3, length=20, seed=1)
    mixed = datasets.mix([pend, point], segment_length=10)
    sample = jax.jit(datasets.sample_sequences, static_argnums=(2, 3))
    batch = jax.device_get(sample(mixed, jax.random.PRNGKey(0), 512, 4))
    assert batch["obs"].shape == (4, 512, 6) and batch["action"].shape == (4, 512, 2)
    assert batch["reward"].shape == batch["end"].shape == (4, 512)
    assert batch["task"].shape == (512,) and batch["task"].dtype == np.int32
    stamp = batch["obs"][..., 0]  # 1000 * row + t within the source dataset
    np.testing.assert_array_equal(np.diff(stamp, axis=0), 1.0)
    time = stamp % 1000
    np.testing.assert_array_equal(time[0] // 10, time[-1] // 10)
    assert set(np.unique(time[0] % 10)) == set(range(7))
    np.testing.assert_array_equal(batch["action"][:, batch["task"] == 0, 1], 0.0)
    with pytest.raises(ValueError, match="horizon"):
        datasets.sample_sequences(mixed, jax.random.PRNGKey(0), 8, 11)


def test_collect_random_writes_loadable_dataset(tmp_path, capsys):
    """`experiments.collect --policy random` on toy/pendulum writes a loadable 'random' dataset with one row
    per env, actions in [-1, 1], next_obs == following obs within episodes, and prints path and return."""
    out = tmp_path / "pend"
    argv = ["--env", "toy/pendulum", "--policy", "random", "--steps", "900", "--num-envs", "4", "--out", str(out),
            "--chunk-steps", "200"]
    assert collect.main(argv) == 0
    data = datasets.load_dataset(out, expect_env="toy/pendulum")
    assert (data.rows, data.length, data.quality) == (4, 225, "random")
    a = data.arrays
    assert np.abs(a["action"]).max() <= 1.0 and a["end"][:, 199].all() and a["end"].sum() == 4
    inside = a["end"][:, :-1] == 0
    np.testing.assert_array_equal(a["next_obs"][:, :-1][inside], a["obs"][:, 1:][inside])
    printed = capsys.readouterr().out
    assert str(out) in printed and "4 episodes completed, mean episode return -" in printed


def test_collect_fails_clearly(tmp_path, capsys):
    """An unknown env, a missing run directory and an existing --out exit with code 2 and a one-line
    error naming the bad value, writing nothing."""
    base = ["--policy", "random", "--steps", "16", "--num-envs", "2"]
    assert collect.main(["--env", "toy/pendulm", *base, "--out", str(tmp_path / "a")]) == 2
    assert "unknown env 'toy/pendulm'" in capsys.readouterr().err
    missing = ["--env", "toy/pendulum", "--policy", str(tmp_path / "norun"), "--steps", "16"]
    assert collect.main([*missing, "--out", str(tmp_path / "b")]) == 2
    assert "norun does not exist" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    assert collect.main(["--env", "toy/pendulum", *base, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def _untrained_run(run_dir) -> str:
    """A run directory as `run_online` leaves it before its first chunk: config.json and checkpoint 0.
    (Training it first would add about a minute of compiling on 2 cores and test nothing more here.)"""
    from mbdpo_jax.train import checkpoint
    from mbdpo_jax.train.run_dir import checkpoints_dir, prepare_run_dir
    from mbdpo_jax.train.config import to_dict
    from mbdpo_jax.train.runner import build_trainer

    cfg = tiny_online_config(steps=64, run_dir=str(run_dir))
    trainer = build_trainer(cfg)
    prepare_run_dir(cfg.loop.run_dir, to_dict(cfg))
    checkpoint.save(checkpoints_dir(run_dir), 0, jax.jit(trainer.init)(jax.random.PRNGKey(cfg.loop.seed)))
    return cfg.loop.run_dir


def test_collect_from_run_directory(tmp_path, capsys):
    """A run directory's checkpoint acts: --noise-std > 0 gives a loadable 'medium' dataset whose source
    names the run; a run of another env is refused naming both envs; a run without checkpoint is refused."""
    run_dir = _untrained_run(tmp_path / "run")
    out = tmp_path / "medium"
    argv = ["--env", "toy/pendulum", "--policy", str(run_dir), "--steps", "40", "--num-envs", "4",
            "--noise-std", "0.2", "--out", str(out)]
    assert collect.main(argv) == 0
    data = datasets.load_dataset(out)
    assert (data.rows, data.length, data.quality) == (4, 10, "medium") and str(run_dir) in data.source
    assert np.abs(data.arrays["action"]).max() <= 1.0
    assert library_collect.default_quality(library_collect.CollectConfig("toy/pendulum", run_dir, 8, "x")) == "expert"
    capsys.readouterr()
    argv[1], argv[-1] = "toy/point-mass", str(tmp_path / "other")
    assert collect.main(argv) == 2
    assert "trained on env 'toy/pendulum', not --env 'toy/point-mass'" in capsys.readouterr().err
    shutil.rmtree(run_dir + "/checkpoints")
    argv[1] = "toy/pendulum"
    assert collect.main(argv) == 2
    assert "has no checkpoint" in capsys.readouterr().err
