"""Load TD-MPC2's official PyTorch checkpoints (nicklashansen/tdmpc2) into our world-model parameters.

    state_dict = {k: v.numpy() for k, v in torch.load(path)["model"].items()}
    params, target_qs = params_from_tdmpc2_state_dict(state_dict, model)

The reference stores each MLP as an `nn.Sequential` of `NormedLinear` layers (Linear weight
[out, in], bias, `ln.weight`, `ln.bias`) ending in a plain Linear (reward, pi, Q, termination) or a
`NormedLinear` followed by SimNorm (encoder, dynamics); the Q ensemble is a stacked parameter dict
`_Qs.params.<layer>.<name>` with a leading head axis, its EMA copy `_target_Qs_params.*`; task
embeddings are `_task_emb.weight`. Buffers (`log_std_min`, `log_std_dif`, `_action_masks`, the
`_detach_Qs_params` alias, tensordict metadata) are not parameters and are ignored.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from mbdpo_jax.models.world_model import WorldModel

IGNORED_PREFIXES = ("_detach_Qs_params.", "log_std_min", "log_std_dif", "_action_masks")


class StateDictError(ValueError):
    """The state dict does not fit the world model (missing, unexpected or mis-shaped entries)."""


def _layers(model: WorldModel) -> dict[str, tuple[str, int, bool]]:
    """Our module name -> (reference prefix, number of linear layers, whether the last is a NormedLinear)."""
    cfg = model.cfg
    enc_layers = max(cfg.num_enc_layers - 1, 1) + 1
    out = {"encoder": ("_encoder.state", enc_layers, True), "dynamics": ("_dynamics", 3, True),
           "reward": ("_reward", 3, False), "pi": ("_pi", 3, False), "qs": ("_Qs.params", 3, False)}
    if cfg.episodic:
        out["termination"] = ("_termination", 3, False)
    return out


def _mlp(sd: Mapping[str, np.ndarray], prefix: str, n: int, last_normed: bool, used: set[str]) -> dict:
    """Flax MLP parameters from the reference's Sequential (kernels transposed to [in, out])."""
    def take(name: str) -> np.ndarray:
        key = f"{prefix}.{name}"
        if key not in sd:
            raise StateDictError(f"state dict has no {key!r}")
        used.add(key)
        return np.asarray(sd[key], np.float32)

    def dense(i: int) -> dict:
        return {"kernel": np.swapaxes(take(f"{i}.weight"), -1, -2), "bias": take(f"{i}.bias")}

    params = {}
    for i in range(n):
        if i < n - 1 or last_normed:
            params[f"NormedLinear_{i}"] = {"Dense_0": dense(i),
                                           "LayerNorm_0": {"scale": take(f"{i}.ln.weight"), "bias": take(f"{i}.ln.bias")}}
        else:
            params["Dense_0"] = dense(i)
    return params


def params_from_tdmpc2_state_dict(state_dict: Mapping[str, Any], model: WorldModel) -> tuple[dict, Any]:
    """(params, target Q params) of `model` from a reference state dict of numpy arrays.

    Raises StateDictError naming missing or unexpected keys and any shape that does not match.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(("__batch_size", "__device"))}
    used: set[str] = set()
    params: dict[str, Any] = {}
    for name, (prefix, n, last_normed) in _layers(model).items():
        params[name] = _mlp(sd, prefix, n, last_normed, used)
        if name == "qs":
            params[name] = {"VmapMLP_0": params[name]}
    target = {"VmapMLP_0": _mlp(sd, "_target_Qs_params", 3, False, used)} if any(
        k.startswith("_target_Qs_params.") for k in sd) else params["qs"]
    if model.cfg.multitask:
        if "_task_emb.weight" not in sd:
            raise StateDictError("state dict has no '_task_emb.weight' but the world model is multi-task")
        used.add("_task_emb.weight")
        params["task_emb"] = np.asarray(sd["_task_emb.weight"], np.float32)
    unexpected = sorted(k for k in sd if k not in used and not k.startswith(IGNORED_PREFIXES))
    if unexpected:
        raise StateDictError(f"unexpected state dict entries: {', '.join(unexpected[:5])}"
                             f"{' ...' if len(unexpected) > 5 else ''}")
    _check_shapes(params, model.init(jax.random.PRNGKey(0)))
    return jax.tree.map(jax.numpy.asarray, params), jax.tree.map(jax.numpy.asarray, target)


def _check_shapes(params: dict, reference: dict) -> None:
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    want = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
    if set(got) != set(want):
        missing = sorted(jax.tree_util.keystr(k) for k in set(want) - set(got))
        raise StateDictError(f"state dict does not give every parameter of the world model; missing {missing[:5]}")
    for path, leaf in got.items():
        if leaf.shape != want[path].shape:
            raise StateDictError(f"{jax.tree_util.keystr(path)}: shape {leaf.shape} in the state dict, "
                                 f"{want[path].shape} in the world model (check the preset and task count)")
