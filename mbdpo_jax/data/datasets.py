"""Offline datasets on disk: a schema-checked, versioned format, and multi-task mixing for training.

Format ("mbdpo_jax.dataset", version 1). A dataset is a directory::

    <dataset>/meta.json          what the arrays are (below)
    <dataset>/transitions.npz    one array per field, shaped [rows, T, *per_step_shape]

A row is one env stream: its T transitions are consecutive in time, so fixed-length sequences can
be cut within a row. Episodes follow each other inside a row; `end` marks the last step of each
(termination or truncation), so a learner masks a sequence from the first boundary on. Fields,
all float32::

    obs       [obs_size]     observation acted on
    action    [action_size]  action taken, in [-1, 1]
    reward    []             reward of the transition (summed over action repeat)
    next_obs  [obs_size]     observation reached (the true successor, also when the env auto-reset)
    done      []             1 if the transition terminated the episode
    end       []             1 if an episode ended after this step (done or truncation)

meta.json holds: format, format_version, env, obs_size, action_size, episode_length (agent steps),
action_repeat, quality (random / medium / expert / replay / ...), source (free text), rows, length
(T), num_transitions (rows * T) and fields: {name: {"shape": [...], "dtype": "float32"}}.
`load_dataset` checks all of it against the arrays and raises `DatasetError` naming the path and
the field. Saving writes into a temporary directory next to the target and renames it, so a
dataset name never holds half a dataset.

`mix` cuts datasets of several tasks into equal segments, pads observations and actions with zeros
to the largest sizes and stacks them with per-row task ids; `sample_sequences` draws time-major
sequences from the result inside jit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.data.files import commit_directory, fsync_dir

FORMAT_NAME = "mbdpo_jax.dataset"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
META_NAME = "meta.json"
ARRAYS_NAME = "transitions.npz"
FIELDS = ("obs", "action", "reward", "next_obs", "done", "end")
DTYPE = "float32"
REQUIRED_META = {"format": str, "format_version": int, "env": str, "obs_size": int, "action_size": int,
                 "episode_length": int, "action_repeat": int, "quality": str, "source": str, "rows": int,
                 "length": int, "num_transitions": int, "fields": dict}

PathLike = str | os.PathLike[str]


class DatasetError(ValueError):
    """A dataset cannot be written or read; the message names the path and the problem."""


class DatasetExistsError(DatasetError):
    """The target of a save already exists and overwrite was not asked for."""


def field_schema(obs_size: int, action_size: int) -> dict[str, dict[str, Any]]:
    """Per-step shape and dtype of every field, as stored in meta.json."""
    shapes = {"obs": [obs_size], "action": [action_size], "reward": [], "next_obs": [obs_size], "done": [],
              "end": []}
    return {name: {"shape": shapes[name], "dtype": DTYPE} for name in FIELDS}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: the facts of meta.json and the arrays ([rows, T, ...] float32 numpy)."""

    path: Path
    env: str
    obs_size: int
    action_size: int
    episode_length: int
    action_repeat: int
    quality: str
    source: str
    rows: int
    length: int
    arrays: Mapping[str, np.ndarray]

    @property
    def num_transitions(self) -> int:
        return self.rows * self.length

    @property
    def spec(self) -> EnvSpec:
        """The EnvSpec the data was collected with (differentiable is not recorded: False)."""
        return EnvSpec(self.env, self.obs_size, self.action_size, self.episode_length, self.action_repeat)


# ---- writing ---------------------------------------------------------------------------------------
def save_dataset(path: PathLike, transitions: Mapping[str, Any], spec: EnvSpec, *, quality: str, source: str,
                 overwrite: bool = False) -> Path:
    """Write `transitions` ({field: [rows, T, ...]}) as a dataset directory at `path`, atomically.

    Arrays are stored as float32. Raises DatasetError if a field is missing or has the wrong shape,
    and DatasetExistsError if `path` exists and overwrite is False. With overwrite=True an existing
    dataset (or empty directory) is replaced; anything else at `path` is never deleted.
    """
    target = Path(path)
    _check_target(target, overwrite)
    _check_field_names(target, set(transitions), "the transitions given")
    arrays = {name: np.asarray(transitions[name], np.float32) for name in FIELDS}
    schema = field_schema(spec.obs_size, spec.action_size)
    rows, length = _check_arrays(target, arrays, schema)
    if rows * length == 0:
        raise DatasetError(f"dataset {target}: no transitions to save (rows={rows}, T={length})")
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "env": spec.name, "obs_size": spec.obs_size,
            "action_size": spec.action_size, "episode_length": spec.episode_length,
            "action_repeat": spec.action_repeat, "quality": quality, "source": source, "rows": rows,
            "length": length, "num_transitions": rows * length, "fields": schema}
    _write_atomically(target, meta, arrays, overwrite)
    return target


def save_replay(path: PathLike, buffer_state: Any, spec: EnvSpec, *, quality: str = "replay",
                source: str = "replay buffer of an online run", overwrite: bool = False) -> Path:
    """Save the valid part of a flashbax trajectory buffer state (as filled by the online loop).

    Keeps the first `current_index` steps of each row while the buffer is not full, and all steps
    rolled to start at `current_index` (the oldest) once it is; drops fields that are not dataset
    fields (plan_action, planned).
    """
    return save_dataset(path, replay_transitions(buffer_state), spec, quality=quality, source=source,
                        overwrite=overwrite)


def replay_transitions(buffer_state: Any) -> dict[str, np.ndarray]:
    """The dataset fields of a trajectory buffer state in time order, [rows, T, ...] numpy."""
    index = int(jax.device_get(buffer_state.current_index))
    full = bool(jax.device_get(buffer_state.is_full))
    experience = jax.device_get(buffer_state.experience)
    missing = [name for name in FIELDS if name not in experience]
    if missing:
        raise DatasetError(f"replay buffer lacks dataset field(s) {', '.join(missing)}; it holds {sorted(experience)}")

    def ordered(x: np.ndarray) -> np.ndarray:
        return np.roll(x, -index, axis=1) if full else x[:, :index]

    return {name: ordered(np.asarray(experience[name])) for name in FIELDS}


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse an existing target unless overwrite=True and it is a dataset or an empty directory."""
    if not target.exists():
        return
    if not overwrite:
        raise DatasetExistsError(f"dataset {target} already exists; pick another path or pass overwrite=True")
    replaceable = target.is_dir() and ((target / META_NAME).is_file() or not any(target.iterdir()))
    if not replaceable:
        raise DatasetExistsError(f"{target} exists and is not a dataset directory; refusing to overwrite it")


def _write_atomically(target: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], overwrite: bool) -> None:
    """Write into `.<name>.tmp-<hex>/` beside `target`, fsync, then rename it to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        with open(tmp / ARRAYS_NAME, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / META_NAME, "w") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        _commit(tmp, target, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename `tmp` to `target`; an old dataset (only with overwrite) is moved aside, then deleted."""
    if target.exists() and not overwrite:
        raise DatasetExistsError(f"dataset {target} already exists; pass overwrite=True to replace it")
    try:
        commit_directory(tmp, target, target.with_name(f".{target.name}.old-{uuid.uuid4().hex}"))
    except OSError as e:
        raise DatasetExistsError(f"dataset {target}: cannot create it ({e.strerror})") from e


# ---- reading ---------------------------------------------------------------------------------------
def load_dataset(path: PathLike, *, expect_env: str | None = None) -> Dataset:
    """Read and validate a dataset directory.

    Raises DatasetError (one line, naming the path and the field, expected vs found) for a missing
    file, another format or an unsupported version, missing meta keys, a field set or per-step
    shape or dtype that differs from the schema, inconsistent rows/T, or an env other than
    `expect_env`.
    """
    root = Path(path)
    meta = _read_meta(root)
    if expect_env is not None and meta["env"] != expect_env:
        raise DatasetError(f"dataset {root} is for env {meta['env']!r}, expected {expect_env!r}")
    schema = _check_schema(root, meta)
    arrays = _read_arrays(root)
    _check_field_names(root, set(arrays), ARRAYS_NAME)
    rows, length = _check_arrays(root, arrays, schema)
    if (rows, length, rows * length) != (meta["rows"], meta["length"], meta["num_transitions"]):
        raise DatasetError(f"dataset {root}: arrays hold rows={rows}, T={length}, meta.json says rows={meta['rows']}, "
                           f"T={meta['length']}, num_transitions={meta['num_transitions']}")
    return Dataset(path=root, env=meta["env"], obs_size=meta["obs_size"], action_size=meta["action_size"],
                   episode_length=meta["episode_length"], action_repeat=meta["action_repeat"],
                   quality=meta["quality"], source=meta["source"], rows=rows, length=length,
                   arrays=MappingProxyType(arrays))


def _read_meta(root: Path) -> dict[str, Any]:
    """meta.json as a dict, with the format, the version and the required keys checked."""
    file = root / META_NAME
    if not file.is_file():
        what = "no such directory" if not root.exists() else f"missing file {META_NAME}"
        raise DatasetError(f"dataset {root}: {what}")
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"dataset {root}: cannot read {META_NAME}: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DatasetError(f"dataset {root}: {META_NAME} has format {found!r}, expected {FORMAT_NAME!r}")
    if meta.get("format_version") not in SUPPORTED_VERSIONS:
        raise DatasetError(f"dataset {root}: format version {meta.get('format_version')!r} is not supported; "
                           f"supported: {', '.join(map(str, SUPPORTED_VERSIONS))}")
    for key, kind in REQUIRED_META.items():
        if key not in meta:
            raise DatasetError(f"dataset {root}: {META_NAME} lacks the key {key!r}")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise DatasetError(f"dataset {root}: {META_NAME} key {key!r} is {meta[key]!r}, expected {kind.__name__}")
    return meta


def _check_schema(root: Path, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The schema of meta.json, checked against the one its sizes imply."""
    expected = field_schema(meta["obs_size"], meta["action_size"])
    schema = meta["fields"]
    _check_field_names(root, set(schema), f"the schema of {META_NAME}")
    for name in FIELDS:
        entry = schema[name]
        found = (tuple(entry.get("shape", ())), entry.get("dtype")) if isinstance(entry, dict) else entry
        wanted = (tuple(expected[name]["shape"]), expected[name]["dtype"])
        if found != wanted:
            raise DatasetError(f"dataset {root}: schema of field {name!r} is (shape, dtype) {found}, "
                               f"expected {wanted} for obs_size={meta['obs_size']}, "
                               f"action_size={meta['action_size']}")
    return expected


def _read_arrays(root: Path) -> dict[str, np.ndarray]:
    """All arrays of transitions.npz (no pickles)."""
    file = root / ARRAYS_NAME
    if not file.is_file():
        raise DatasetError(f"dataset {root}: missing file {ARRAYS_NAME}")
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"dataset {root}: cannot read {ARRAYS_NAME}: {type(e).__name__}: {e}") from e


def _check_field_names(root: Path, names: set[str], where: str) -> None:
    """Raise DatasetError naming the first missing or unexpected field in `where`."""
    missing = [n for n in FIELDS if n not in names]
    if missing:
        raise DatasetError(f"dataset {root}: field {missing[0]!r} is missing from {where} "
                           f"(fields: {', '.join(FIELDS)})")
    extra = sorted(names - set(FIELDS))
    if extra:
        raise DatasetError(f"dataset {root}: unexpected field {extra[0]!r} in {where} (fields: {', '.join(FIELDS)})")


def _check_arrays(root: Path, arrays: Mapping[str, np.ndarray], schema: Mapping[str, Any]) -> tuple[int, int]:
    """Check every field's dtype and per-step shape and that all share [rows, T]; return (rows, T)."""
    lead = None
    for name in FIELDS:
        x = arrays[name]
        shape, dtype = tuple(schema[name]["shape"]), np.dtype(schema[name]["dtype"])
        if x.ndim < 2:
            raise DatasetError(f"dataset {root}: field {name!r} has shape {x.shape}, expected [rows, T, *{shape}]")
        if x.shape[2:] != shape:
            raise DatasetError(f"dataset {root}: field {name!r} has per-step shape {x.shape[2:]}, schema says {shape}")
        if x.dtype != dtype:
            raise DatasetError(f"dataset {root}: field {name!r} has dtype {x.dtype}, schema says {dtype}")
        if lead is not None and x.shape[:2] != lead[1]:
            raise DatasetError(f"dataset {root}: field {name!r} has [rows, T] = {list(x.shape[:2])}, "
                               f"field {lead[0]!r} has {list(lead[1])}")
        lead = lead or (name, x.shape[:2])
    return int(lead[1][0]), int(lead[1][1])


# ---- multi-task mixing and sampling ------------------------------------------------------------------
@struct.dataclass
class MultiTaskData:
    """Segments of one or more datasets, padded to common sizes, as device arrays.

    obs/next_obs [N, L, max_obs], action [N, L, max_action], reward/done/end [N, L] for N segments
    of L steps; task [N] int32 (index of the segment's env in task_names); action_mask [num_tasks, max_action]
    (1 for a task's real action dims, 0 for padding). Per-task facts are static tuples.
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array
    end: jax.Array
    task: jax.Array
    action_mask: jax.Array
    task_names: tuple[str, ...] = struct.field(pytree_node=False)
    obs_sizes: tuple[int, ...] = struct.field(pytree_node=False)
    action_sizes: tuple[int, ...] = struct.field(pytree_node=False)
    episode_lengths: tuple[int, ...] = struct.field(pytree_node=False)
    action_repeats: tuple[int, ...] = struct.field(pytree_node=False)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def num_segments(self) -> int:
        return int(self.task.shape[0])

    @property
    def segment_length(self) -> int:
        return int(self.reward.shape[1])


def mix(datasets: Sequence[Dataset], segment_length: int) -> MultiTaskData:
    """Cut every dataset's rows into segments of `segment_length` steps (dropping each row's remainder),
    zero-pad obs/next_obs and action to the largest sizes, and stack all segments with task ids.

    A task is an env: datasets of the same env (say random, medium and expert data) share a task id,
    numbered in order of first appearance.
    """
    if not datasets:
        raise DatasetError("mix needs at least one dataset")
    if segment_length < 1:
        raise DatasetError(f"segment_length must be >= 1, got {segment_length}")
    tasks = _tasks_by_env(datasets)
    max_obs = max(d.obs_size for d in datasets)
    max_action = max(d.action_size for d in datasets)
    parts = [_segments(d, segment_length, max_obs, max_action) for d in datasets]
    fields = {name: np.concatenate([p[name] for p in parts]) for name in FIELDS}
    names = list(tasks)
    task = np.concatenate([np.full(len(p["reward"]), names.index(d.env), np.int32) for d, p in zip(datasets, parts)])
    firsts = list(tasks.values())
    mask = np.stack([(np.arange(max_action) < d.action_size).astype(np.float32) for d in firsts])
    return MultiTaskData(
        **{name: jnp.asarray(x) for name, x in fields.items()}, task=jnp.asarray(task), action_mask=jnp.asarray(mask),
        task_names=tuple(names), obs_sizes=tuple(d.obs_size for d in firsts),
        action_sizes=tuple(d.action_size for d in firsts),
        episode_lengths=tuple(d.episode_length for d in firsts),
        action_repeats=tuple(d.action_repeat for d in firsts))


def _tasks_by_env(datasets: Sequence[Dataset]) -> dict[str, Dataset]:
    """First dataset of each env, in order; datasets of one env must agree on its sizes."""
    tasks: dict[str, Dataset] = {}
    for d in datasets:
        first = tasks.setdefault(d.env, d)
        facts = lambda x: (x.obs_size, x.action_size, x.episode_length, x.action_repeat)
        if facts(d) != facts(first):
            raise DatasetError(f"datasets {first.path} and {d.path} are both {d.env!r} but disagree on "
                               f"(obs_size, action_size, episode_length, action_repeat): {facts(first)} vs {facts(d)}")
    return tasks


def _segments(data: Dataset, length: int, max_obs: int, max_action: int) -> dict[str, np.ndarray]:
    """One dataset's rows cut into [rows * (T // length), length, ...] segments, zero-padded."""
    per_row = data.length // length
    if per_row == 0:
        raise DatasetError(f"dataset {data.path}: rows of T={data.length} steps are shorter than "
                           f"segment_length={length}")
    widths = {"obs": max_obs, "next_obs": max_obs, "action": max_action}
    out = {}
    for name in FIELDS:
        x = data.arrays[name][:, : per_row * length]
        x = x.reshape((data.rows * per_row, length) + x.shape[2:])
        if name in widths:
            x = np.pad(x, [(0, 0), (0, 0), (0, widths[name] - x.shape[-1])])
        out[name] = x
    return out


def sample_sequences(data: MultiTaskData, key: jax.Array, batch_size: int, horizon: int) -> dict[str, jax.Array]:
    """A time-major batch of `horizon`-step sequences: every field [horizon, batch, ...], 'task' [batch].

    Pure and jit-able (batch_size and horizon static). A segment is drawn uniformly, then a start
    uniformly in [0, segment_length - horizon], so a sequence never leaves its segment.
    """
    if not 1 <= horizon <= data.segment_length:
        raise ValueError(f"horizon must be in [1, segment_length={data.segment_length}], got {horizon}")
    k_segment, k_start = jax.random.split(key)
    segment = jax.random.randint(k_segment, (batch_size,), 0, data.num_segments)
    start = jax.random.randint(k_start, (batch_size,), 0, data.segment_length - horizon + 1)
    time = start[None, :] + jnp.arange(horizon)[:, None]
    batch = {name: getattr(data, name)[segment[None, :], time] for name in FIELDS}
    batch["task"] = data.task[segment].astype(jnp.int32)
    return batch
