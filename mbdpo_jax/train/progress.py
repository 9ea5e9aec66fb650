"""Progress reports from inside a compiled chunk: a cheap host callback every few iterations.

The loops call `report(count)` through `jax.debug.callback` (see `off_policy.LoopConfig.progress_every`);
the host loop listens while a chunk runs and moves its progress bar. Nothing listens in library use,
so a report is then a no-op on the host.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import jax
import numpy as np

_listeners: list[Callable[[int], None]] = []


def report(count: jax.Array) -> None:
    """Host side: pass the progress counter (the largest, when seeds are vmapped) to the listeners."""
    value = int(np.max(np.asarray(count)))
    for listener in list(_listeners):
        listener(value)


@contextlib.contextmanager
def listening(listener: Callable[[int], None]) -> Iterator[None]:
    """Call `listener(count)` for every report while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def maybe_report(index: jax.Array, count: jax.Array, every: int) -> None:
    """Inside a jitted loop: report `count` on every `every`-th iteration (never when every is 0)."""
    if every <= 0:
        return
    jax.lax.cond(index % every == every - 1, lambda c: jax.debug.callback(report, c), lambda c: None, count)
