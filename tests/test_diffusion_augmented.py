"""The diffusion-augmented MDP (mbdpo_jax.envs.diffusion_augmented).

Pinned down:
- on toy/pendulum with K augmented steps per env step, the real env advances exactly once every K
  augmented steps, with clip(tanh(x_K), +-0.999) as its action (checked against stepping the env by
  hand), and is untouched in between; intermediate steps give reward 0 and done = truncation = 0,
  their observation is (s, x_{t+1}, one_hot(t + 1)); the last step carries the env reward, draws a
  fresh x_0 ~ N(0, sigma_0^2) and resets t to 0; `inner.env_steps` counts real env steps;
- truncation and termination of the real env appear on the last augmented step only, with the
  auto-reset convention: obs holds the new episode's state, final_obs the finished one's;
- a diffusion policy driving the augmented env through `split_obs` works under jit and vmap;
- soft rewards: -alpha (log pi - log q) at intermediate steps, env reward plus the step's own soft
  term at the last one, so an env step's K soft rewards telescope to r + alpha * entropy_estimate,
  entropy_estimate = -sum(log pi - log q); the log-ratio carries no gradient;
- bad settings raise one-line ValueErrors naming them.
"""
import dataclasses

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from mbdpo_jax.envs import make
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.envs.diffusion_augmented import DiffusionAugmented, entropy_estimate, soft_rewards
from mbdpo_jax.envs.wrappers import initial_state, wrap
from mbdpo_jax.policies import DiffusionPolicy, DiffusionPolicyConfig

K = 3


def rollout(env: DiffusionAugmented, state, actions):
    """Scan `env.step` over actions [T, A]; returns the stacked states after each step (numpy leaves)."""
    def body(s, a):
        nxt = env.step(s, a)
        return nxt, nxt
    return jax.tree.map(np.asarray, jax.jit(lambda s, a: jax.lax.scan(body, s, a)[1])(state, actions))


def test_env_advances_once_every_k_steps():
    base = make("toy/pendulum")
    env = DiffusionAugmented(base, steps=K, sigma_0=3.0)
    assert env.spec.obs_size == 3 + 1 + K and env.spec.action_size == 1
    assert env.spec.episode_length == 200 * K
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    s0, x0, t0 = env.split_obs(state.obs)
    np.testing.assert_array_equal(s0, state.inner.env.obs)
    np.testing.assert_array_equal(x0, state.inner.x)
    assert int(t0) == 0
    actions = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (4 * K, 1))
    traj = rollout(env, state, actions)
    env_step = jax.jit(base.step)
    real = state.inner.env
    for i in range(4 * K):
        at = jax.tree.map(lambda leaf: leaf[i], traj)
        s, x, t = env.split_obs(at.obs)
        if (i + 1) % K:
            np.testing.assert_array_equal(at.inner.env.inner, real.inner)
            np.testing.assert_array_equal(x, actions[i])
            assert int(t) == (i + 1) % K and int(at.inner.t) == int(t)
            assert float(at.reward) == 0.0 and float(at.done) == 0.0 and float(at.truncation) == 0.0
        else:
            real = env_step(real, jnp.clip(jnp.tanh(actions[i]), -0.999, 0.999))
            np.testing.assert_allclose(at.inner.env.inner, real.inner, rtol=1e-6)
            np.testing.assert_allclose(at.reward, real.reward, rtol=1e-6)
            assert int(t) == 0 and not np.allclose(x, actions[i])
        np.testing.assert_allclose(s, real.obs, rtol=1e-6)
        assert int(at.inner.env_steps) == (i + 1) // K == int(at.step_count)
    # a fresh x_0 ~ N(0, sigma_0^2): over many resets
    x0s = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(2), 4000)).inner.x
    np.testing.assert_allclose(jnp.std(x0s), 3.0, rtol=0.05)


def test_env_carries_truncation_with_final_observation():
    base = make("toy/pendulum", episode_length=2)
    env = DiffusionAugmented(base, steps=K)
    state = jax.jit(env.reset)(jax.random.PRNGKey(3))
    actions = jnp.full((2 * K, 1), 0.5)
    traj = rollout(env, state, actions)
    trunc = np.asarray(traj.truncation)
    np.testing.assert_array_equal(trunc, np.eye(2 * K)[-1])
    assert np.all(np.asarray(traj.done) == 0)
    real, env_step = state.inner.env, jax.jit(base.step)
    for _ in range(2):
        real = env_step(real, jnp.clip(jnp.tanh(actions[0]), -0.999, 0.999))
    last = jax.tree.map(lambda leaf: leaf[-1], traj)
    s_final, x_final, t_final = env.split_obs(last.final_obs)
    s_new, x_new, _ = env.split_obs(last.obs)
    np.testing.assert_allclose(s_final, real.final_obs, rtol=1e-6)
    np.testing.assert_allclose(s_new, real.obs, rtol=1e-6)
    assert not np.allclose(s_new, s_final)
    np.testing.assert_array_equal(x_final, x_new)
    assert int(t_final) == 0 and int(last.step_count) == 0 and int(last.episodes_done) == 1
    np.testing.assert_allclose(last.last_return, np.sum(traj.reward), rtol=1e-6)
    assert int(last.inner.env_steps) == 2


class Countdown:
    """Raw env that terminates on its 2nd step; obs = [steps taken], reward 1 per step."""

    spec = EnvSpec("test/countdown", obs_size=1, action_size=1, episode_length=10, terminates=True)

    def reset(self, key):
        keep, _ = jax.random.split(key)
        return initial_state(jnp.zeros(()), jnp.zeros(1), keep)

    def step(self, state, action):
        n = state.inner + 1
        return state.replace(inner=n, obs=n[None], reward=jnp.ones(()),
                             done=(n >= 2).astype(state.done.dtype))


def test_env_carries_termination():
    env = DiffusionAugmented(wrap(Countdown()), steps=K)
    traj = rollout(env, jax.jit(env.reset)(jax.random.PRNGKey(0)), jnp.zeros((3 * K, 1)))
    np.testing.assert_array_equal(traj.done, np.eye(3 * K)[2 * K - 1])
    np.testing.assert_array_equal(traj.truncation, 0.0)
    np.testing.assert_array_equal(traj.reward, np.tile(np.eye(K)[-1], 3))
    s_final = env.split_obs(traj.final_obs[2 * K - 1])[0]
    s_new = env.split_obs(traj.obs[2 * K - 1])[0]
    assert float(s_final[0]) == 2.0 and float(s_new[0]) == 0.0
    np.testing.assert_array_equal(traj.inner.env_steps[K - 1::K], [1, 2, 3])


def test_diffusion_policy_drives_the_augmented_env_under_vmap():
    base = make("toy/pendulum")
    env = DiffusionAugmented(base, steps=K)
    pol = DiffusionPolicy(DiffusionPolicyConfig(steps=K, hidden=(8,), time_features=4, time_out=4,
                                                last_layer_scale=1.0), 3, 1)
    params = jax.jit(pol.init)(jax.random.PRNGKey(0))

    def act_and_step(state, key):
        s, x, t = env.split_obs(state.obs)
        mean = pol.step_mean(params, s, x, t)
        x_next = mean + jnp.sqrt(2 * pol.eta(params, t)) * jax.random.normal(key, x.shape)
        log_pi = pol.step_log_prob(params, s, x, x_next, t)
        log_q = pol.backward_log_prob(params, x, x_next, t)
        nxt = env.step(state, x_next)
        return nxt, (nxt.reward, log_pi, log_q, t + 1 == K, x_next)

    def run(key):
        state = env.reset(key)
        return jax.lax.scan(act_and_step, state, jax.random.split(key, 2 * K))

    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    final, (reward, log_pi, log_q, is_last, _) = jax.jit(jax.vmap(run))(keys)
    assert reward.shape == (4, 2 * K) and np.all(np.asarray(final.inner.env_steps) == 2)
    np.testing.assert_array_equal(is_last[0], np.tile(np.eye(K)[-1] > 0, 2))
    np.testing.assert_array_equal(np.asarray(reward)[:, ~np.asarray(is_last[0])], 0.0)
    assert np.all(np.asarray(reward)[:, np.asarray(is_last[0])] < 0)  # pendulum costs
    assert np.all(np.isfinite(np.asarray(log_pi))) and np.all(np.isfinite(np.asarray(log_q)))
    soft = soft_rewards(reward, log_pi, log_q, is_last, 0.1)
    per_env_step = soft.reshape(4, 2, K).sum(-1)
    want = (reward.reshape(4, 2, K).sum(-1)
            + 0.1 * entropy_estimate(log_pi.reshape(4, 2, K), log_q.reshape(4, 2, K)))
    np.testing.assert_allclose(per_env_step, want, rtol=1e-5, atol=1e-5)


def test_soft_rewards_telescope_to_the_entropy_estimate():
    pol = DiffusionPolicy(DiffusionPolicyConfig(steps=4, hidden=(8,), time_features=4, time_out=4,
                                                last_layer_scale=1.0), 2, 2)
    params = jax.jit(pol.init)(jax.random.PRNGKey(0))
    chain = jax.jit(pol.sample_chain)(params, jnp.ones(2), jax.random.PRNGKey(1))
    is_last = jnp.arange(4) == 3
    env_reward = jnp.where(is_last, 2.5, 0.0)
    alpha = 0.3
    soft = soft_rewards(env_reward, chain.log_pi, chain.log_q, is_last, alpha)
    np.testing.assert_allclose(soft[:3], -alpha * (chain.log_pi - chain.log_q)[:3], rtol=1e-6)
    np.testing.assert_allclose(soft[3], 2.5 - alpha * (chain.log_pi - chain.log_q)[3], rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(soft), 2.5 + alpha * entropy_estimate(chain.log_pi, chain.log_q),
                               rtol=1e-6)
    np.testing.assert_allclose(entropy_estimate(chain.log_pi, chain.log_q),
                               -jnp.sum(chain.log_pi) + jnp.sum(chain.log_q), rtol=1e-6)
    # an env reward at an intermediate step is masked; the log-ratio is data (no gradient)
    masked = soft_rewards(jnp.ones(4), chain.log_pi, chain.log_q, is_last, alpha)
    np.testing.assert_allclose(masked[:3], soft[:3])
    grad = jax.grad(lambda lp: jnp.sum(soft_rewards(env_reward, lp, chain.log_q, is_last, alpha)))(chain.log_pi)
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("kwargs, name", [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"),
                                          ({"sigma_0": 0.0}, "sigma_0"), ({"sigma_0": -1.0}, "sigma_0")])
def test_bad_settings_raise_clear_errors(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}=") as info:
        DiffusionAugmented(make("toy/pendulum"), **kwargs)
    assert "allowed" in str(info.value) and "\n" not in str(info.value)


def test_spec_keeps_the_env_facts():
    env = DiffusionAugmented(make("toy/point-mass"), steps=4)
    base = make("toy/point-mass").spec
    assert dataclasses.replace(env.spec, name=base.name, obs_size=base.obs_size,
                               episode_length=base.episode_length) == base
    assert env.spec.name == "toy/point-mass+da4" and env.spec.obs_size == 6 + 2 + 4
