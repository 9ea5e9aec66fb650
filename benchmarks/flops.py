"""Matmul FLOPs of a program and the matmul peak they are measured against.

XLA's `cost_analysis` counts a loop body once, however many times it runs, so for a planner (a scan over
iterations and horizon) or an update (a scan over the horizon) it undercounts by the trip counts. We
count instead from the traced program (its jaxpr): every `dot_general` costs 2 x (output elements) x
(contracted size), and the body of a scan of length L counts L times. Nothing runs. `tests/test_flops.py`
checks the count against the dots of XLA's compiled program on cases whose loops run once.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core


def dot_general_flops(eqn: Any) -> int:
    """2 x output elements x contracted size of one `dot_general` equation."""
    (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[d] for d in lhs_contracting)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _called_flops(eqn: Any) -> int:
    """Matmul FLOPs of the jaxprs an equation calls, times how often they run."""
    if eqn.primitive.name == "while":
        raise ValueError("matmul_flops: a while loop has no static trip count; write it as lax.scan or "
                         "lax.fori_loop with Python-int bounds")
    if eqn.primitive.name in ("cond", "switch"):
        # Only one branch runs; count the most expensive one (an upper bound, exact when branches agree).
        return max(jaxpr_matmul_flops(branch) for branch in eqn.params["branches"])
    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    subs = [sub for value in eqn.params.values() for sub in (value if isinstance(value, (tuple, list)) else (value,))
            if isinstance(sub, (jax_core.Jaxpr, jax_core.ClosedJaxpr))]
    return times * sum(jaxpr_matmul_flops(sub) for sub in subs)


def jaxpr_matmul_flops(jaxpr: Any) -> int:
    """Matmul FLOPs of a (closed) jaxpr, loops multiplied by their trip counts."""
    jaxpr = jaxpr.jaxpr if isinstance(jaxpr, jax_core.ClosedJaxpr) else jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += dot_general_flops(eqn)
        elif eqn.primitive.name == "conv_general_dilated":
            raise ValueError("matmul_flops: convolutions are not counted")
        else:
            total += _called_flops(eqn)
    return total


def matmul_flops(fn: Callable, *args: Any) -> int:
    """Matmul FLOPs of one call fn(*args), counted from its jaxpr after dead-code elimination (work whose
    result is never used is not done by XLA either); nothing is run or compiled."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    # jax.make_jaxpr keeps dead equations; JAX's own DCE pass (not public API) drops them as XLA would.
    from jax._src.interpreters import partial_eval

    live, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return jaxpr_matmul_flops(live)


def matmul_peak(m: int, k: int, n: int, repeats: int = 5, chain: int = 32,
                dtype: Any = jnp.float32) -> float:
    """Attainable FLOP/s of (m x k) @ (k x n) matmuls on the default device: the median over `repeats` calls
    of one jitted program of `chain` dependent matmuls (so dispatch does not dilute the figure)."""
    ka, kb, kc = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(ka, (m, k), dtype)
    w_in = (jax.random.normal(kb, (k, n)) / math.sqrt(k)).astype(dtype)
    w_back = (jax.random.normal(kc, (n, k)) / math.sqrt(n)).astype(dtype)

    @jax.jit
    def chained(x):
        def body(h, _):
            return (h @ w_in) @ w_back, None
        return jax.lax.scan(body, x, None, length=chain // 2)[0]

    jax.block_until_ready(chained(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(chained(x))
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n * (chain // 2) * 2 / sorted(times)[len(times) // 2]


def hlo_dot_flops(hlo_text: str) -> int:
    """Matmul FLOPs of the `dot` instructions in an HLO module's text, each counted once (a loop body once):
    XLA's own view of the matmuls it kept, for checking `matmul_flops` on programs whose loops run once."""
    dims = lambda text: [int(d) for d in text.split(",") if d]
    shapes = {name: dims(d) for name, d in re.findall(r"%?([\w.\-]+) = [a-z0-9]+\[([0-9,]*)\]", hlo_text)}
    dot = re.compile(r"= [a-z0-9]+\[([0-9,]*)\]\S* dot\((?:[a-z0-9]+\[[0-9,]*\]\S* )?%?([\w.\-]+),.*?"
                     r"lhs_contracting_dims=\{([0-9,]*)\}")
    total = 0
    for out, lhs, contracting in dot.findall(hlo_text):
        total += 2 * math.prod(dims(out)) * math.prod(shapes[lhs][c] for c in dims(contracting))
    return total
