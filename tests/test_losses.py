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


def test_prior_loss_uses_the_scaled_entropy_and_q_with_dropout(monkeypatch):
    """The prior loss's entropy term is TD-MPC2's scaled entropy, -(Gaussian log-prob) * action dims
    (not the squashed log-prob), and its Q heads run with dropout on (the reference's train mode)."""
    model = _model()
    params = model.init(jax.random.PRNGKey(0))
    zs = model.encode(params, jax.random.normal(jax.random.PRNGKey(1), (3, 4, 3)))
    a, aux = model.pi(params, zs, jax.random.PRNGKey(2))
    mean, log_std = model.pi_distribution(params, zs)
    eps = (jnp.arctanh(jnp.clip(a, -0.999999, 0.999999)) - mean) / jnp.exp(log_std)
    gauss = jnp.sum(-0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)
    np.testing.assert_allclose(aux["scaled_entropy"], -2 * gauss, rtol=1e-3, atol=1e-3)
    assert not np.allclose(aux["scaled_entropy"], aux["entropy"])

    seen = {}
    real_q_value = model.q_value

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real_q_value(*args, **kwargs)

    monkeypatch.setattr(model, "q_value", recording)
    coefs = losses.LossCoefficients()
    loss, _ = losses.prior_loss(model, coefs, params["pi"], params, jnp.ones(()), zs, jnp.ones((3, 4)), None,
                                jax.random.PRNGKey(3))
    assert seen.get("dropout_key") is not None and np.isfinite(float(loss))


def test_episodic_model_learns_termination_and_planning_ignores_what_follows_it(monkeypatch):
    """With an episodic world model the loss has a termination BCE, and the trajectory value drops every
    reward and the terminal value after a predicted termination (TD-MPC2's episodic planning)."""
    model = WorldModel(WorldModelConfig.from_preset("tiny", obs_size=3, action_size=2, episodic=True))
    params = model.init(jax.random.PRNGKey(0))
    h, b = 3, 4
    batch = {"obs": jnp.ones((h, b, 3)), "next_obs": jnp.ones((h, b, 3)), "action": jnp.zeros((h, b, 2)),
             "reward": jnp.zeros((h, b)), "done": jnp.zeros((h, b)), "end": jnp.zeros((h, b))}
    _, (metrics, _, _) = losses.world_model_loss(model, losses.LossCoefficients(), params, params["qs"], batch,
                                                 jax.random.PRNGKey(1), 0.99)
    assert np.isfinite(float(metrics["termination_loss"]))

    monkeypatch.setattr(model, "reward_value", lambda p, z, a, task=None: jnp.ones(z.shape[:-1]))
    monkeypatch.setattr(model, "q_value", lambda p, z, a, k, task=None, **kw: 10 * jnp.ones(z.shape[:-1]))
    z = jnp.zeros(model.cfg.latent_dim)
    for logit, expected in [(-5.0, 1 + 1 + 1 + 10), (5.0, 1.0)]:  # never / always predicted to terminate
        monkeypatch.setattr(model, "termination", lambda p, z, task=None, l=logit: jnp.full(z.shape[:-1], l))
        value = imagine.trajectory_value(model, params, z, jnp.zeros((2, h, 2)), jax.random.PRNGKey(2), 1.0)
        np.testing.assert_allclose(value, [expected, expected])
