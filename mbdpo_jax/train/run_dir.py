"""Run directories: config.json guard, checkpoint folder, atomic file writes.

A run directory holds everything one experiment produces::

    <run_dir>/config.json      the config the run was started with (written once)
    <run_dir>/metrics.csv      one row per log step (see `mbdpo_jax.train.logging`)
    <run_dir>/tensorboard/     TensorBoard event files
    <run_dir>/checkpoints/     `<step>/` folders (see `mbdpo_jax.train.checkpoint`)

Rerunning with the same directory resumes the run, so the directory's config must
match the new one: `prepare_run_dir` refuses a different config with a one-line
`RunDirError` instead of mixing two experiments in one folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mbdpo_jax.data.files import atomic_write, fsync_dir  # noqa: F401 (re-exported)

CONFIG_NAME = "config.json"
CHECKPOINTS_NAME = "checkpoints"
_ABSENT = object()
_MAX_VALUE_CHARS = 60


class RunDirError(ValueError):
    """The run directory cannot be used for this run (e.g. it holds another config)."""


def checkpoints_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Returns `<run_dir>/checkpoints` (created by the first checkpoint save)."""
    return Path(run_dir) / CHECKPOINTS_NAME


def prepare_run_dir(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    *,
    resume_keys_ignored: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Creates the run directory and records or checks its config.

    Args:
      path: the run directory; created with its parents if missing.
      config: JSON-serialisable config (nested dicts allowed; other values are
        written with `str`). Written to `config.json` if that file is absent.
      resume_keys_ignored: keys whose value may differ on resume (e.g. "total_steps"
        or a nested "eval.video"); a dotted key also ignores everything below it.
      defaults: the config's default values. A key absent from an existing
        `config.json` (an option added after that run was started) is taken to have
        had its default, so such runs still resume when the option is left at it.
        A config with a "format" key is refused against a stored config of another format.

    Returns:
      The run directory as a `Path`.

    Raises:
      RunDirError: `path` is a file, `config.json` is unreadable, or it holds a
        config that differs from `config` outside `resume_keys_ignored`.
    """
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory; pick another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"
    config_path = run_dir / CONFIG_NAME
    if not config_path.exists():
        atomic_write(config_path, text.encode())
        return run_dir
    stored = _read_config(config_path)
    if stored.get("format") != config.get("format"):
        raise RunDirError(
            f"run directory {run_dir} was written in config format {stored.get('format', 1)!r}, not "
            f"{config.get('format', 1)!r} (an older mbdpo_jax with one flat config for every algorithm); its "
            "checkpoints do not fit today's agent state, so pick another --run-dir")
    old = _deep_merge(defaults or {}, stored)
    old = json.loads(json.dumps(old, sort_keys=True, default=str))
    diffs = _config_diffs(old, json.loads(text), tuple(resume_keys_ignored))
    if diffs:
        raise RunDirError(
            f"run directory {run_dir} holds a different config ({'; '.join(diffs)}); "
            "pick another --run-dir or rerun with the same config"
        )
    return run_dir


def _read_config(config_path: Path) -> dict[str, Any]:
    """Loads an existing config.json, turning any failure into a RunDirError."""
    try:
        old = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read {config_path}: {type(e).__name__}: {e}; pick another --run-dir") from e
    if not isinstance(old, dict):
        raise RunDirError(f"{config_path} does not hold a JSON object; pick another --run-dir")
    return old


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, merging nested dicts key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts to {"a.b": value}; an empty dict stays a value."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _is_ignored(key: str, ignored: tuple[str, ...]) -> bool:
    """True if `key` or one of its dotted parents is in `ignored`."""
    return any(key == i or key.startswith(i + ".") for i in ignored)


def _short(value: Any) -> str:
    """repr of a config value, cut to keep the error message on one short line."""
    text = "<absent>" if value is _ABSENT else repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _config_diffs(old: Mapping[str, Any], new: Mapping[str, Any], ignored: tuple[str, ...]) -> list[str]:
    """Lists "key: old -> new" for every differing, non-ignored flattened key."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(flat_old.keys() | flat_new.keys()):
        a, b = flat_old.get(key, _ABSENT), flat_new.get(key, _ABSENT)
        same = a is not _ABSENT and b is not _ABSENT and json.dumps(a) == json.dumps(b)
        if not same and not _is_ignored(key, ignored):
            diffs.append(f"{key}: {_short(a)} -> {_short(b)}")
    return diffs
