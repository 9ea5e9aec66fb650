"""Load TD-MPC2 / MBDPO PyTorch world models (nicklashansen/tdmpc2; Hansen et al., "TD-MPC2: Scalable,
Robust World Models for Continuous Control", arXiv 2310.16828) into our `WorldModel`.

    model, params = load_checkpoint("mt80-48M.pt")            # needs torch
    model, params = load_state_dict({k: v.numpy() for k, v in sd.items()})
    z = model.encode(params, obs, task)

Sizes are inferred from the shapes (`infer_config`); `inferred_preset(model.cfg)` names the preset
they match. The reference stores each MLP as an `nn.Sequential` of `NormedLinear` layers (Linear weight
[out, in], bias, `ln.weight`, `ln.bias`) ending in a plain Linear (reward, pi, Q, termination) or a
`NormedLinear` followed by SimNorm (encoder, dynamics). The Q ensemble is a stacked parameter dict
`_Qs.params.<layer>.<name>` with a leading head axis and its EMA copy `_target_Qs_params.*`; checkpoints
of the reference's first release number the stacked tensors instead (`_Qs.params.<k>`,
`_target_Qs.params.<k>`, k = 4 * layer + [weight, bias, ln.weight, ln.bias]) and are converted as the
reference's own `api_model_conversion` does. Task embeddings are `_task_emb.weight` [tasks, task_dim];
the buffers `log_std_min` / `log_std_dif` set the prior's log-std range and `_action_masks` the
model's action masks. The `_detach_Qs_params` alias and tensordict metadata are ignored.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from mbdpo_jax.models.world_model import PRESETS, TASK_DIMS, WorldModel, WorldModelConfig

IGNORED_PREFIXES = ("_detach_Qs_params.", "log_std_min", "log_std_dif", "_action_masks")
METADATA_SUFFIXES = ("__batch_size", "__device")
# Entries every TD-MPC2 state-vector world model has; their shapes give the sizes.
REQUIRED = ("_encoder.state.0.weight", "_dynamics.0.weight", "_reward.2.weight", "_pi.2.weight",
            "_Qs.params.0.weight")
_LEGACY_NAMES = ("weight", "bias", "ln.weight", "ln.bias")
_LEGACY_KEY = re.compile(r"^(_Qs\.params|_target_Qs\.params)\.(\d+)$")


class StateDictError(ValueError):
    """The state dict does not fit the world model (missing, unexpected or mis-shaped entries)."""


# ---- canonical form ---------------------------------------------------------------------------
def _to_numpy(value: Any) -> np.ndarray:
    """numpy array of a numpy array, scalar or (duck-typed, CPU or GPU) torch tensor; bf16/fp16 as float32."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _canonical(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The model state dict as numpy arrays under the reference's current names.

    Unwraps a full checkpoint ({"model": state_dict, ...}), drops tensordict metadata and renames a
    first-release checkpoint's numbered Q-ensemble tensors.
    """
    if not isinstance(state_dict, Mapping):
        raise StateDictError(f"expected a mapping of parameter names to arrays, got {type(state_dict).__name__}")
    if isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or key.endswith(METADATA_SUFFIXES):
            continue
        legacy = _LEGACY_KEY.match(key)
        if legacy:
            prefix = "_Qs.params" if legacy.group(1) == "_Qs.params" else "_target_Qs_params"
            k = int(legacy.group(2))
            key = f"{prefix}.{k // 4}.{_LEGACY_NAMES[k % 4]}"
        out[key] = _to_numpy(value)
    return out


# ---- sizes ------------------------------------------------------------------------------------
def inferred_preset(cfg: WorldModelConfig) -> str | None:
    """Name of the preset in `PRESETS` whose (enc_dim, mlp_dim, latent_dim, num_enc_layers, num_q) are
    `cfg`'s ("1M" ... "317M" are TD-MPC2's model sizes, "tiny" ours), or None for custom sizes."""
    sizes = (cfg.enc_dim, cfg.mlp_dim, cfg.latent_dim, cfg.num_enc_layers, cfg.num_q)
    return next((name for name, preset in PRESETS.items() if preset == sizes), None)


def _shape(sd: Mapping[str, np.ndarray], key: str, ndim: int) -> tuple[int, ...]:
    shape = sd[key].shape
    if len(shape) != ndim:
        raise StateDictError(f"{key!r} has shape {shape}; expected {ndim} dimensions")
    return shape


def _sizes(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """WorldModelConfig fields read off the shapes of a canonical state dict."""
    missing = [k for k in REQUIRED if k not in sd]
    if missing:
        pixel = " (pixel encoders, '_encoder.rgb.*', are not supported)" if any(
            k.startswith("_encoder.rgb.") for k in sd) else ""
        raise StateDictError(f"not a TD-MPC2 world-model state dict: missing {', '.join(map(repr, missing))}"
                             f"{pixel}; it has {', '.join(sorted(sd)[:5])}{' ...' if len(sd) > 5 else ''}")
    n_enc = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_encoder\.state\.(\d+)\.weight$", k)))
    enc_dim, enc_in = _shape(sd, "_encoder.state.0.weight", 2)
    latent = _shape(sd, f"_encoder.state.{n_enc - 1}.weight", 2)[0]
    mlp_dim, dyn_in = _shape(sd, "_dynamics.0.weight", 2)
    num_tasks, task_dim = _shape(sd, "_task_emb.weight", 2) if "_task_emb.weight" in sd else (1, 0)
    if "_task_emb.weight" in sd and num_tasks < 2:
        raise StateDictError(f"'_task_emb.weight' has {num_tasks} task; multi-task models need at least 2")
    pi_out = _shape(sd, "_pi.2.weight", 2)[0]
    action = dyn_in - latent - task_dim
    if pi_out != 2 * action or enc_in <= task_dim:
        raise StateDictError(f"inconsistent sizes: '_pi.2.weight' gives {pi_out // 2} action dims and "
                             f"'_dynamics.0.weight' {action} (latent {latent}, task_dim {task_dim}); "
                             f"'_encoder.state.0.weight' input {enc_in}")
    sizes = dict(obs_size=enc_in - task_dim, action_size=action, enc_dim=enc_dim, mlp_dim=mlp_dim,
                 latent_dim=latent, num_enc_layers=n_enc, num_q=_shape(sd, "_Qs.params.0.weight", 3)[0],
                 num_bins=_shape(sd, "_reward.2.weight", 2)[0], num_tasks=num_tasks,
                 episodic="_termination.0.weight" in sd)
    if task_dim:
        sizes["task_dim"] = task_dim
    if "log_std_min" in sd and "log_std_dif" in sd:
        low = float(sd["log_std_min"])
        sizes.update(log_std_min=low, log_std_max=low + float(sd["log_std_dif"]))
    return sizes


def infer_config(state_dict: Mapping[str, Any], **overrides: Any) -> WorldModelConfig:
    """The `WorldModelConfig` of a TD-MPC2 world-model state dict, from its shapes and buffers.

    Inferred: obs_size, action_size (the largest task's, for multi-task models), enc_dim, mlp_dim,
    latent_dim, num_enc_layers, num_q, num_bins, num_tasks and task_dim (from `_task_emb.weight`),
    episodic (a `_termination` head), log_std_min/max (from the `log_std_min` / `log_std_dif` buffers).
    A single-task model keeps its preset's task_dim (unused). Not stored by the reference, so left at
    our defaults (the reference's) unless overridden: simnorm_dim, vmin, vmax, q_dropout.
    `overrides` are WorldModelConfig fields; one that contradicts a stored log-std buffer is refused,
    and one that contradicts a shape fails when the parameters are loaded.
    """
    fields = {f.name for f in dataclasses.fields(WorldModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown WorldModelConfig override(s) {unknown}; allowed: {', '.join(sorted(fields))}")
    sizes = _sizes(_canonical(state_dict))
    for name in ("log_std_min", "log_std_max"):
        if name in sizes and name in overrides and not np.isclose(overrides[name], sizes[name]):
            raise StateDictError(f"override {name}={overrides[name]} contradicts the state dict's buffers "
                                 f"({name} = {sizes[name]})")
    cfg = WorldModelConfig(**{**sizes, **overrides})
    preset = inferred_preset(cfg)
    if preset is not None and "task_dim" not in sizes and "task_dim" not in overrides:
        cfg = dataclasses.replace(cfg, task_dim=TASK_DIMS[preset])
    return cfg


# ---- parameters -------------------------------------------------------------------------------
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
    """(params, target Q params) of a given `model` from a TD-MPC2 state dict (values numpy arrays or
    torch tensors; a full checkpoint's "model" entry and first-release key names are accepted).

    The target Q params are the EMA ensemble `_target_Qs_params` (the online ensemble when absent),
    for `model.Q(..., qs_params=target)`. Raises StateDictError naming missing or unexpected keys and
    any shape that does not match.
    """
    params, target = _numpy_params(_canonical(state_dict), model)
    return jax.tree.map(jax.numpy.asarray, params), jax.tree.map(jax.numpy.asarray, target)


def _numpy_params(sd: Mapping[str, np.ndarray], model: WorldModel) -> tuple[dict, dict]:
    """(params, target Q params) as numpy arrays (views of the state dict's where they can be), checked."""
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
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    _check_shapes(params, shapes)
    _check_shapes(target, shapes["qs"])
    return params, target


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


def _action_masks(sd: Mapping[str, np.ndarray], cfg: WorldModelConfig) -> np.ndarray | None:
    """The `_action_masks` buffer of a multi-task model (None when absent: every action dim is real)."""
    masks = sd.get("_action_masks")
    if masks is None or not cfg.multitask:
        return None
    if masks.shape != (cfg.num_tasks, cfg.action_size):
        raise StateDictError(f"'_action_masks' has shape {masks.shape}; expected "
                             f"{(cfg.num_tasks, cfg.action_size)} (tasks, largest action size)")
    return masks.astype(np.float32)


# ---- entry points -----------------------------------------------------------------------------
def load_state_dict(state_dict: Mapping[str, Any], **overrides: Any) -> tuple[WorldModel, dict]:
    """(model, params) from a TD-MPC2 / MBDPO PyTorch world-model state dict.

    `state_dict` maps the reference's parameter names (`_encoder.state.0.weight`, `_dynamics.0.ln.weight`,
    `_Qs.params.0.weight`, `log_std_min`, ...) to numpy arrays (or torch tensors), either the model's
    own state dict or a full checkpoint with a "model" entry. The sizes are inferred (`infer_config`;
    `overrides` are WorldModelConfig fields) and `inferred_preset(model.cfg)` names the matching
    preset. The model carries the checkpoint's action masks; `params` are ready for
    `model.encode/next/reward/Q/pi`. The EMA target Qs: `params_from_tdmpc2_state_dict(sd, model)[1]`.
    Raises StateDictError naming what is missing, unexpected or mis-shaped.
    """
    sd = _canonical(state_dict)
    cfg = infer_config(sd, **overrides)
    model = WorldModel(cfg, action_masks=_action_masks(sd, cfg))
    params, _ = _numpy_params(sd, model)  # the target Qs are checked, not converted
    return model, jax.tree.map(jax.numpy.asarray, params)


def load_checkpoint(path: str | os.PathLike, weights_only: bool = True, **overrides: Any
                    ) -> tuple[WorldModel, dict]:
    """`load_state_dict` of a TD-MPC2 `.pt` checkpoint (needs PyTorch; loaded on the CPU).

    weights_only: torch.load's safe unpickling (tensors and containers only); pass False only for
    checkpoints you trust that hold other objects. Raises FileNotFoundError for a missing file and
    ImportError when torch is not installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no TD-MPC2 checkpoint at {path!r}")
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"loading the PyTorch checkpoint {path!r} needs torch: `pip install torch` "
                          "(or convert it elsewhere to numpy arrays and call load_state_dict)") from err
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise StateDictError(f"{path!r} could not be unpickled with weights_only={weights_only}: {err}; "
                             "for a trusted checkpoint pass weights_only=False") from err
    return load_state_dict(checkpoint, **overrides)
