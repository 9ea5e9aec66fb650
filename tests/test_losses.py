"""TD-MPC2's shared losses and pieces (models/losses.py, models/imagine.py) pinned to the reference code."""
import jax
import jax.numpy as jnp
import numpy as np

from mbdpo_jax.models import imagine, losses
from mbdpo_jax.models.world_model import WorldModel, WorldModelConfig


def test_running_q_scale_clamps_the_percentile_range_to_one_before_its_ema():
    """S <- S + tau (max(p95 - p5, 1) - S): a Q range below 1 pulls S towards 1, never below (the
    reference's RunningScale); a wide range is tracked by the EMA."""
    flat = jnp.linspace(0.0, 0.01, 100)  # range 0.0099
    scale = jnp.ones(())
    for _ in range(500):
        scale = losses.updated_q_scale(scale, flat, tau=0.05)
    assert float(scale) == 1.0
    wide = jnp.linspace(0.0, 100.0, 101)  # p95 - p5 = 90
    s = losses.updated_q_scale(jnp.ones(()), wide, tau=0.1)
    np.testing.assert_allclose(float(s), 1.0 + 0.1 * (90.0 - 1.0), rtol=1e-5)


def test_sequence_mask_stops_after_an_episode_boundary():
    """m_t = 1 up to and including the step where an episode ends; 0 afterwards."""
    end = jnp.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(losses.sequence_mask(end), [[1, 1], [1, 0], [0, 0]])


def _model():
    return WorldModel(WorldModelConfig.from_preset("tiny", obs_size=3, action_size=2))


def test_imagination_is_differentiable_through_dynamics_and_reward():
    """The H-step imagination backpropagates to the policy's parameters through d and r_hat; with the
    policy input detached, the gradient still reaches it through the model (PWM's actor loss)."""
    model = _model()
    params = model.init(jax.random.PRNGKey(0))
    # A non-trivial reward head (zero-initialised heads give zero gradients).
    params["reward"] = jax.tree.map(lambda x: x + 0.1, params["reward"])
    z0 = model.encode(params, jnp.ones((4, 3)))

    def ret(w):
        policy = lambda z, k: jnp.tanh(z[..., :2] @ w)
        traj = imagine.imagine(model, params, z0, policy, 5, jax.random.PRNGKey(1))
        assert traj.latents.shape == (6, 4, z0.shape[-1]) and traj.actions.shape == (5, 4, 2)
        return traj.rewards.sum()

    grad = jax.grad(ret)(0.5 * jnp.ones((2, 2)))
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
