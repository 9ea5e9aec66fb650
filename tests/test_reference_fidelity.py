"""Network details pinned to TD-MPC2's reference code: LayerNorm epsilon, weight init, task embeddings."""
import jax
import jax.numpy as jnp
import numpy as np

from reference_tdmpc2 import layer_norm

from mbdpo_jax.models.world_model import WorldModel, WorldModelConfig
from mbdpo_jax.nn.layers import NormedLinear


def test_normed_linear_uses_pytorch_layer_norm_epsilon():
    """LayerNorm eps is 1e-5 (PyTorch's), not flax's 1e-6: on inputs of tiny variance the output
    matches the eps = 1e-5 formula and differs from the 1e-6 one by far more than float error."""
    layer = NormedLinear(4, activation=lambda x: x)
    params = layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    x = 1e-3 * jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    out = np.asarray(layer.apply(params, x), np.float64)
    w, b = (np.asarray(params["params"]["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
    h = np.asarray(x, np.float64) @ w + b

    def reference(eps):
        return layer_norm(h, 1.0, 0.0, eps)

    np.testing.assert_allclose(out, reference(1e-5), rtol=1e-4, atol=1e-5)
    assert np.abs(out - reference(1e-6)).max() > 1e-2


def test_weights_are_normal_with_std_002_and_biases_zero():
    """Hidden weights are N(0, 0.02^2) (the reference's truncation at +-2 absolute never bites), not
    jax's truncated_normal(0.02) whose std is 0.0176; biases start at zero."""
    model = WorldModel(WorldModelConfig.from_preset("5M", obs_size=64, action_size=8))
    params = model.init(jax.random.PRNGKey(0))
    kernel = np.asarray(params["dynamics"]["NormedLinear_0"]["Dense_0"]["kernel"])
    assert abs(kernel.std() - 0.02) < 3e-4 and np.abs(kernel).max() > 0.08  # 4 std: no truncation at 2 std
    assert np.all(np.asarray(params["dynamics"]["NormedLinear_0"]["Dense_0"]["bias"]) == 0)


def test_task_embeddings_start_small_and_sit_between_latent_and_action():
    """Task embeddings start U(-0.02, 0.02) and are renormalised only above norm 1; dynamics, reward
    and Q see [z, e, a] (TD-MPC2's order), the encoder [obs, e]."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=3, action_size=2, num_tasks=3)
    model = WorldModel(cfg)
    params = model.init(jax.random.PRNGKey(0))
    emb = np.asarray(params["task_emb"])
    assert emb.shape == (3, cfg.task_dim) and np.abs(emb).max() <= 0.02 and emb.std() > 0.005
    z, a = jnp.arange(cfg.latent_dim, dtype=jnp.float32), jnp.full(2, -7.0)
    za = np.asarray(model._za(params, z, a, jnp.int32(1)))
    np.testing.assert_array_equal(za[:cfg.latent_dim], z)
    np.testing.assert_allclose(za[cfg.latent_dim:-2], emb[1], rtol=1e-6)  # norm < 1: unchanged
    np.testing.assert_array_equal(za[-2:], a)
    big = {**params, "task_emb": params["task_emb"] * 1000}
    e = np.asarray(model.with_task(big, jnp.zeros(0), jnp.int32(0)))
    np.testing.assert_allclose(np.linalg.norm(e), 1.0, rtol=1e-5)


def test_task_embedding_size_follows_the_reference_presets():
    """Multi-task models use TD-MPC2's task_dim per preset (96 for 1M and 317M, 64 for 5M, 19M and
    48M), so the reference's multi-task checkpoints have the shapes of ours."""
    dims = {size: WorldModelConfig.from_preset(size, 4, 2, num_tasks=2).task_dim for size in ("1M", "5M", "19M",
                                                                                              "48M", "317M")}
    assert dims == {"1M": 96, "5M": 64, "19M": 64, "48M": 64, "317M": 96}
