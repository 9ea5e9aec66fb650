"""PPO: GAE against a float64 reference (termination cuts to 0, truncation bootstraps from the kept
final observation), ratios of exactly 1 before the first update, bootstrapping through the loop's own
rollouts, clear errors on bad settings, and a small learning check."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FixedLengthEnv, laptop_trainer, train_and_evaluate
from mbdpo_jax import envs
from mbdpo_jax.agents.ppo import PPO, PPOConfig
from mbdpo_jax.models.actor_critic import gae
from mbdpo_jax.train.on_policy import OnPolicyLoopConfig, OnPolicyTrainer

SMALL = dict(policy_hidden=(16,), value_hidden=(16,))


def gae_reference(rewards, values, next_values, terms, truncs, gamma, lam):
    """Float64 loops over the definition A_t = sum_k (gamma lam)^k delta_{t+k}, the sum stopping after
    the step where the episode ends (or the rollout does)."""
    T, N = rewards.shape
    deltas = rewards + gamma * (1 - terms) * next_values - values
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            for k in range(T - t):
                adv[t, n] += (gamma * lam) ** k * deltas[t + k, n]
                if terms[t + k, n] or truncs[t + k, n]:
                    break
    return adv, adv + values


def test_gae_matches_a_float64_loop_reference_with_terminations_and_truncations():
    """Random rewards and values over 24 steps x 6 envs with terminations and truncations inside the
    rollout (and ends on the same step in different envs): advantages and returns equal the reference
    to float32 precision; a terminated step's advantage ignores the next value, a truncated one's uses it."""
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 24, 6, 0.99, 0.95
    rewards, values, next_values = (rng.standard_normal((T, N)) for _ in range(3))
    ends = rng.random((T, N)) < 0.15
    kind = rng.random((T, N)) < 0.5
    terms, truncs = (ends & kind).astype(np.float64), (ends & ~kind).astype(np.float64)
    assert terms.sum() >= 5 and truncs.sum() >= 5
    adv, ret = gae(*(jnp.asarray(x, jnp.float32) for x in (rewards, values, next_values, terms, truncs)), gamma, lam)
    ref_adv, ref_ret = gae_reference(rewards, values, next_values, terms, truncs, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-5, atol=1e-5)
    t, n = np.argwhere(terms)[0]
    assert adv[t, n] == pytest.approx(rewards[t, n] - values[t, n], abs=1e-5)
    t, n = np.argwhere(truncs)[0]
    assert adv[t, n] == pytest.approx(rewards[t, n] + gamma * next_values[t, n] - values[t, n], abs=1e-5)


def test_gae_takes_per_step_discounts():
    """An array gamma (as for DA-MDP's augmented steps, discounting only at env steps) equals the
    reference with that discount at each step."""
    rng = np.random.default_rng(1)
    T, N, lam = 8, 3, 0.9
    rewards, values, next_values = (rng.standard_normal((T, N)) for _ in range(3))
    zeros = np.zeros((T, N))
    gamma = np.where(np.arange(T)[:, None] % 2 == 0, 1.0, 0.97) * np.ones((T, N))
    adv, _ = gae(*(jnp.asarray(x, jnp.float32) for x in (rewards, values, next_values, zeros, zeros, gamma)), lam)
    expected = np.zeros((T, N))
    acc = np.zeros(N)
    for t in reversed(range(T)):
        acc = rewards[t] + gamma[t] * next_values[t] - values[t] + gamma[t] * lam * acc
        expected[t] = acc
    np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-5, atol=1e-5)


def small_trainer(env, num_envs=4, num_steps=8, epochs=2, minibatches=2, iterations=1, **changes):
    agent = PPO(PPOConfig(num_steps=num_steps, epochs=epochs, minibatches=minibatches, **{**SMALL, **changes}),
                env.spec)
    loop = OnPolicyLoopConfig(num_envs, num_steps, epochs, minibatches, iterations * num_envs * num_steps,
                              eval_episodes=2)
    return OnPolicyTrainer(agent, env, loop)


def test_ratios_are_exactly_one_on_the_first_minibatch():
    """A chunk of one iteration, one epoch and one minibatch: its only update is the first minibatch of
    the rollout just collected, and its largest |ratio - 1| is exactly 0 (the loss sees the observations
    normalised with the statistics they were acted with, and the pre-tanh actions)."""
    trainer = small_trainer(envs.make("toy/pendulum"), epochs=1, minibatches=1)
    carry = trainer.init(jax.random.PRNGKey(0))
    carry, metrics = jax.jit(trainer.train_chunk)(carry)
    assert float(metrics["ratio_deviation_max"]) == 0.0
    assert float(metrics["approx_kl"]) == 0.0 and float(metrics["clip_fraction"]) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("terminate", [True, False])
def test_prepare_cuts_at_termination_and_bootstraps_truncation_from_the_final_observation(terminate):
    """Rollouts of 7 steps through the loop's `collect` in episodes of 3: next_obs keeps the final
    observation [3, 1] where an episode ends while obs restarts at [0, 1]; with lambda = 0 the advantage
    at the end step is r - V(obs) after a termination and r + gamma V(final obs) - V(obs) after a truncation
    (no normalisation, so V is the raw network's)."""
    env = FixedLengthEnv(3, terminate)
    trainer = small_trainer(env, num_envs=2, num_steps=7, minibatches=1, gae_lambda=0.0, reward_scale=1.0,
                            normalize_obs=False)
    carry = trainer.init(jax.random.PRNGKey(0))
    _, traj = trainer.collect(carry.agent, carry.env, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(traj["next_obs"][2:4, 0]), [[3.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(traj["obs"][3, 0]), [0.0, 1.0])
    assert float(traj["done" if terminate else "truncation"][2, 0]) == 1.0
    prepared = trainer.agent.prepare(carry.agent, traj)
    value = lambda o: float(trainer.agent.value(carry.agent.value, jnp.asarray(o)))
    bootstrap = 0.0 if terminate else trainer.agent.cfg.gamma * value([3.0, 1.0])
    assert float(prepared["advantage"][2, 0]) == pytest.approx(1.0 + bootstrap - value([2.0, 1.0]), rel=1e-5)
    assert float(prepared["advantage"][1, 0]) == pytest.approx(
        1.0 + trainer.agent.cfg.gamma * value([2.0, 1.0]) - value([1.0, 1.0]), rel=1e-5)


def test_bad_ppo_settings_are_refused_naming_the_value():
    """Settings out of range fail with one line naming the setting and its value."""
    for changes, message in [(dict(clip_ratio=0.0), "clip-ratio must be > 0, got 0.0"),
                             (dict(gae_lambda=1.5), "gae-lambda in [0, 1], got 0.99, 1.5"),
                             (dict(entropy_coef=-1.0), "entropy-coef must be >= 0, got -1.0"),
                             (dict(policy_hidden=()), "policy-hidden and value-hidden need positive widths")]:
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            PPOConfig(**changes).validate()
        assert "\n" not in str(err.value)
    spec = envs.make("toy/pendulum").spec
    with pytest.raises(ValueError, match="single-task"):
        PPO(PPOConfig(), spec, num_tasks=2)


@pytest.mark.slow
def test_ppo_learns_to_balance_the_cartpole():
    """dmc/cartpole-balance (laptop preset: action repeat 4, 250-step episodes; 32 envs x 64 steps, 8 epochs
    of 8 minibatches), 4 chunks of 20,480 env steps, an evaluation (16 episodes) before and after each.
    The untrained policy scores below 350 and the best of the last two beats 450. Measured (2026-12-03,
    seeds 0-2; untrained, then after each chunk): 268 / 320 343 647 619; 314 / 320 485 544 550; 204 / 301
    299 535 470 (this test is seed 0). About 40-50 s on 2 cores, most of it compiling. The whole laptop
    run (307k env steps) reaches 1000 (README)."""
    carry, returns = train_and_evaluate(laptop_trainer("ppo", "dmc/cartpole-balance", eval_episodes=16), chunks=4)
    assert int(carry.env_steps) == 81_920
    assert returns[0] < 350 and max(returns[-2:]) > 450, returns
