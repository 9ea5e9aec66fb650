"""SHAC: the window loss differentiates through the true physics (toy and brax MJX), ends of episodes
inside a window bootstrap as they should, non-finite gradients stop or are skipped, and the first-order
loop trains through the same host loop as the others."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax import envs
from mbdpo_jax.agents.shac import SHAC, SHACConfig
from mbdpo_jax.envs.base import EnvSpec, EnvState
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.train import host


def small_shac(spec, window=6, **changes):
    acc = dataclasses.replace(SHACConfig().actor_critic, actor_hidden=(16,), critic_hidden=(16,),
                              critic_iterations=2, critic_minibatches=2)
    return SHAC(SHACConfig(actor_critic=acc, window=window, **changes), spec)


def fd_check(agent, env, num_envs, key=0):
    """(analytic, finite-difference) directional derivative of the window loss, float64."""
    to64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating)
                                     else x, tree)
    state = to64(agent.init(jax.random.PRNGKey(key)))
    env_state = envs.reset_batch(env, jax.random.PRNGKey(key + 1), num_envs)  # float64 when built under x64
    k = jax.random.PRNGKey(key + 2)
    # one compiled program for the gradient and the finite differences' values (compiling MJX twice is slow)
    value_and_grad = jax.jit(jax.value_and_grad(lambda actor: agent.window_loss(actor, state, env, env_state, k)[0]))
    loss = lambda actor: value_and_grad(actor)[0]
    grad = value_and_grad(state.actor)[1]
    leaves, treedef = jax.tree.flatten(state.actor)
    direction = treedef.unflatten([jax.random.normal(jax.random.fold_in(k, i), x.shape, jnp.float64)
                                   for i, x in enumerate(leaves)])
    analytic = float(sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction))))
    eps = 1e-6
    step = lambda sign: jax.tree.map(lambda x, d: x + sign * eps * d, state.actor, direction)
    return analytic, float((loss(step(1)) - loss(step(-1))) / (2 * eps)), grad


def test_window_gradient_through_toy_physics_matches_finite_differences_float64():
    """d L / d theta through 6 steps of toy/pendulum's dynamics and rewards equals a central finite
    difference along a random direction (float64), and is finite."""
    with jax.enable_x64(True):
        env = envs.make("toy/pendulum")
        analytic, fd, grad = fd_check(small_shac(env.spec), env, num_envs=3)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))
    assert abs(analytic) > 1e-8
    assert fd == pytest.approx(analytic, rel=1e-5)


def test_window_gradient_through_brax_mjx_physics_is_finite_and_matches_finite_differences():
    """The same through 3 steps of brax/inverted-pendulum on MJX (float64: the env is built under x64)."""
    with jax.enable_x64(True):
        env = envs.make("brax/inverted-pendulum")
        analytic, fd, grad = fd_check(small_shac(env.spec, window=3), env, num_envs=1)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))
    assert abs(analytic) > 1e-8
    assert fd == pytest.approx(analytic, rel=1e-4)


class CountingEnv:
    """obs = [step in episode]; reward = the action's first entry; the episode ends after `length`
    steps, by termination or by truncation; a NaN reward when `nan` is set."""

    def __init__(self, length=2, terminate=True, nan=False):
        self.length, self.terminate, self.nan = length, terminate, nan
        self.spec = EnvSpec("test/counting", 1, 1, length, differentiable=True, terminates=terminate)

    def reset(self, key):
        z = jnp.zeros(())
        return EnvState(None, jnp.zeros(1), z, z, z, jnp.zeros(1), jnp.zeros((), jnp.int32), z, z, z, z,
                        jnp.zeros((), jnp.int32), key)

    def step(self, s, a):
        count = s.obs[0] + 1
        ended = count >= self.length
        reward = a[0] * (jnp.nan if self.nan else 1.0)
        flag = ended.astype(jnp.float32)
        return s.replace(obs=jnp.where(ended, 0.0, count)[None], final_obs=count[None], reward=reward,
                         done=flag if self.terminate else 0.0 * flag, truncation=0.0 * flag if self.terminate else flag)


@pytest.mark.parametrize("terminate", [True, False])
def test_termination_bootstraps_zero_and_truncation_the_final_observations_value(terminate):
    """Window of 5 steps, episodes of 2: return = r0 + g r1 + [g^2 V(final) if truncated] + r2 + g r3
    + [g^2 V(final) if truncated] + r4 + g V(s5); the critic is a constant c so V is known."""
    env = CountingEnv(length=2, terminate=terminate)
    agent = small_shac(env.spec, window=5, normalize_obs=False)
    state = agent.init(jax.random.PRNGKey(0))
    c, g = 3.0, agent.cfg.gamma
    # all weights zero and the head's bias c (the head: 'Dense_0' outside the NormedLinear layers, or the
    # last Dense of a 'linear-elu-norm' MLP)
    head = "Dense_0" if agent.cfg.actor_critic.layers == "linear-norm-mish" else \
        f"Dense_{len(agent.cfg.actor_critic.critic_hidden)}"
    constant = jax.tree.map(jnp.zeros_like, state.critic)
    constant = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, c) if f"'{head}'" in jax.tree_util.keystr(p) and "bias" in
        jax.tree_util.keystr(p) and "NormedLinear" not in jax.tree_util.keystr(p) else x, constant)
    state = state.replace(target_critic=constant)
    env_state = envs.reset_batch(env, jax.random.PRNGKey(1), 1)
    loss, (_, window) = agent.window_loss(state.actor, state, env, env_state, jax.random.PRNGKey(2))
    r = np.asarray(window.rewards[:, 0])
    end_value = 0.0 if terminate else g * g * c
    expected = r[0] + g * r[1] + end_value + r[2] + g * r[3] + end_value + r[4] + g * c
    np.testing.assert_allclose(np.asarray(window.next_values[[1, 3], 0]), [0.0, 0.0] if terminate else [c, c],
                               rtol=1e-6)
    assert float(loss) == pytest.approx(-expected / 5, rel=1e-5)


def test_nonfinite_gradients_are_skipped_and_counted_or_stop_the_run_naming_the_step():
    """on_nonfinite='skip' leaves the actor unchanged and counts the skip; 'raise' reports a non-finite
    gradient norm, which the host loop turns into an error naming the step."""
    env = CountingEnv(length=3, nan=True)
    env_state = envs.reset_batch(env, jax.random.PRNGKey(1), 2)
    skipping = small_shac(env.spec, window=4, on_nonfinite="skip")
    state = skipping.init(jax.random.PRNGKey(0))
    new, _, metrics = skipping.update(state, env, env_state, jax.random.PRNGKey(2))
    assert float(metrics["nonfinite_skips"]) == 1.0
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.actor), jax.tree.leaves(state.actor)))
    raising = small_shac(env.spec, window=4)
    _, _, metrics = raising.update(raising.init(jax.random.PRNGKey(0)), env, env_state, jax.random.PRNGKey(2))
    with pytest.raises(host.NonFiniteLossError, match="non-finite .*actor_grad_norm.* at env step 640"):
        host.check_finite(host.floats(metrics), 640)


def test_shac_refuses_a_non_differentiable_env_and_bad_settings():
    """A spec without gradients and unknown choices are refused with the allowed values named."""
    spec = dataclasses.replace(envs.make("toy/pendulum").spec, differentiable=False)
    with pytest.raises(ValueError, match="not differentiable"):
        SHAC(SHACConfig(), spec)
    with pytest.raises(ValueError, match="on-nonfinite must be one of raise, skip"):
        SHACConfig(on_nonfinite="ignore").validate()


def test_shac_trains_online_through_the_host_loop_and_resumes(tmp_path, tiny_config):
    """`experiments.online shac` on toy/pendulum: whole windows per chunk, metrics rows at each
    evaluation, and a rerun of the finished run resumes without training again."""
    from mbdpo_jax.train.runner import run_online

    cfg = tiny_config("shac", steps=256, eval_every=128, num_envs=4, window=16, actor_hidden=(16,),
                      critic_hidden=(16,), critic_iterations=2, run_dir=str(tmp_path / "run"))
    run_dir = run_online(cfg)
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [0, 128, 256]
    assert run_online(cfg) == run_dir
    assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == len(rows)
    with pytest.raises(ValueError, match="multiple of num_envs x window"):
        run_online(tiny_config("shac", steps=256, eval_every=100, num_envs=4, window=16,
                               run_dir=str(tmp_path / "bad")))
