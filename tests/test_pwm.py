"""PWM and the first-order actor-critic pieces: TD(lambda) targets, first-order gradients through the
world model, the actor's parameterisation and the config's checks."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax import envs
from mbdpo_jax.agents.pwm import PWM, PWMConfig
from mbdpo_jax.models import actor_critic as ac


def shac_td_lambda(rewards, next_values, ends, gamma, lam):
    """SHAC's own recursion (Xu et al., 2022, code): float64 numpy, backwards with the end forced at T-1."""
    T, B = rewards.shape
    lam_acc, A, Bv = np.ones(B), np.zeros(B), np.zeros(B)
    out = np.zeros((T, B))
    for i in reversed(range(T)):
        d = np.ones(B) if i == T - 1 else ends[i]
        lam_acc = lam_acc * lam * (1 - d) + d
        A = (1 - d) * (lam * gamma * A + gamma * next_values[i] + (1 - lam_acc) / (1 - lam) * rewards[i])
        Bv = gamma * (next_values[i] * d + Bv * (1 - d)) + rewards[i]
        out[i] = (1 - lam) * A + lam_acc * Bv
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_td_lambda_targets_match_shac_recursion_with_ends_inside_the_window(seed):
    """Our one-line backward recursion equals SHAC's two-accumulator form, terminations inside included."""
    rng = np.random.default_rng(seed)
    T, B = 16, 5
    rewards, values = rng.normal(size=(T, B)), rng.normal(size=(T, B))
    ends = (rng.random((T, B)) < 0.15).astype(np.float64)
    values = values * (1 - ends * (rng.random((T, B)) < 0.5))  # some ends terminate (V = 0), some truncate
    with jax.enable_x64(True):
        ours = ac.td_lambda_targets(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(ends), 0.99, 0.95)
        assert ours.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(ours), shac_td_lambda(rewards, values, ends, 0.99, 0.95), atol=1e-10)


def test_td_lambda_zero_lambda_is_one_step_and_ends_bootstrap_once():
    """lambda = 0 gives r + gamma V'; at an end the target is r + gamma V' whatever follows."""
    r = jnp.array([[1.0], [2.0], [3.0]])
    v = jnp.array([[10.0], [20.0], [30.0]])
    one_step = ac.td_lambda_targets(r, v, jnp.zeros((3, 1)), 0.5, 0.0)
    np.testing.assert_allclose(one_step[:, 0], [6.0, 12.0, 18.0])
    ended = ac.td_lambda_targets(r, v, jnp.array([[1.0], [0.0], [0.0]]), 0.5, 0.9)
    assert float(ended[0, 0]) == pytest.approx(6.0)


def test_running_mean_std_matches_numpy_over_batches():
    """Merging batch moments gives the mean and variance of everything seen."""
    rng = np.random.default_rng(0)
    data = [rng.normal(3.0, 2.0, size=n) for n in (7, 30, 1, 12)]
    rms = ac.RunningMeanStd.create()
    for x in data:
        rms = rms.update(jnp.asarray(x, jnp.float32))
    allx = np.concatenate(data)
    assert float(rms.mean) == pytest.approx(allx.mean(), rel=1e-3)
    assert float(rms.var) == pytest.approx(allx.var(), rel=1e-3)


def small_pwm(**ac_changes):
    spec = envs.make("toy/pendulum").spec
    cfg = PWMConfig()
    cfg = dataclasses.replace(
        cfg, learner=dataclasses.replace(cfg.learner, model_size="tiny", batch_size=8, horizon=4),
        actor_critic=dataclasses.replace(cfg.actor_critic, actor_hidden=(16, 8), critic_hidden=(16,),
                                         critic_iterations=2, critic_minibatches=2, **ac_changes))
    return PWM(cfg, spec)


def directional_fd(loss, params, direction, eps=1e-6):
    plus = jax.tree.map(lambda x, d: x + eps * d, params, direction)
    minus = jax.tree.map(lambda x, d: x - eps * d, params, direction)
    return float((loss(plus) - loss(minus)) / (2 * eps))


def test_actor_gradient_through_the_model_matches_finite_differences_float64():
    """jax.grad of PWM's actor loss equals a central finite difference (float64, random direction) of the
    same loss written out by hand: H steps through the model's dynamics and reward, the min of the
    critics at z_H, the actor fed the rollout's latents as constants (PWM detaches the actor's input).
    The finite difference of the loss *without* that detachment differs, so the detachment is real."""
    agent = small_pwm()
    with jax.enable_x64(True):
        to64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
        state = to64(agent.init(jax.random.PRNGKey(0)))
        critics = jax.tree.map(lambda x: x + 0.05, state.critics)  # a non-trivial terminal value
        params = state.learner.params
        z0 = agent.model.encode(params, jax.random.normal(jax.random.PRNGKey(1), (8, agent.spec.obs_size)))
        key, gamma, H = jax.random.PRNGKey(2), agent.learner.discount, agent.horizon
        # A normaliser that has seen ~1e12 returns: one batch no longer moves it, so the loss is a fixed
        # function of the actor (the normaliser itself is updated with detached returns by design).
        settled = ac.RunningMeanStd(jnp.zeros(()), jnp.full((), 4.0), jnp.full((), 1e12))

        def by_hand(actor, actor_inputs=None):
            z, ret, keys = z0, 0.0, jax.random.split(key, H)
            for t in range(H):
                mean, log_std = agent.actor.apply({"params": actor}, z if actor_inputs is None else actor_inputs[t])
                a = ac.sample_action(mean, log_std, keys[t])
                ret = ret + gamma ** t * agent.model.reward_value(params, z, a)
                z = agent.model.next(params, z, a)
            ret = ret + gamma ** H * jnp.min(agent.critics.apply({"params": critics}, z), axis=0)
            return -jnp.mean(ret / settled.std) / H

        ours = jax.jit(lambda actor: agent._actor_loss(actor, critics, settled, params, z0, key, None)[0])
        fixed_inputs = agent._actor_loss(state.actor, critics, settled, params, z0, key, None)[1][0].latents
        grad = jax.jit(jax.grad(ours))(state.actor)
        by_hand = jax.jit(by_hand)  # the same function, compiled once instead of dispatched op by op
        leaves, treedef = jax.tree.flatten(state.actor)
        direction = treedef.unflatten([jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(4), i), x.shape,
                                                         jnp.float64) for i, x in enumerate(leaves)])
        analytic = float(sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction))))
        assert float(ours(state.actor)) == pytest.approx(float(by_hand(state.actor)), rel=1e-12)
        assert abs(analytic) > 1e-6
        assert directional_fd(lambda a: by_hand(a, fixed_inputs), state.actor, direction) == pytest.approx(
            analytic, rel=1e-6)
        undetached = directional_fd(by_hand, state.actor, direction)
        assert abs(undetached - analytic) > 1e-3 * abs(analytic)


def test_actor_log_std_starts_at_minus_one_and_is_clamped_below():
    """PWM's state-independent log-std: initialised at -1, never below -1.427 (whatever the parameter)."""
    agent = small_pwm()
    state = agent.init(jax.random.PRNGKey(0))
    z = jnp.zeros((agent.model.cfg.latent_dim,))
    _, log_std = agent.actor.apply({"params": state.actor}, z)
    np.testing.assert_allclose(log_std, -1.0)
    low = {**state.actor, "log_std": jnp.full_like(state.actor["log_std"], -5.0)}
    _, clamped = agent.actor.apply({"params": low}, z)
    np.testing.assert_allclose(clamped, -1.427)


def test_act_is_in_bounds_and_deterministic_in_eval_mode():
    """Actions are tanh-squashed into [-1, 1]; eval mode returns tanh of the mean (no noise)."""
    agent = small_pwm()
    state = agent.init(jax.random.PRNGKey(0))
    obs = jnp.ones((agent.spec.obs_size,)) * 3.0
    carry = agent.initial_act_carry()
    a1, _, _ = agent.act(state, obs, carry, jax.random.PRNGKey(1), True)
    a2, _, _ = agent.act(state, obs, carry, jax.random.PRNGKey(2), True)
    noisy, _, _ = agent.act(state, obs, carry, jax.random.PRNGKey(3), False)
    np.testing.assert_array_equal(a1, a2)
    assert jnp.all(jnp.abs(noisy) <= 1.0) and not jnp.allclose(noisy, a1)


def test_update_runs_under_jit_and_moves_actor_and_critics():
    """One PWM update (world model + actor + critics) is finite and changes the actor and critics."""
    agent = small_pwm()
    state = agent.init(jax.random.PRNGKey(0))
    H, B, O, A = agent.horizon, agent.batch_size, agent.spec.obs_size, agent.spec.action_size
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    batch = dict(obs=jax.random.normal(k[0], (H, B, O)), next_obs=jax.random.normal(k[1], (H, B, O)),
                 action=jnp.tanh(jax.random.normal(k[2], (H, B, A))), reward=jnp.ones((H, B)),
                 done=jnp.zeros((H, B)), end=jnp.zeros((H, B)))
    new, metrics = jax.jit(agent.update)(state, batch, jax.random.PRNGKey(6))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    moved = lambda a, b: any(not jnp.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(new.actor, state.actor) and moved(new.critics, state.critics)
    assert float(metrics["nonfinite_actor_grads"]) == 0.0


def test_config_rejects_bad_values_naming_them():
    """Bad settings fail at construction with the flag name and the value."""
    with pytest.raises(ValueError, match="td-lambda"):
        ac.ActorCriticConfig(td_lambda=1.0).validate()
    with pytest.raises(ValueError, match="critic-minibatches"):
        PWMConfig(actor_critic=ac.ActorCriticConfig(critic_minibatches=7)).validate()


def test_multi_task_actions_keep_padded_dimensions_at_zero():
    """In a multi-task model a task's padded action dimensions are 0, both in the env (act) and in the
    imagined rollouts the actor is trained through, as they are in that task's data."""
    spec = envs.make("toy/point-mass").spec  # 2 action dimensions; task 0 uses only the first
    cfg = PWMConfig()
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, model_size="tiny", batch_size=8, horizon=3),
                              actor_critic=dataclasses.replace(cfg.actor_critic, actor_hidden=(16,),
                                                               critic_hidden=(16,)))
    agent = PWM(cfg, spec, num_tasks=2, action_masks=jnp.array([[1.0, 0.0], [1.0, 1.0]]))
    state = agent.init(jax.random.PRNGKey(0))
    obs = jnp.ones((spec.obs_size,))
    for eval_mode in (True, False):
        a0, _, _ = agent.act(state, obs, agent.initial_act_carry(), jax.random.PRNGKey(1), eval_mode, jnp.int32(0))
        a1, _, _ = agent.act(state, obs, agent.initial_act_carry(), jax.random.PRNGKey(1), eval_mode, jnp.int32(1))
        assert float(a0[1]) == 0.0 and float(a1[1]) != 0.0 and float(a0[0]) != 0.0
    z0 = agent.model.encode(state.learner.params, jnp.ones((8, spec.obs_size)), jnp.zeros((8,), jnp.int32))
    _, (traj, _) = agent._actor_loss(state.actor, state.critics, state.returns, state.learner.params, z0,
                                     jax.random.PRNGKey(2), jnp.zeros((8,), jnp.int32))
    assert traj.actions.shape == (3, 8, 2)
    np.testing.assert_array_equal(traj.actions[..., 1], 0.0)
    assert bool(jnp.all(traj.actions[..., 0] != 0.0))
