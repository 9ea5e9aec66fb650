"""Mode coverage of a sample of actions: how many of a task's modes a policy still puts mass on.

    counts, reached = mode_coverage(actions, boxes)     # actions [N, A], boxes [M, A, 2]

A mode is an axis-aligned action box (lower bound inclusive, upper bound exclusive; bounds may be
infinite), e.g. the boxes of `envs.multimodal.MODE_BOXES`. A mode counts as reached when at least
`min_fraction` (10%) of the N actions land in it; the issue's rule is 10% of 1,000 sampled actions.
Pure jnp, so it jits, and numpy arrays go in as well.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MIN_FRACTION = 0.1


def mode_coverage(actions: jax.Array, boxes: jax.Array, min_fraction: float = MIN_FRACTION
                  ) -> tuple[jax.Array, jax.Array]:
    """(counts per mode [M] int32, number of modes reached: counts >= min_fraction * N) of actions [N, A]
    in the boxes [M, A, 2]. Actions in no box count for none; boxes should not overlap."""
    actions = jnp.asarray(actions)
    boxes = jnp.asarray(boxes, actions.dtype)
    if actions.ndim != 2 or boxes.ndim != 3 or boxes.shape[1:] != (actions.shape[1], 2):
        raise ValueError(f"need actions [N, A] and boxes [M, A, 2], got {actions.shape} and {boxes.shape}")
    a = actions[:, None, :]
    inside = jnp.all((a >= boxes[None, :, :, 0]) & (a < boxes[None, :, :, 1]), axis=-1)  # [N, M]
    counts = jnp.sum(inside, axis=0, dtype=jnp.int32)
    reached = jnp.sum(counts >= min_fraction * actions.shape[0], dtype=jnp.int32)
    return counts, reached
