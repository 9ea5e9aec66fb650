"""World model pieces: two-hot, SimNorm, presets, and losses that fall on a fixed batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax.agents.tdmpc2 import TDMPC2, TDMPC2Config
from mbdpo_jax.models.learner import LearnerConfig
from mbdpo_jax.models.losses import discount_from_episode_length
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models.world_model import WorldModel, WorldModelConfig, count_params
from mbdpo_jax.nn.layers import simnorm
from mbdpo_jax.nn.twohot import TwoHot, symexp, symlog
from mbdpo_jax.planners.mppi import MPPIConfig


def test_two_hot_round_trip():
    """Encoding a scalar as two-hot in symlog space and decoding the (log of the) probabilities gives it back."""
    th = TwoHot()
    x = jnp.array([-500.0, -3.2, -0.01, 0.0, 0.7, 12.0, 900.0])
    probs = th.encode(x)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert int((probs > 0).sum(-1).max()) <= 2
    np.testing.assert_allclose(th.decode(jnp.log(probs + 1e-30)), x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(symexp(symlog(x)), x, rtol=1e-5)


def test_two_hot_clips_out_of_range_values():
    """Values beyond symexp(vmax) land on the last bin."""
    th = TwoHot()
    probs = th.encode(jnp.array([1e9, -1e9]))
    assert float(probs[0, -1]) == pytest.approx(1.0)
    assert float(probs[1, 0]) == pytest.approx(1.0)


def test_simnorm_groups_are_distributions():
    """Every group of 8 latent features is non-negative and sums to one."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 64)) * 5
    z = simnorm(x).reshape(4, 8, 8)
    assert bool((z >= 0).all())
    np.testing.assert_allclose(z.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        simnorm(jnp.zeros((3, 10)))


@pytest.mark.parametrize("size,expected", [("1M", 1_198_257), ("5M", 4_932_704)])
def test_preset_parameter_counts_match_tdmpc2(size, expected):
    """Learnable parameters (obs 5, action 1, single task) are within 5% of the TD-MPC2 reference."""
    params = WorldModel(WorldModelConfig.from_preset(size, 5, 1)).init(jax.random.PRNGKey(0))
    assert abs(count_params(params) - expected) / expected < 0.05


@pytest.mark.parametrize("size", ["19M", "48M", "317M"])
def test_large_presets_have_their_nominal_size(size):
    """The large presets (shapes only, nothing allocated) count roughly their nominal number of parameters."""
    wm = WorldModel(WorldModelConfig.from_preset(size, 5, 1))
    shapes = jax.eval_shape(wm.init, jax.random.PRNGKey(0))
    nominal = float(size[:-1]) * 1e6
    assert 0.75 * nominal < count_params(shapes) < 1.3 * nominal


def test_unknown_preset_is_rejected():
    """An unknown model size names the bad value and the allowed ones."""
    with pytest.raises(ValueError, match=r"'7M'.*1M, 5M"):
        WorldModelConfig.from_preset("7M", 5, 1)


def test_multitask_embedding_is_max_norm_one_and_changes_latents():
    """Task ids select different embeddings (norm <= 1) that change the encoding."""
    wm = WorldModel(WorldModelConfig.from_preset("tiny", 5, 2, num_tasks=3))
    params = wm.init(jax.random.PRNGKey(1))
    obs = jnp.ones((2, 5))
    z0 = wm.encode(params, obs, jnp.array([0, 0]))
    z1 = wm.encode(params, obs, jnp.array([1, 1]))
    assert not np.allclose(z0, z1)
    with pytest.raises(ValueError, match="task ids"):
        wm.encode(params, obs)


def test_policy_respects_action_mask():
    """Masked action dimensions are exactly zero (multi-task padding)."""
    wm = WorldModel(WorldModelConfig.from_preset("tiny", 5, 3))
    params = wm.init(jax.random.PRNGKey(0))
    z = wm.encode(params, jnp.ones((4, 5)))
    a, aux = wm.pi(params, z, jax.random.PRNGKey(1), action_mask=jnp.array([1.0, 1.0, 0.0]))
    assert bool((a[:, 2] == 0).all()) and bool((jnp.abs(a[:, :2]) > 0).all())
    assert bool(jnp.isfinite(aux["log_prob"]).all())


def test_discount_heuristic():
    """gamma = clip((T/5-1)/(T/5), 0.95, 0.995): 500-step episodes give 0.99."""
    assert discount_from_episode_length(500) == pytest.approx(0.99)
    assert discount_from_episode_length(10) == pytest.approx(0.95)
    assert discount_from_episode_length(100000) == pytest.approx(0.995)


def _fixed_batch(key, spec, horizon=3, batch=32):
    ks = jax.random.split(key, 4)
    obs = jax.random.normal(ks[0], (horizon + 1, batch, spec.obs_size))
    action = jax.random.uniform(ks[1], (horizon, batch, spec.action_size), minval=-1, maxval=1)
    return {
        "obs": obs[:-1], "next_obs": obs[1:], "action": action, "plan_action": action, "planned": jnp.ones((horizon, batch)),
        "reward": jnp.tanh(obs[:-1, :, 0]) + action[..., 0],
        "done": jnp.zeros((horizon, batch)), "end": jnp.zeros((horizon, batch)),
    }


def test_world_model_losses_fall_on_a_fixed_batch():
    """Repeated updates on one batch drive consistency, reward and value losses down."""
    spec = EnvSpec("test", obs_size=6, action_size=2, episode_length=100)
    cfg = TDMPC2Config(learner=LearnerConfig(model_size="tiny", batch_size=32),
                       planner=MPPIConfig(num_samples=32, num_elites=4, num_pi_trajs=4))
    agent = TDMPC2(cfg, spec)
    state = agent.init(jax.random.PRNGKey(0))
    batch = _fixed_batch(jax.random.PRNGKey(1), spec)
    update = jax.jit(agent.update)
    first = None
    for i in range(150):
        state, metrics = update(state, batch, jax.random.PRNGKey(i))
        first = first or {k: float(v) for k, v in metrics.items()}
    last = {k: float(v) for k, v in metrics.items()}
    for name in ["reward_loss", "value_loss", "total_loss"]:
        assert last[name] < 0.5 * first[name], (name, first[name], last[name])
    assert all(np.isfinite(v) for v in last.values())


def test_sequence_mask_stops_at_episode_boundaries():
    """Loss weights vanish after the first episode end inside a sampled sequence."""
    from mbdpo_jax.models.losses import sequence_mask
    end = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # [H=3, B=3]
    np.testing.assert_array_equal(sequence_mask(end), [[1, 1, 1], [1, 0, 1], [0, 0, 1]])
