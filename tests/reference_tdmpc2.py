"""TD-MPC2's world model (nicklashansen/tdmpc2, arXiv 2310.16828) re-implemented in float64 numpy over
its own state-dict names and [out, in] layouts, and random state dicts in those names, for the
fidelity and interop tests. Independent of mbdpo_jax: nothing here imports it."""
from __future__ import annotations

import numpy as np

MLP_NAMES = ("weight", "bias", "ln.weight", "ln.bias")


# ---- random state dicts in the reference's names ----------------------------------------------------
def _mlp_specs(prefix, dims, last_normed, heads=None):
    """(key, heads, shape, fan_in) of each tensor of the reference's `mlp` with layer sizes `dims`."""
    specs = []
    for i in range(len(dims) - 1):
        names = ("weight", "bias") + (("ln.weight", "ln.bias") if i < len(dims) - 2 or last_normed else ())
        for name in names:
            shape = (dims[i + 1], dims[i]) if name == "weight" else (dims[i + 1],)
            specs.append((f"{prefix}.{i}.{name}", heads, shape, dims[i]))
    return specs


def _uniform(rng, n, half_width):
    """n float32 draws from U(-half_width, half_width), in place (the fastest numpy RNG path)."""
    pool = rng.random(n, dtype=np.float32)
    pool -= np.float32(0.5)
    pool *= np.float32(2 * half_width)
    return pool


def _draw(specs, seed):
    """Random float32 tensors for `specs`: weights uniform with variance 1 / fan_in, biases and
    LayerNorm shifts N(0, 0.1^2), LayerNorm scales N(1, 0.1^2). Weights (~500M for the 317M model) are
    views at random offsets into one pre-scaled pool per fan-in, so drawing them costs one pool."""
    rng = np.random.default_rng(seed)
    need: dict[int, int] = {}
    for _, heads, shape, fan_in in specs:
        if len(shape) == 2:
            need[fan_in] = max(need.get(fan_in, 0), (heads or 1) * shape[0] * shape[1])
    pools = {f: _uniform(rng, n + n // 8 + 1024, np.sqrt(3 / f)) for f, n in need.items()}
    out = {}
    for key, heads, shape, fan_in in specs:
        lead = () if heads is None else (heads,)
        if len(shape) == 2:
            n = (heads or 1) * shape[0] * shape[1]
            off = int(rng.integers(0, pools[fan_in].size - n + 1))
            out[key] = pools[fan_in][off:off + n].reshape(lead + shape)
        else:
            mean = 1.0 if key.endswith("ln.weight") else 0.0
            out[key] = (mean + 0.1 * rng.standard_normal(lead + shape)).astype(np.float32)
    return out


def reference_state_dict(obs_dim: int, action_dim: int, enc_dim: int, mlp_dim: int, latent_dim: int,
                         num_enc_layers: int, num_q: int, num_bins: int = 101, action_dims=None,
                         task_dim: int = 0, episodic: bool = False, log_std=(-10.0, 2.0), seed: int = 0) -> dict:
    """Random weights under the names and shapes of the reference's `WorldModel.state_dict()` (the
    torch.compile API: stacked `_Qs.params.<layer>.<name>`, its `_detach_Qs_params` alias and
    `_target_Qs_params`, tensordict metadata, `log_std_*` buffers). `action_dims`: per-task action sizes
    of a multi-task model (`_task_emb.weight`, `_action_masks`), None for single-task."""
    t = task_dim if action_dims is not None else 0
    z, a, m = latent_dim, action_dim, mlp_dim
    sd = {"log_std_min": np.array(log_std[0], np.float32),
          "log_std_dif": np.array(log_std[1] - log_std[0], np.float32)}
    specs = _mlp_specs("_encoder.state", [obs_dim + t] + [enc_dim] * max(num_enc_layers - 1, 1) + [z], True)
    specs += _mlp_specs("_dynamics", [z + a + t, m, m, z], True)
    specs += _mlp_specs("_reward", [z + a + t, m, m, num_bins], False)
    if episodic:
        specs += _mlp_specs("_termination", [z + t, m, m, 1], False)
    specs += _mlp_specs("_pi", [z + t, m, m, 2 * a], False)
    for prefix in ("_Qs.params", "_target_Qs_params"):
        specs += _mlp_specs(prefix, [z + a + t, m, m, num_bins], False, heads=num_q)
    sd.update(_draw(specs, seed))
    for k in [k for k in sd if k.startswith("_Qs.params.")]:
        sd["_detach_Qs_params." + k[len("_Qs.params."):]] = sd[k]
    for prefix in ("_Qs.params", "_detach_Qs_params", "_target_Qs_params"):
        sd[f"{prefix}.__batch_size"], sd[f"{prefix}.__device"] = (num_q,), None
    if action_dims is not None:
        emb = np.random.default_rng(seed + 1).normal(0, 1, (len(action_dims), t))  # norms > 1: renormalised
        sd["_task_emb.weight"] = emb.astype(np.float32)
        sd["_action_masks"] = np.array([[1.0] * d + [0.0] * (a - d) for d in action_dims], np.float32)
    return sd


def state_dict_for(cfg, seed: int = 0, episodic: bool = False) -> dict:
    """`reference_state_dict` with the sizes of one of our WorldModelConfigs (all action dims real)."""
    dims = [cfg.action_size] * cfg.num_tasks if cfg.num_tasks > 1 else None
    return reference_state_dict(cfg.obs_size, cfg.action_size, cfg.enc_dim, cfg.mlp_dim, cfg.latent_dim,
                                cfg.num_enc_layers, cfg.num_q, cfg.num_bins, dims, cfg.task_dim, episodic,
                                (cfg.log_std_min, cfg.log_std_max), seed)


def to_legacy(sd: dict) -> dict:
    """The same weights under the reference's first-release names: numbered stacked Q tensors
    `_Qs.params.<k>` / `_target_Qs.params.<k>` (k = 4 * layer + index in MLP_NAMES), no log-std
    buffers, no action masks, no `_detach_Qs_params`."""
    out = {k: v for k, v in sd.items()
           if not k.startswith(("_Qs.", "_detach_Qs_params.", "_target_Qs_params.", "log_std_", "_action_masks"))}
    for old, new in (("_Qs.params", "_Qs.params"), ("_target_Qs_params", "_target_Qs.params")):
        for layer in range(3):
            for j, name in enumerate(MLP_NAMES):
                if f"{old}.{layer}.{name}" in sd:
                    out[f"{new}.{4 * layer + j}"] = sd[f"{old}.{layer}.{name}"]
    return out


# ---- the reference's layers, float64 ---------------------------------------------------------------
def layer_norm(x, w, b, eps=1e-5):
    """torch.nn.LayerNorm (eps 1e-5)."""
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def mish(x):
    return x * np.tanh(np.log1p(np.exp(x)))


def simnorm(x, g=8):
    y = x.reshape(*x.shape[:-1], -1, g)
    y = np.exp(y - y.max(-1, keepdims=True))
    return (y / y.sum(-1, keepdims=True)).reshape(x.shape)


def np_mlp(sd, prefix, x, n, last="linear", eps=1e-5, head=None):
    """The reference's `mlp`: NormedLinear (Linear, LayerNorm, Mish) layers, then a Linear or (last =
    'simnorm') a NormedLinear with SimNorm. `head` picks one member of a stacked ensemble."""
    pick = (lambda v: np.asarray(v, np.float64)) if head is None else (lambda v: np.asarray(v[head], np.float64))
    for i in range(n):
        x = x @ pick(sd[f"{prefix}.{i}.weight"]).T + pick(sd[f"{prefix}.{i}.bias"])
        if i < n - 1 or last == "simnorm":
            x = layer_norm(x, pick(sd[f"{prefix}.{i}.ln.weight"]), pick(sd[f"{prefix}.{i}.ln.bias"]), eps)
            x = mish(x) if i < n - 1 else simnorm(x)
    return x


def np_task(sd, x, task):
    """[x, e]: the task embedding (nn.Embedding with max_norm=1) appended; x unchanged without a task."""
    if task is None:
        return x
    emb = np.asarray(sd["_task_emb.weight"][task], np.float64)
    norm = np.linalg.norm(emb)
    emb = emb * (1 / (norm + 1e-7) if norm > 1 else 1.0)
    return np.concatenate([x, np.broadcast_to(emb, x.shape[:-1] + emb.shape)], -1)


class ReferenceWorldModel:
    """The reference's `WorldModel` forward pass in float64 over a state dict in its names."""

    def __init__(self, sd: dict):
        self.sd = sd
        self.n_enc = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("_encoder.state.") and
                             k.endswith(".weight") and not k.endswith("ln.weight"))

    def encode(self, obs, task=None):
        return np_mlp(self.sd, "_encoder.state", np_task(self.sd, obs, task), self.n_enc, "simnorm")

    def _za(self, z, a, task):
        return np.concatenate([np_task(self.sd, z, task), a], -1)

    def next(self, z, a, task=None):
        return np_mlp(self.sd, "_dynamics", self._za(z, a, task), 3, "simnorm")

    def reward(self, z, a, task=None):
        return np_mlp(self.sd, "_reward", self._za(z, a, task), 3)

    def termination_logit(self, z, task=None):
        return np_mlp(self.sd, "_termination", np_task(self.sd, z, task), 3)[..., 0]

    def Q(self, z, a, task=None, target=False):
        """Logits of every head, [num_q, ..., bins]."""
        prefix = "_target_Qs_params" if target else "_Qs.params"
        heads = self.sd[f"{prefix}.0.weight"].shape[0]
        return np.stack([np_mlp(self.sd, prefix, self._za(z, a, task), 3, head=h) for h in range(heads)])

    def pi_distribution(self, z, task=None):
        """(mean, log_std) before the tanh, log_std = log_std_min + 0.5 * log_std_dif * (tanh(raw) + 1)."""
        mean, raw = np.split(np_mlp(self.sd, "_pi", np_task(self.sd, z, task), 3), 2, axis=-1)
        low, dif = float(self.sd["log_std_min"]), float(self.sd["log_std_dif"])
        return mean, low + 0.5 * dif * (np.tanh(raw) + 1)
