"""Checkpoints: bit-exact round trip, pruning, crash safety and clear errors on bad files."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax.train import checkpoint
from mbdpo_jax.train.checkpoint import CheckpointCorruptError, CheckpointError, CheckpointMismatchError


@flax.struct.dataclass
class AgentState:
    params: dict[str, jax.Array]
    step: jax.Array
    key: jax.Array
    lr: float = flax.struct.field(pytree_node=False, default=1e-3)


def make_tree(seed: int = 0) -> dict[str, Any]:
    """A small training-state pytree: dataclass, raw and typed keys, int32/float32 arrays."""
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.standard_normal((3, 4), dtype=np.float32)),
        "b": jnp.asarray([np.nan, -0.0, np.inf, 1e-45], dtype=jnp.float32),
    }
    agent = AgentState(params=params, step=jnp.int32(seed), key=jax.random.PRNGKey(seed))
    return {
        "agent": agent,
        "typed_key": jax.random.key(seed + 1),
        "counts": jnp.arange(5, dtype=jnp.int32) * (seed + 1),
        "buffer": (jnp.zeros((2, 3), jnp.float32), jnp.ones((), jnp.bool_)),
    }


def assert_bit_equal(a: Any, b: Any) -> None:
    """Same structure and identical bytes and dtypes in every leaf (keys compared as key data)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def files_of(step_dir: Path) -> list[Path]:
    """Array data files of a checkpoint, largest first."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != checkpoint.MANIFEST_NAME]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def test_round_trip_is_bit_exact(tmp_path):
    """A saved pytree (flax dataclass, raw and typed PRNG keys, NaN/-0/denormal floats, int32)
    comes back with the same structure, dtypes and bytes, from a concrete or abstract template."""
    tree = make_tree(3)
    checkpoint.save(tmp_path, 7, tree)
    assert checkpoint.latest_step(tmp_path) == 7
    assert_bit_equal(checkpoint.restore(tmp_path, make_tree(0)), tree)
    restored = checkpoint.restore(tmp_path, jax.eval_shape(lambda: tree), step=7)
    assert_bit_equal(restored, tree)
    assert isinstance(restored["agent"], AgentState)
    assert jax.dtypes.issubdtype(restored["typed_key"].dtype, jax.dtypes.prng_key)


def test_keep_prunes_to_newest(tmp_path):
    """With keep=2 only the two newest steps remain, each restoring its own tree."""
    for step in (10, 20, 30):
        checkpoint.save(tmp_path, step, make_tree(step), keep=2)
    assert checkpoint.all_steps(tmp_path) == [20, 30]
    assert sorted(os.listdir(tmp_path)) == ["20", "30"]
    assert_bit_equal(checkpoint.restore(tmp_path, make_tree(), step=20), make_tree(20))


def test_save_same_step_replaces_and_later_steps_are_dropped(tmp_path):
    """Saving a step again replaces it; saving an earlier step (a run resumed from it)
    makes it the newest by removing the later ones."""
    checkpoint.save(tmp_path, 1, make_tree(1), keep=3)
    checkpoint.save(tmp_path, 2, make_tree(2), keep=3)
    checkpoint.save(tmp_path, 2, make_tree(5), keep=3)
    assert_bit_equal(checkpoint.restore(tmp_path, make_tree()), make_tree(5))
    checkpoint.save(tmp_path, 1, make_tree(6), keep=3)
    assert checkpoint.all_steps(tmp_path) == [1]


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A save that dies before its final rename, or a leftover partial folder, leaves the
    previous checkpoint restorable; latest_step ignores the partial; the next save cleans it."""
    checkpoint.save(tmp_path, 1, make_tree(1))
    partial = tmp_path / "2.partial-deadbeef"
    shutil.copytree(tmp_path / "1", partial)
    files_of(partial)[0].write_bytes(b"half")

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("simulated kill during fsync")

    monkeypatch.setattr(checkpoint, "_fsync_tree", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 3, make_tree(3))
    monkeypatch.undo()
    assert checkpoint.latest_step(tmp_path) == 1
    assert_bit_equal(checkpoint.restore(tmp_path, make_tree()), make_tree(1))
    checkpoint.save(tmp_path, 4, make_tree(4))
    assert sorted(os.listdir(tmp_path)) == ["1", "4"]


KILL_MID_SAVE = """
import os, signal, sys
from mbdpo_jax.train import checkpoint
sys.path.insert(0, sys.argv[2])
from test_checkpoint import make_tree
checkpoint.save(sys.argv[1], 1, make_tree(1))
checkpoint._fsync_tree = lambda path: os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save(sys.argv[1], 2, make_tree(2), keep=1)
"""


def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path):
    """A process SIGKILLed after orbax wrote step 2 but before the commit rename (no
    cleanup runs) leaves step 1 as the newest, intact checkpoint."""
    repo = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", KILL_MID_SAVE, str(tmp_path), str(Path(__file__).parent)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert any(".partial-" in p.name for p in tmp_path.iterdir())
    assert checkpoint.latest_step(tmp_path) == 1
    assert_bit_equal(checkpoint.restore(tmp_path, make_tree()), make_tree(1))


def test_truncated_file_names_path_and_falls_back(tmp_path):
    """A truncated array file of the newest checkpoint gives a CheckpointError naming the
    file; restore_latest_good then returns the previous step."""
    checkpoint.save(tmp_path, 1, make_tree(1))
    checkpoint.save(tmp_path, 2, make_tree(2))
    victim = files_of(tmp_path / "2")[0]
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint file {victim}") as info:
        checkpoint.restore(tmp_path, make_tree())
    assert "\n" not in str(info.value)
    step, tree = checkpoint.restore_latest_good(tmp_path, make_tree())
    assert step == 1
    assert_bit_equal(tree, make_tree(1))


def test_flipped_byte_and_missing_file_are_detected(tmp_path):
    """Same-size corruption is caught by the checksum; a deleted file is named as missing."""
    checkpoint.save(tmp_path, 1, make_tree(1))
    victim = files_of(tmp_path / "1")[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="sha256 differs"):
        checkpoint.restore(tmp_path, make_tree())
    victim.unlink()
    with pytest.raises(CheckpointCorruptError, match=f"missing file {victim}"):
        checkpoint.restore(tmp_path, make_tree())


def test_all_corrupt_raises_and_empty_returns_none(tmp_path):
    """restore_latest_good returns None for an empty folder but raises, rather than
    letting a run start afresh over them, when every checkpoint is corrupt."""
    assert checkpoint.restore_latest_good(tmp_path / "none", make_tree()) is None
    assert checkpoint.latest_step(tmp_path / "none") is None
    checkpoint.save(tmp_path, 1, make_tree(1))
    (tmp_path / "1" / checkpoint.MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointCorruptError, match="no intact checkpoint"):
        checkpoint.restore_latest_good(tmp_path, make_tree())


def test_shape_mismatch_names_leaf_and_shapes(tmp_path):
    """A template whose leaf shape, dtype or set of leaves differs raises a one-line
    CheckpointMismatchError, and restore_latest_good does not fall back on it."""
    checkpoint.save(tmp_path, 1, make_tree(1))
    checkpoint.save(tmp_path, 2, make_tree(2))
    bad = make_tree()
    bad["agent"] = bad["agent"].replace(params={**bad["agent"].params, "w": jnp.zeros((3, 5))})
    expected = r"leaf agent\.params\.w has shape \(3, 4\), expected \(3, 5\)"
    with pytest.raises(CheckpointMismatchError, match=expected):
        checkpoint.restore(tmp_path, bad)
    with pytest.raises(CheckpointMismatchError, match=expected):
        checkpoint.restore_latest_good(tmp_path, bad)
    with pytest.raises(CheckpointMismatchError, match=r"leaf counts has dtype int32, expected float32"):
        checkpoint.restore(tmp_path, {**make_tree(), "counts": jnp.zeros(5, jnp.float32)})
    with pytest.raises(CheckpointMismatchError, match="leaves missing from the checkpoint: extra"):
        checkpoint.restore(tmp_path, {**make_tree(), "extra": jnp.zeros(2)})


def test_missing_step_and_bad_arguments(tmp_path):
    """Asking for an absent step names the steps that exist; bad step/keep are rejected."""
    checkpoint.save(tmp_path, 5, make_tree())
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 6 .*\[5\]"):
        checkpoint.restore(tmp_path, make_tree(), step=6)
    with pytest.raises(ValueError, match="non-negative"):
        checkpoint.save(tmp_path, -1, make_tree())
    with pytest.raises(ValueError, match="keep"):
        checkpoint.save(tmp_path, 6, make_tree(), keep=0)


def test_zero_size_leaves_round_trip(tmp_path):
    """Zero-size arrays (MJX data has some) survive a save and restore with their shape and dtype."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mbdpo_jax.train import checkpoint

    tree = {"empty": jnp.zeros((0, 3), jnp.float32), "ints": jnp.zeros((0,), jnp.int32), "x": jnp.arange(4.0)}
    checkpoint.save(tmp_path, 7, tree)
    back = checkpoint.restore(tmp_path, jax.eval_shape(lambda: tree))
    assert back["empty"].shape == (0, 3) and back["ints"].dtype == jnp.int32
    np.testing.assert_array_equal(back["x"], tree["x"])


def test_relative_directory_works(tmp_path, monkeypatch):
    """A relative checkpoint directory (e.g. --run-dir runs/x) saves and restores."""
    import jax.numpy as jnp

    from mbdpo_jax.train import checkpoint

    monkeypatch.chdir(tmp_path)
    checkpoint.save("runs/x/checkpoints", 3, {"a": jnp.arange(3.0)})
    step, tree = checkpoint.restore_latest_good("runs/x/checkpoints", {"a": jnp.zeros(3)})
    assert step == 3 and float(tree["a"][2]) == 2.0
