"""Tests of mbdpo_jax.envs: registry, wrappers (action repeat, time limit, auto-reset), toy
dynamics, gradients, and a reset/step smoke test of every registered env."""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbdpo_jax.envs as envs
from mbdpo_jax.envs import EnvSpec, EnvState, wrappers
from mbdpo_jax.envs.toy import MultiGoal, Pendulum

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smoke and gradient tests compile MJX programs; these XLA CPU options cut compile time
# 2-3x (results are the same, only the generated code is slower, which tests do not care about).
FAST_COMPILE = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def fast_jit(fn):
    """jax.jit with the fast-compile options above."""
    return jax.jit(fn, compiler_options=FAST_COMPILE)


@functools.cache
def cached_make(name: str, **kwargs) -> envs.Env:
    """Build each env once for the whole module."""
    return envs.make(name, **kwargs)


def rollout(env: envs.Env, state: EnvState, actions: jax.Array) -> EnvState:
    """Scan env.step over a sequence of actions, stacking the states."""
    return jax.lax.scan(lambda s, a: (env.step(s, a),) * 2, state, actions)[1]


# --------------------------------------------------------------------------- registry


def test_names_cover_three_families():
    """names() is sorted, unique, and lists 25 dmc/, the MJX brax/ envs and 6 toy/ envs (3 of them the
    multimodal tasks of envs.multimodal)."""
    all_names = envs.names()
    assert all_names == sorted(set(all_names))
    families = [n.split("/")[0] for n in all_names]
    assert families.count("dmc") == 25
    assert families.count("toy") == 6
    assert families.count("brax") == 10
    assert {"dmc/cheetah-run", "dmc/ball-in-cup", "dmc/swimmer-swimmer6", "dmc/point-mass",
            "dmc/acrobot-swingup-sparse", "brax/ant", "brax/inverted-double-pendulum",
            "toy/pendulum", "toy/point-mass", "toy/multigoal"} <= set(all_names)


def test_dmc_list_matches_playground():
    """The hard-coded dmc task list is playground's ALL_ENVS, kebab-cased like TD-MPC2."""
    from mujoco_playground import registry

    from mbdpo_jax.envs import playground

    assert set(playground.PLAYGROUND_NAMES) == set(registry.dm_control_suite.ALL_ENVS)
    assert playground.kebab_case("CartpoleSwingup") == "cartpole-swingup"
    assert playground.kebab_case("SwimmerSwimmer6") == "swimmer-swimmer6"


def test_import_and_names_are_lazy():
    """Importing mbdpo_jax.envs and calling names() imports neither playground nor brax."""
    code = ("import sys, mbdpo_jax.envs as e; e.names(); "
            "print(sorted(m for m in ('mujoco_playground', 'brax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO}, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_error_message():
    """An unknown name raises UnknownEnvError (a ValueError) with a one-line message naming the
    bad value, the families and at most 3 close matches."""
    with pytest.raises(envs.UnknownEnvError) as info:
        envs.make("dmc/cheetah-runn")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg
    assert "'dmc/cheetah-runn'" in msg
    assert all(f in msg for f in ("dmc/", "brax/", "toy/"))
    assert "'dmc/cheetah-run'" in msg
    assert msg.count("'dmc/") + msg.count("'brax/") + msg.count("'toy/") <= 1 + 3
    with pytest.raises(envs.UnknownEnvError, match="'gym/CartPole-v1'.*names"):
        envs.make("gym/CartPole-v1")


def test_bad_wrapper_arguments():
    """action_repeat and episode_length below 1 are rejected with the bad value named."""
    with pytest.raises(ValueError, match="action_repeat.*0"):
        envs.make("toy/pendulum", action_repeat=0)
    with pytest.raises(ValueError, match="episode_length.*-3"):
        envs.make("toy/pendulum", episode_length=-3)


def test_specs_and_defaults():
    """dmc/ defaults to action repeat 2 and 1000 / 2 = 500 agent steps; overrides apply."""
    spec = cached_make("dmc/cartpole-swingup").spec
    assert (spec.action_repeat, spec.episode_length) == (2, 500)
    assert (spec.obs_size, spec.action_size) == (5, 1)
    spec = envs.make("dmc/cartpole-swingup", action_repeat=4, episode_length=7).spec
    assert (spec.action_repeat, spec.episode_length) == (4, 7)
    assert cached_make("toy/pendulum").spec == EnvSpec("toy/pendulum", 3, 1, 200, 1, True)
    assert cached_make("toy/point-mass").spec.episode_length == 100
    assert cached_make("toy/multigoal").spec.episode_length == 50
    assert cached_make("brax/hopper").spec.episode_length == 1000
    assert cached_make("brax/hopper").spec.differentiable


# --------------------------------------------------------------------------- smoke tests

# Compiling reset + auto-resetting step of one MJX env takes 5-30 s on a 2-core CPU (8 minutes for
# all of them), so by default every env is traced (shapes, structure) and only these are run.
RUN_BY_DEFAULT = ("toy/pendulum", "toy/point-mass", "toy/multigoal", "dmc/cartpole-swingup",
                  "brax/inverted-pendulum", "brax/hopper")
RUN_ALL = os.environ.get("MBDPO_TEST_ALL_ENVS", "") not in ("", "0")


def reset_and_step(env: envs.Env, key: jax.Array) -> tuple[EnvState, EnvState]:
    """Reset 2 envs and step them once with random actions in [-1, 1]."""
    states = envs.reset_batch(env, key, 2)
    actions = jax.random.uniform(key, (2, env.spec.action_size), minval=-1.0, maxval=1.0)
    return states, envs.step_batch(env, states, actions)


@pytest.mark.parametrize("name", envs.names())
def test_every_env_resets_and_steps_batched(name):
    """Every registered env builds and its reset + step of 2 envs under jax.jit(jax.vmap(...))
    has the spec's shapes, float32 observations and one state structure for reset and step.
    Envs in RUN_BY_DEFAULT (all of them with MBDPO_TEST_ALL_ENVS=1) are also compiled and run:
    finite observations and rewards, one step counted, no episode ended, distinct env keys."""
    env = cached_make(name)
    spec = env.spec
    program = fast_jit(functools.partial(reset_and_step, env))
    run = RUN_ALL or name in RUN_BY_DEFAULT
    first, nxt = program(jax.random.PRNGKey(0)) if run else jax.eval_shape(
        program, jax.random.PRNGKey(0))
    assert spec.name == name and spec.action_size > 0
    assert jax.tree.structure(first) == jax.tree.structure(nxt)
    for s in (first, nxt):
        assert s.obs.shape == s.final_obs.shape == (2, spec.obs_size)
        assert s.obs.dtype == jnp.float32
        assert s.reward.shape == s.done.shape == s.truncation.shape == (2,)
    if not run:
        return
    assert np.isfinite(np.asarray(first.obs)).all() and np.isfinite(np.asarray(nxt.obs)).all()
    assert np.isfinite(np.asarray(nxt.reward)).all()
    np.testing.assert_array_equal(nxt.step_count, [1, 1])
    np.testing.assert_array_equal(nxt.truncation, [0, 0])
    np.testing.assert_array_equal(nxt.done, [0, 0])
    np.testing.assert_array_equal(nxt.final_obs, nxt.obs)
    assert not np.array_equal(nxt.key[0], nxt.key[1])


# --------------------------------------------------------------------------- wrappers


def test_auto_reset_keeps_final_observation():
    """At the truncation step final_obs is the finished episode's last obs, obs is a fresh reset
    (with a key split from state.key), truncation=1, done=0, and the episode statistics move to
    last_return/last_length; the next episode then runs normally."""
    horizon = 4
    env = envs.make("toy/pendulum", episode_length=horizon)
    state = env.reset(jax.random.PRNGKey(3))
    actions = jnp.linspace(-1.0, 1.0, 2 * horizon + 1)[:, None]
    traj = jax.jit(rollout, static_argnums=0)(env, state, actions)
    end = horizon - 1
    before = jax.tree.map(lambda x: x[end - 1], traj)
    at_end = jax.tree.map(lambda x: x[end], traj)
    assert float(at_end.truncation) == 1.0 and float(at_end.done) == 0.0
    assert not np.allclose(at_end.final_obs, at_end.obs)
    fresh = env.reset(jax.random.split(before.key)[1])
    np.testing.assert_allclose(at_end.obs, fresh.obs)
    expected_last = Pendulum().step(before, actions[end])
    np.testing.assert_allclose(at_end.final_obs, expected_last.obs, rtol=1e-6)
    assert int(at_end.last_length) == horizon and int(at_end.episodes_done) == 1
    np.testing.assert_allclose(at_end.last_return, traj.reward[:horizon].sum(), rtol=1e-6)
    assert int(at_end.step_count) == 0 and int(at_end.episode_length) == 0
    np.testing.assert_array_equal(traj.truncation, [0, 0, 0, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(traj.episodes_done, [0, 0, 0, 1, 1, 1, 1, 2, 2])
    mid = traj.truncation == 0
    np.testing.assert_array_equal(traj.final_obs[mid], traj.obs[mid])


class Counter:
    """Raw test env: counts steps, reward = 1 + count before the step, terminates at `stop`."""

    def __init__(self, stop: int = 1000):
        self.stop = stop
        self.spec = EnvSpec("test/counter", 1, 1, 1000)

    def reset(self, key: jax.Array) -> EnvState:
        return wrappers.initial_state(jnp.zeros((), jnp.float32), jnp.zeros(1), key)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        count = state.inner + 1.0
        return state.replace(inner=count, obs=count[None], reward=state.inner + 1.0,
                             done=(count >= self.stop).astype(jnp.float32))


def test_action_repeat_sums_rewards():
    """With action repeat k one agent step equals k raw steps: rewards summed, last obs kept."""
    repeat = 3
    env = envs.make("toy/pendulum", action_repeat=repeat)
    raw = Pendulum()
    state = env.reset(jax.random.PRNGKey(0))
    action = jnp.array([0.7])
    out = jax.jit(env.step)(state, action)
    raw_state, total = state, 0.0
    for _ in range(repeat):
        raw_state = raw.step(raw_state, action)
        total += float(raw_state.reward)
    np.testing.assert_allclose(out.reward, total, rtol=1e-5)
    np.testing.assert_allclose(out.obs, raw_state.obs, rtol=1e-5)
    assert env.spec.episode_length == 200 // repeat and env.spec.action_repeat == repeat


def test_action_repeat_stops_at_termination():
    """Repeats after a termination add no reward and leave the state unchanged."""
    env = wrappers.ActionRepeat(Counter(stop=2), repeat=3)
    out = jax.jit(env.step)(env.reset(jax.random.PRNGKey(0)), jnp.zeros(1))
    assert float(out.reward) == 1.0 + 2.0  # rewards of raw steps 1 and 2 only
    assert float(out.inner) == 2.0 and float(out.done) == 1.0


def test_termination_is_not_truncation():
    """A termination on the time-limit step reports done=1, truncation=0; auto-reset follows
    either way and counts the episode."""
    env = wrappers.wrap(Counter(stop=3), episode_length=3)
    traj = jax.jit(rollout, static_argnums=0)(env, env.reset(jax.random.PRNGKey(0)),
                                              jnp.zeros((4, 1)))
    np.testing.assert_array_equal(traj.done, [0, 0, 1, 0])
    np.testing.assert_array_equal(traj.truncation, [0, 0, 0, 0])
    np.testing.assert_array_equal(traj.obs[:, 0], [1, 2, 0, 1])
    np.testing.assert_array_equal(traj.final_obs[:, 0], [1, 2, 3, 1])
    assert int(traj.episodes_done[-1]) == 1 and float(traj.last_return[-1]) == 1 + 2 + 3
    env = wrappers.wrap(Counter(), episode_length=2)
    traj = jax.jit(rollout, static_argnums=0)(env, env.reset(jax.random.PRNGKey(0)),
                                              jnp.zeros((3, 1)))
    np.testing.assert_array_equal(traj.done, [0, 0, 0])
    np.testing.assert_array_equal(traj.truncation, [0, 1, 0])


def test_reset_batch_is_vmappable_scannable():
    """reset_batch/step_batch run inside one jitted lax.scan over 2 batched envs."""
    env = cached_make("toy/point-mass")

    @jax.jit
    def run(key):
        states = envs.reset_batch(env, key, 2)
        step = lambda s, a: (envs.step_batch(env, s, a), s.reward)
        return jax.lax.scan(step, states, jnp.zeros((5, 2, 2)))

    last, rewards = run(jax.random.PRNGKey(1))
    assert rewards.shape == (5, 2) and last.obs.shape == (2, 6)
    np.testing.assert_array_equal(last.step_count, [5, 5])


# --------------------------------------------------------------------------- toy dynamics


def gym_pendulum_step(th: float, thdot: float, a: float) -> tuple[float, float, float]:
    """Reference Pendulum-v1 step written from the gym formulas (numpy, float64)."""
    u = np.clip(2.0 * a, -2.0, 2.0)
    norm = ((th + np.pi) % (2 * np.pi)) - np.pi
    cost = norm**2 + 0.1 * thdot**2 + 0.001 * u**2
    new_thdot = np.clip(thdot + (3 * 10.0 / 2 * np.sin(th) + 3.0 * u) * 0.05, -8.0, 8.0)
    return th + new_thdot * 0.05, new_thdot, -cost


def test_pendulum_matches_gym():
    """toy/pendulum reproduces gym Pendulum-v1 (torque = 2 * action, clipped speed)."""
    env, rng = Pendulum(), np.random.default_rng(0)
    with jax.enable_x64(True):
        for th, thdot, a in rng.uniform([-4, -9, -1.5], [4, 9, 1.5], size=(20, 3)):
            state = env.reset(jax.random.PRNGKey(0)).replace(inner=jnp.array([th, thdot]))
            out = env.step(state, jnp.array([a]))
            new_th, new_thdot, reward = gym_pendulum_step(th, thdot, a)
            np.testing.assert_allclose(out.inner, [new_th, new_thdot], rtol=1e-12)
            np.testing.assert_allclose(out.reward, reward, rtol=1e-12)
            np.testing.assert_allclose(out.obs, [np.cos(new_th), np.sin(new_th), new_thdot])


def test_multigoal_goals_are_equal_modes():
    """toy/multigoal pays the same peak reward (1) at each of the four goals and ~0 at the start."""
    env = MultiGoal()
    for goal in env.goals:
        assert float(env.goal_reward(jnp.array(goal))) == pytest.approx(1.0)
    assert float(env.goal_reward(jnp.zeros(2))) < 1e-6


def test_point_mass_reward_is_distance():
    """toy/point-mass reward is minus the (smoothed) distance to the goal in the observation."""
    env = cached_make("toy/point-mass")
    state = env.step(env.reset(jax.random.PRNGKey(2)), jnp.array([0.3, -0.2]))
    pos, goal = state.obs[:2], state.obs[4:]
    assert float(state.reward) == pytest.approx(-float(jnp.linalg.norm(pos - goal)), abs=1e-3)


# --------------------------------------------------------------------------- gradients


def total_reward(env: envs.Env, state: EnvState, actions: jax.Array) -> jax.Array:
    """Sum of rewards of an action sequence from `state` (through the wrapped env)."""
    return rollout(env, state, actions).reward.sum()


@pytest.mark.parametrize("name", ["toy/pendulum", "toy/point-mass", "toy/multigoal"])
def test_toy_gradients_match_finite_differences(name):
    """In float64, d(sum of rewards over 6 steps)/d(actions) through the wrapped toy env is
    finite and matches central finite differences."""
    env = envs.make(name)
    with jax.enable_x64(True):
        state = env.reset(jax.random.PRNGKey(4))
        actions = jax.random.uniform(jax.random.PRNGKey(5), (6, env.spec.action_size),
                                     jnp.float64, -0.5, 0.5)
        f = jax.jit(functools.partial(total_reward, env, state))
        grad = np.asarray(jax.grad(f)(actions))
        eps, fd = 1e-6, np.zeros_like(grad)
        for idx in np.ndindex(grad.shape):
            e = jnp.zeros_like(actions).at[idx].set(eps)
            fd[idx] = (f(actions + e) - f(actions - e)) / (2 * eps)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["dmc/cartpole-swingup"])
def test_mjx_gradient_matches_finite_differences(name):
    """Through MJX (float32), d(reward of 2 steps)/d(actions) of a dmc task with a 1-iteration solver
    is finite, and its directional derivative matches a central finite difference to a few percent.
    (A brax/ env's MJX gradient is checked in float64 through SHAC's window loss on
    brax/inverted-pendulum, tests/test_shac.py; brax/reacher here cost 1-2 min of compile.)"""
    env = cached_make(name)
    assert env.spec.differentiable
    actions = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (2, env.spec.action_size))
    direction = jax.random.normal(jax.random.PRNGKey(2), actions.shape)
    eps = 1e-2

    def grad_and_fd(a):
        f = functools.partial(total_reward, env, env.reset(jax.random.PRNGKey(0)))
        pair = jax.vmap(f)(jnp.stack([a + eps * direction, a - eps * direction]))
        return jax.grad(f)(a), (pair[0] - pair[1]) / (2 * eps)

    grad, fd = fast_jit(grad_and_fd)(actions)
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=5e-2)


def test_diverged_backend_physics_terminates_the_episode_with_zero_reward():
    """A backend step whose observation or reward is non-finite ends the episode (done = 1) and earns
    0, so a NaN state cannot keep collecting reward (brax's fall tests are False for NaN)."""
    from flax import struct

    from mbdpo_jax.envs.base import EnvSpec
    from mbdpo_jax.envs.wrappers import BackendAdapter

    @struct.dataclass
    class Inner:
        obs: jax.Array
        reward: jax.Array
        done: jax.Array

    class Backend:
        def reset(self, key):
            return Inner(jnp.zeros(2), jnp.zeros(()), jnp.zeros(()))

        def step(self, state, action):  # diverges once the action is positive
            bad = action[0] > 0
            return Inner(jnp.where(bad, jnp.nan, 1.0) * jnp.ones(2), jnp.ones(()), jnp.zeros(()))

    env = BackendAdapter(Backend(), EnvSpec("fake", 2, 1, 10), np.array([[-1.0, 1.0]]))
    state = env.reset(jax.random.PRNGKey(0))
    healthy, diverged = env.step(state, jnp.array([-0.5])), env.step(state, jnp.array([0.5]))
    assert (float(healthy.done), float(healthy.reward)) == (0.0, 1.0)
    assert (float(diverged.done), float(diverged.reward)) == (1.0, 0.0)
