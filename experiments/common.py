"""Shared entry-point behaviour: precision set explicitly, clear one-line errors for bad input."""
from __future__ import annotations

import sys
from typing import Callable

import jax


def run_or_explain(job: Callable[[], object]) -> int:
    """Run `job`; a configuration or data error prints one line (no traceback) and exits 2."""
    jax.config.update("jax_default_matmul_precision", "float32")
    try:
        result = job()
    except (ValueError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(f"run directory: {result}")
    return 0
