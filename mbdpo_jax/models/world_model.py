"""TD-MPC2's latent world model as pure functions over a params dict.

Vocabulary follows TD-MPC2 (`encode`, `next`, `reward`, `pi`, `Q`):

    z  = encode(params, obs, task)           # SimNorm latent
    z' = next(params, z, a, task)            # latent dynamics, SimNorm
    r  = reward(params, z, a, task)          # logits over two-hot bins
    a, aux = pi(params, z, key, task)        # tanh-squashed Gaussian prior
    q  = Q(qs_params, z, a, task)            # logits [num_q, ..., bins]

`params` is a plain dict {'encoder', 'dynamics', 'reward', 'pi', 'qs'[, 'task_emb']}; every
function is jit/vmap/grad-safe and has no hidden state.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from mbdpo_jax.nn.layers import MLP, Ensemble, simnorm
from mbdpo_jax.nn.twohot import TwoHot

Params = dict[str, Any]

# enc_dim, mlp_dim, latent_dim, num_enc_layers, num_q  (TD-MPC2 presets; "tiny" is ours, for CPU runs)
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 128, 64, 2, 2),
    "1M": (256, 384, 128, 2, 2),
    "5M": (256, 512, 512, 2, 5),
    "19M": (1024, 1024, 768, 3, 5),
    "48M": (1792, 1792, 768, 4, 5),
    "317M": (4096, 4096, 1376, 5, 8),
}


# Task-embedding size of multi-task models per preset, as TD-MPC2's parser sets it (96 for the 1M and
# 317M models, 64 otherwise), so its multi-task checkpoints load; "tiny" is ours.
TASK_DIMS: dict[str, int] = {"tiny": 96, "1M": 96, "5M": 64, "19M": 64, "48M": 64, "317M": 96}


@dataclasses.dataclass(frozen=True)
class WorldModelConfig:
    """Static sizes of the world model. Build from a preset with `WorldModelConfig.from_preset`."""

    obs_size: int
    action_size: int
    enc_dim: int = 256
    mlp_dim: int = 512
    latent_dim: int = 512
    num_enc_layers: int = 2
    num_q: int = 5
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    simnorm_dim: int = 8
    q_dropout: float = 0.01
    num_tasks: int = 1
    task_dim: int = 96
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    episodic: bool = False  # a termination head for tasks whose episodes end early

    @classmethod
    def from_preset(cls, size: str, obs_size: int, action_size: int, **overrides: Any) -> "WorldModelConfig":
        if size not in PRESETS:
            raise ValueError(f"unknown model size {size!r}; allowed: {', '.join(PRESETS)}")
        enc, mlp, latent, layers, num_q = PRESETS[size]
        sizes = dict(enc_dim=enc, mlp_dim=mlp, latent_dim=latent, num_enc_layers=layers, num_q=num_q,
                     task_dim=TASK_DIMS[size])
        return cls(obs_size=obs_size, action_size=action_size, **{**sizes, **overrides})

    @property
    def multitask(self) -> bool:
        return self.num_tasks > 1

    @property
    def two_hot(self) -> TwoHot:
        return TwoHot(self.num_bins, self.vmin, self.vmax)


class WorldModel:
    """Pure-function world model; the instance holds only static configuration."""

    def __init__(self, cfg: WorldModelConfig, action_masks: Any = None):
        """action_masks: optional [num_tasks, action_size] 0/1 array of each task's real action dims
        (multi-task models zero-pad actions to the largest task)."""
        self.cfg = cfg
        self.action_masks = None if action_masks is None else jnp.asarray(action_masks, jnp.float32)
        act = functools.partial(simnorm, group_size=cfg.simnorm_dim)
        enc_hidden = [cfg.enc_dim] * max(cfg.num_enc_layers - 1, 1)
        two = [cfg.mlp_dim] * 2
        self.encoder_net = MLP(enc_hidden, cfg.latent_dim, out_activation=act)
        self.dynamics_net = MLP(two, cfg.latent_dim, out_activation=act)
        self.reward_net = MLP(two, cfg.num_bins, zero_last=True)
        self.pi_net = MLP(two, 2 * cfg.action_size)
        self.q_net = Ensemble(cfg.num_q, two, cfg.num_bins, dropout=cfg.q_dropout, zero_last=True)
        # Same network restricted to two heads: value estimates use two random Qs, so only those run.
        self.q_pair_net = Ensemble(2, two, cfg.num_bins, dropout=cfg.q_dropout, zero_last=True)
        self.termination_net = MLP(two, 1) if cfg.episodic else None

    # ---- parameters -------------------------------------------------------------------------
    def init(self, key: jax.Array) -> Params:
        """Fresh parameters."""
        cfg = self.cfg
        keys = jax.random.split(key, 6)
        tdim = cfg.task_dim if cfg.multitask else 0
        obs = jnp.zeros((1, cfg.obs_size + tdim))
        za = jnp.zeros((1, cfg.latent_dim + cfg.action_size + tdim))
        z = jnp.zeros((1, cfg.latent_dim + tdim))
        params = {
            "encoder": self.encoder_net.init(keys[0], obs)["params"],
            "dynamics": self.dynamics_net.init(keys[1], za)["params"],
            "reward": self.reward_net.init(keys[2], za)["params"],
            "pi": self.pi_net.init(keys[3], z)["params"],
            "qs": self.q_net.init(keys[4], za)["params"],
        }
        if cfg.episodic:
            params["termination"] = self.termination_net.init(keys[5], z)["params"]
        if cfg.multitask:
            # TD-MPC2: nn.Embedding initialised U(-0.02, 0.02) (its weight init), used with max_norm 1.
            params["task_emb"] = jax.random.uniform(jax.random.fold_in(keys[5], 1), (cfg.num_tasks, cfg.task_dim),
                                                    minval=-0.02, maxval=0.02)
        return params

    # ---- task conditioning ------------------------------------------------------------------
    def _with_task(self, params: Params, x: jax.Array, task: jax.Array | None) -> jax.Array:
        """Concatenate the (max-norm 1) task embedding to x when the model is multi-task: [x, e]."""
        if not self.cfg.multitask:
            return x
        if task is None:
            raise ValueError("a multi-task world model needs task ids")
        emb = params["task_emb"][task]
        emb = emb / jnp.maximum(1.0, jnp.linalg.norm(emb, axis=-1, keepdims=True))
        emb = jnp.broadcast_to(emb, x.shape[:-1] + emb.shape[-1:])
        return jnp.concatenate([x, emb], axis=-1)

    def _za(self, params: Params, z: jax.Array, a: jax.Array, task: jax.Array | None) -> jax.Array:
        """[z, e, a], TD-MPC2's input order for dynamics, reward and Q."""
        return jnp.concatenate([self._with_task(params, z, task), a], -1)

    def with_task(self, params: Params, x: jax.Array, task: jax.Array | None = None) -> jax.Array:
        """x with the task embedding appended ([x, e]; x unchanged for single-task models)."""
        return self._with_task(params, x, task)

    def action_mask(self, task: jax.Array | None) -> jax.Array:
        """The 0/1 mask of real action dimensions for `task` (all ones for single-task models)."""
        if self.action_masks is None or task is None:
            return jnp.ones(self.cfg.action_size)
        return self.action_masks[task]

    # ---- components -------------------------------------------------------------------------
    def encode(self, params: Params, obs: jax.Array, task: jax.Array | None = None) -> jax.Array:
        return self.encoder_net.apply({"params": params["encoder"]}, self._with_task(params, obs, task))

    def next(self, params: Params, z: jax.Array, a: jax.Array, task: jax.Array | None = None) -> jax.Array:
        za = self._za(params, z, a, task)
        return self.dynamics_net.apply({"params": params["dynamics"]}, za)

    def reward(self, params: Params, z: jax.Array, a: jax.Array, task: jax.Array | None = None) -> jax.Array:
        """Reward logits over the two-hot bins."""
        za = self._za(params, z, a, task)
        return self.reward_net.apply({"params": params["reward"]}, za)

    def termination(self, params: Params, z: jax.Array, task: jax.Array | None = None) -> jax.Array:
        """Termination logit at latent z (episodic models; TD-MPC2's `episodic` option)."""
        if self.termination_net is None:
            raise ValueError("this world model has no termination head (WorldModelConfig.episodic=False)")
        return self.termination_net.apply({"params": params["termination"]}, self._with_task(params, z, task))[..., 0]

    def Q(self, params: Params, z: jax.Array, a: jax.Array, task: jax.Array | None = None,
          qs_params: Any = None, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits [num_q, ..., bins]. `qs_params` swaps in e.g. the EMA target ensemble."""
        za = self._za(params, z, a, task)
        variables = {"params": params["qs"] if qs_params is None else qs_params}
        if dropout_key is None:
            return self.q_net.apply(variables, za)
        return self.q_net.apply(variables, za, False, rngs={"dropout": dropout_key})

    def pi_distribution(self, params: Params, z: jax.Array, task: jax.Array | None = None
                        ) -> tuple[jax.Array, jax.Array]:
        """Pre-tanh Gaussian (mean, log_std) of the policy prior, log_std squashed into [min, max]."""
        cfg = self.cfg
        out = self.pi_net.apply({"params": params["pi"]}, self._with_task(params, z, task))
        mean, raw_log_std = jnp.split(out, 2, axis=-1)
        log_std = cfg.log_std_min + 0.5 * (cfg.log_std_max - cfg.log_std_min) * (jnp.tanh(raw_log_std) + 1)
        return mean, log_std

    def pi(self, params: Params, z: jax.Array, key: jax.Array, task: jax.Array | None = None,
           action_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Sample a tanh-squashed Gaussian action; aux has 'mean' (tanh of the mean), 'log_prob', 'entropy'."""
        mean, log_std = self.pi_distribution(params, z, task)
        mask = self._mask_like(mean, task, action_mask)
        eps = jax.random.normal(key, mean.shape)
        action = jnp.tanh(mean + eps * jnp.exp(log_std))
        log_prob = _squashed_log_prob(eps, log_std, action, mask)
        # TD-MPC2's scaled entropy: the Gaussian (pre-squash) log-probability times the number of real
        # action dimensions, the prior loss's entropy term.
        dims = jnp.sum(mask, -1)
        gauss = jnp.sum(mask * (-0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)), -1)
        aux = {"mean": jnp.tanh(mean) * mask, "log_prob": log_prob, "entropy": -log_prob,
               "scaled_entropy": -gauss * dims}
        return action * mask, aux

    def _mask_like(self, mean: jax.Array, task: jax.Array | None, action_mask: jax.Array | None) -> jax.Array:
        """The task's (or the given) action mask, broadcast to `mean` ([A] or per-sample [B, A])."""
        mask = self.action_mask(task) if action_mask is None else action_mask
        return jnp.broadcast_to(mask, mean.shape)

    def pi_log_prob(self, params: Params, z: jax.Array, action: jax.Array, task: jax.Array | None = None,
                    action_mask: jax.Array | None = None) -> jax.Array:
        """log pi(action | z) of given actions in (-1, 1) (clipped slightly inside for atanh)."""
        mean, log_std = self.pi_distribution(params, z, task)
        mask = self._mask_like(mean, task, action_mask)
        action = jnp.clip(action, -0.999, 0.999)
        eps = (jnp.arctanh(action) - mean) / jnp.exp(log_std)
        return _squashed_log_prob(eps, log_std, action, mask)

    # ---- derived quantities -----------------------------------------------------------------
    def q_value(self, params: Params, z: jax.Array, a: jax.Array, key: jax.Array, task: jax.Array | None = None,
                qs_params: Any = None, reduce: str = "avg", dropout_key: jax.Array | None = None) -> jax.Array:
        """Scalar value from two randomly chosen Q heads: their mean ('avg') or minimum ('min').

        dropout_key: run the heads with dropout on (the reference's train mode, as in its prior loss).
        """
        idx = jax.random.choice(key, self.cfg.num_q, (2,), replace=False)
        pair = jax.tree.map(lambda p: p[idx], params["qs"] if qs_params is None else qs_params)
        za = self._za(params, z, a, task)
        if dropout_key is None:
            logits = self.q_pair_net.apply({"params": pair}, za)
        else:
            logits = self.q_pair_net.apply({"params": pair}, za, False, rngs={"dropout": dropout_key})
        values = self.cfg.two_hot.decode(logits)
        return values.mean(0) if reduce == "avg" else values.min(0)

    def reward_value(self, params: Params, z: jax.Array, a: jax.Array, task: jax.Array | None = None) -> jax.Array:
        return self.cfg.two_hot.decode(self.reward(params, z, a, task))


def _squashed_log_prob(eps: jax.Array, log_std: jax.Array, action: jax.Array, mask: jax.Array) -> jax.Array:
    """Log density of tanh(mean + std * eps) at `action`, summed over unmasked dimensions."""
    gauss = jnp.sum(mask * (-0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)), -1)
    return gauss - jnp.sum(mask * jnp.log(jax.nn.relu(1 - action**2) + 1e-6), -1)


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree."""
    return int(sum(x.size for x in jax.tree.leaves(tree)))
