"""Environment registry: `make("dmc/cheetah-run")` returns a ready-to-use `Env`.

Families: `dmc/` (MuJoCo Playground DM Control Suite on MJX), `brax/` (brax's differentiable MJX
envs), `toy/` (pure-JAX pendulum, point-mass and multimodal goals). Every env returned by `make`
is wrapped with action repeat, a time limit and auto-reset that keeps the final observation
(see `base.py` and `wrappers.py`). Building is lazy: playground and brax are imported only when
`make` is called for their family.
"""
from __future__ import annotations

import difflib
from numbers import Integral
from types import ModuleType
from typing import Callable

from mbdpo_jax.envs import brax_envs, playground, toy
from mbdpo_jax.envs.base import Env, EnvSpec, EnvState
from mbdpo_jax.envs.wrappers import reset_batch, step_batch, wrap

__all__ = [
    "Env", "EnvSpec", "EnvState", "UnknownEnvError", "make", "names", "reset_batch",
    "step_batch",
]

# family prefix -> module with TASKS (names, no heavy imports) and build(task) -> (raw, repeat)
_FAMILIES: dict[str, ModuleType] = {"dmc": playground, "brax": brax_envs, "toy": toy}


class UnknownEnvError(ValueError):
    """Raised by `make` for a name that is not registered."""


def names() -> list[str]:
    """All registered env names, sorted."""
    return sorted(f"{family}/{task}" for family, module in _FAMILIES.items()
                  for task in module.TASKS)


def _unknown(name: str) -> UnknownEnvError:
    """Build the one-line error for an unknown env name, with up to 3 close matches."""
    families = ", ".join(f"{f}/" for f in _FAMILIES)
    close = difflib.get_close_matches(name, names(), n=3)
    hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
            else "; see mbdpo_jax.envs.names()")
    return UnknownEnvError(f"unknown env {name!r}: known families are {families}{hint}")


def _builder(name: str) -> Callable[[], tuple[Env, int]]:
    """Return a zero-argument builder for `name`, or raise UnknownEnvError."""
    family, _, task = name.partition("/")
    module = _FAMILIES.get(family)
    if module is None or task not in module.TASKS:
        raise _unknown(name)
    return lambda: module.build(task)


def make(name: str, *, action_repeat: int | None = None,
         episode_length: int | None = None) -> Env:
    """Build the env registered as `name`, wrapped with action repeat, time limit and auto-reset.

    action_repeat: physics control steps per agent step (default: 2 for dmc/, 1 otherwise).
    episode_length: agent steps per episode (default: the family's length divided by the action
        repeat, e.g. 1000 / 2 = 500 for dmc/).
    Raises UnknownEnvError (a ValueError) for an unregistered name and ValueError for
    action_repeat or episode_length below 1.
    """
    build = _builder(name)
    repeat = _positive("action_repeat", action_repeat)
    length = _positive("episode_length", episode_length)
    raw, default_repeat = build()
    return wrap(raw, default_repeat if repeat is None else repeat, length)


def _positive(label: str, value: int | None) -> int | None:
    """Return `value` as an int (None stays None); ValueError naming it unless it is >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return int(value)
