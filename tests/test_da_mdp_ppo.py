"""DA-MDP:PPO: per-denoising-step ratios of exactly 1 before the first update, soft rewards that telescope
to r + alpha * entropy estimate over an env step, terminations that cut only at the last denoising step
and truncations that bootstrap, the HL-Gauss value head, a chunk through the on-policy loop counting real
env steps, clear errors on bad settings, `--help`, and a small learning check."""
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FixedLengthEnv, laptop_trainer, tiny_online_config, train_and_evaluate
from mbdpo_jax import envs
from mbdpo_jax.agents.da_mdp_ppo import DAMDPPO, DAMDPPOConfig
from mbdpo_jax.envs.diffusion_augmented import entropy_estimate
from mbdpo_jax.models import hl_gauss
from mbdpo_jax.train import host
from mbdpo_jax.train.config import OnlineConfig
from mbdpo_jax.train.on_policy import OnPolicyLoopConfig, OnPolicyTrainer
from mbdpo_jax.train.runner import build_trainer

SMALL = dict(diffusion_steps=4, score_hidden=(16,), value_hidden=(16,), num_bins=51, time_features=4, time_out=4)


def small_trainer(env, num_envs=4, num_steps=8, epochs=1, minibatches=1, **changes):
    agent = DAMDPPO(DAMDPPOConfig(num_steps=num_steps, epochs=epochs, minibatches=minibatches,
                                  **{**SMALL, **changes}), env.spec)
    loop = OnPolicyLoopConfig(num_envs, num_steps, epochs, minibatches, num_envs * num_steps, eval_episodes=2)
    return OnPolicyTrainer(agent, env, loop)


def test_ratios_per_denoising_step_are_exactly_one_on_the_first_minibatch():
    """A chunk of one rollout, one epoch and one minibatch: its only update sees the chains just sampled,
    and the largest |pi_new / pi_old - 1| over all K denoising steps of every env step is exactly 0 (prepare
    recomputes log pi as the loss does, on observations normalised with the acting statistics)."""
    trainer = small_trainer(envs.make("toy/pendulum"))
    carry = trainer.init(jax.random.PRNGKey(0))
    carry, metrics = jax.jit(trainer.train_chunk)(carry)
    assert float(metrics["ratio_deviation_max"]) == 0.0
    assert float(metrics["approx_kl"]) == 0.0 and float(metrics["clip_fraction"]) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_soft_rewards_of_one_env_step_sum_to_the_reward_plus_alpha_times_the_entropy_estimate():
    """Rollouts on toy/pendulum: the K augmented rewards of each env step sum to reward_scale r + alpha *
    entropy_estimate(log pi, log q) of the chain that chose its action (the sampler's own log-probs), the
    intermediate ones are -alpha (log pi - log q) of their own step, and the env reward lands on the last."""
    alpha, scale = 0.1, 2.0
    trainer = small_trainer(envs.make("toy/pendulum"), entropy_coef=alpha, reward_scale=scale)
    carry = trainer.init(jax.random.PRNGKey(0))
    _, traj = trainer.collect(carry.agent, carry.env, jax.random.PRNGKey(1))
    prepared = trainer.agent.prepare(carry.agent, traj)
    soft = np.asarray(prepared["soft_reward"])
    K = trainer.agent.K
    assert soft.shape == traj["reward"].shape + (K,)
    expected = scale * np.asarray(traj["reward"]) + alpha * np.asarray(entropy_estimate(traj["log_pi"], traj["log_q"]))
    np.testing.assert_allclose(soft.sum(-1), expected, rtol=1e-4, atol=1e-4)
    log_ratio = np.asarray(traj["log_pi"] - traj["log_q"])
    np.testing.assert_allclose(soft[..., :-1], -alpha * log_ratio[..., :-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(soft[..., -1] + alpha * log_ratio[..., -1], scale * np.asarray(traj["reward"]),
                               rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(log_ratio) > 0)  # the entropy term is really there


@pytest.mark.parametrize("terminate", [True, False])
def test_termination_cuts_at_the_last_denoising_step_only_and_truncation_bootstraps(terminate):
    """Episodes of 2 env steps, K = 4, lambda = 0, alpha = 0 (rewards are the env's only): at the env step
    that ends an episode, the last denoising step's advantage is r - V(s, x_3, 3) after a termination and
    r + gamma V(final obs, next x_0, 0) - V(s, x_3, 3) after a truncation; its intermediate steps k < 3 are
    not cut (0 + gamma V(s, x_{k+1}, k+1) - V(s, x_k, k)); a mid-episode env step's last denoising step
    bootstraps from (s', the next env step's x_0, 0)."""
    env = FixedLengthEnv(2, terminate)
    trainer = small_trainer(env, num_envs=2, num_steps=5, gae_lambda=0.0, entropy_coef=0.0, normalize_obs=False)
    agent = trainer.agent
    carry = trainer.init(jax.random.PRNGKey(0))
    _, traj = trainer.collect(carry.agent, carry.env, jax.random.PRNGKey(1))
    assert float(traj["done" if terminate else "truncation"][1, 0]) == 1.0
    np.testing.assert_array_equal(np.asarray(traj["next_obs"][1, 0]), [2.0, 1.0])
    prepared = agent.prepare(carry.agent, traj)
    adv, lat = np.asarray(prepared["advantage"]), traj["latents"]
    gamma = agent.cfg.gamma
    V = lambda o, x, k: float(agent.value(carry.agent.value, jnp.asarray(o, jnp.float32), x, jnp.asarray(k)))
    t, n = 1, 0  # the env step that ends the first episode
    s = traj["obs"][t, n]
    bootstrap = 0.0 if terminate else gamma * V([2.0, 1.0], lat[t + 1, n, 0], 0)
    assert adv[t, n, 3] == pytest.approx(1.0 + bootstrap - V(s, lat[t, n, 3], 3), rel=1e-4, abs=1e-4)
    for k in range(3):
        assert adv[t, n, k] == pytest.approx(gamma * V(s, lat[t, n, k + 1], k + 1) - V(s, lat[t, n, k], k),
                                             rel=1e-4, abs=1e-4)
    t = 0  # mid-episode
    assert adv[t, n, 3] == pytest.approx(
        1.0 + gamma * V(traj["next_obs"][t, n], lat[t + 1, n, 0], 0) - V(traj["obs"][t, n], lat[t, n, 3], 3),
        rel=1e-4, abs=1e-4)


def test_hl_gauss_probabilities_expected_value_and_loss():
    """HL-Gauss on 51 bins over [-10, 40]: histograms are non-negative and sum to 1 (also for targets outside
    the range, clipped to its ends); the expected value of a target's own histogram recovers targets inside
    the range (3 sigma from its ends) within 1% of a bin width; the cross-entropy at logits = log histogram
    (floored at 1e-30: far bins get exactly 0) has zero gradient and is lower than at the histogram of any
    other target."""
    log_hist = lambda t: jnp.log(hl_gauss.to_probs(jnp.asarray(t), bins) + 1e-30)
    bins = hl_gauss.HLGauss(51, -10.0, 40.0, 0.75)
    targets = jnp.array([-30.0, -10.0, -3.3, 0.0, 12.345, 25.5, 39.0, 40.0, 100.0])
    probs = hl_gauss.to_probs(targets, bins)
    assert probs.shape == (9, 51) and float(probs.min()) >= 0.0
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, atol=1e-5)
    inside = jnp.linspace(bins.v_min + 3 * bins.sigma, bins.v_max - 3 * bins.sigma, 37)
    recovered = hl_gauss.expected_value(log_hist(inside), bins)
    assert float(jnp.max(jnp.abs(recovered - inside))) < 0.01 * bins.bin_width
    target = jnp.asarray(12.345)
    logits = log_hist(target)
    grad = jax.grad(lambda l: hl_gauss.loss(l, target, bins))(logits)
    assert float(jnp.max(jnp.abs(grad))) < 1e-5
    at_target = float(hl_gauss.loss(logits, target, bins))
    for other in (11.8, 12.0, 12.9, 20.0):
        assert at_target < float(hl_gauss.loss(log_hist(other), target, bins))


def test_a_chunk_through_the_on_policy_loop_counts_real_env_steps_with_finite_metrics():
    """`build_trainer` on a da-mdp-ppo config (toy/pendulum, 4 envs x 8 env steps, 2 epochs x 2 minibatches,
    K = 4): one chunk of 2 rollouts advances env_steps by 64 real env steps (not 64 K augmented ones) and
    updates by 8, and every metric is finite."""
    cfg = tiny_online_config("da-mdp-ppo", num_envs=4, num_steps=8, epochs=2, minibatches=2, eval_every=64,
                             steps=64, **SMALL)
    trainer = build_trainer(cfg)
    assert trainer.cfg.iterations_per_chunk == 2
    carry = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    carry, metrics = jax.jit(trainer.train_chunk)(carry)
    assert int(carry.env_steps) == 64 and int(carry.updates) == 8
    assert int(carry.env.step_count.sum()) == 64
    values = host.floats(metrics)
    assert {"policy_loss", "kernel_loss", "value_loss", "entropy", "approx_kl", "train_episode_return"} <= set(values)
    assert all(np.isfinite(v) for v in values.values()), values
    evaluation = host.floats(jax.jit(trainer.evaluate)(carry.agent, jax.random.PRNGKey(1)))
    assert np.isfinite(evaluation["eval_return"])


def test_bad_settings_are_refused_in_one_line_naming_the_value():
    """Settings out of range fail with one line naming the setting, its value and the allowed range; a
    minibatch count that does not divide the rollout fails in the loop's check."""
    for changes, message in [(dict(diffusion_steps=0), "diffusion-steps must be an integer >= 1, got 0"),
                             (dict(gamma=1.5), "gamma must be in (0, 1], got 1.5"),
                             (dict(gae_lambda=-0.1), "gae-lambda must be in [0, 1], got -0.1"),
                             (dict(entropy_coef=-1.0), "entropy-coef must be >= 0, got -1.0"),
                             (dict(dt_schedule="cosine"), "dt-schedule must be one of linear, constant, got 'cosine'"),
                             (dict(num_bins=1), "num-bins must be an integer >= 2, got 1"),
                             (dict(v_min=5.0, v_max=5.0), "v-min must be < v-max, got 5.0, 5.0"),
                             (dict(score_hidden=()), "score-hidden and value-hidden need positive widths")]:
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            DAMDPPOConfig(**changes).validate()
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="single-task"):
        DAMDPPO(DAMDPPOConfig(**SMALL), envs.make("toy/pendulum").spec, num_tasks=2)
    with pytest.raises(ValueError) as err:
        build_trainer(tiny_online_config("da-mdp-ppo", num_envs=4, num_steps=8, minibatches=3, eval_every=32, **SMALL))
    assert "minibatches=3 must divide the rollout of num_envs x num_steps = 4 x 8 = 32 samples" in str(err.value)
    assert "\n" not in str(err.value)


def test_help_of_da_mdp_ppo_lists_its_settings_with_defaults():
    """`experiments.online da-mdp-ppo --help` names every DA-MDP:PPO and loop setting with its default (the
    paper preset: 2048 envs, K = 8) and no setting of Gaussian PPO."""
    from mbdpo_jax.agents import config_class
    from mbdpo_jax.train.config import LoopOptions, flat_fields

    out = subprocess.run([sys.executable, "-m", "experiments.online", "da-mdp-ppo", "--preset", "paper", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in flat_fields(OnlineConfig(agent=config_class("da-mdp-ppo")(), loop=LoopOptions())):
        assert "--" + name.replace("_", "-") in out.stdout, name
    assert "default: 2048" in out.stdout and "--policy-hidden" not in out.stdout and "--agent." not in out.stdout


@pytest.mark.slow
def test_da_mdp_ppo_learns_to_balance_the_cartpole():
    """dmc/cartpole-balance (laptop preset: action repeat 4, 250-step episodes; K = 4, 16 envs x 32 env steps,
    8 epochs of 8 minibatches), 4 chunks of 40,960 env steps, an evaluation (16 episodes, SDE sampler) before
    and after each. The untrained policy scores below 300 and the best of the last two beats 450. Measured
    (loop seeds 0-2 with PRNGKey(seed); untrained, then after each chunk): 239 / 418 557 824 922;
    235 / 396 485 529 566; 241 / 289 396 513 604 (this test is seed 0). About 105 s on 2 cores, most of
    it compiling."""
    carry, returns = train_and_evaluate(laptop_trainer("da-mdp-ppo", "dmc/cartpole-balance", eval_episodes=16,
                                                       eval_every=40_960), chunks=4)
    assert int(carry.env_steps) == 163_840
    assert returns[0] < 300 and max(returns[-2:]) > 450, returns
