"""Exact tabular MDPs and the MnM bound (`mbdpo_jax.analysis.tabular`), checked on random MDPs with
several seeds, in float64, without turning float64 on for the rest of the suite."""
import itertools

import jax
import numpy as np
import pytest

from mbdpo_jax.analysis import tabular as T

SEEDS = (0, 1, 2)


def _mdp(seed, num_states=6, num_actions=3, gamma=0.9):
    return T.random_mdp(jax.random.PRNGKey(seed), num_states, num_actions, gamma)


def _random_policy(rng, num_states, num_actions):
    return rng.dirichlet(np.ones(num_actions), num_states)


def _random_model(rng, num_states, num_actions):
    return rng.dirichlet(np.ones(num_states), (num_states, num_actions))


def test_float64_without_flipping_the_global_setting():
    """Results come back in float64 while the process-wide x64 flag stays off."""
    mdp = _mdp(0)
    values = T.policy_values(mdp.transitions, mdp.rewards, np.full((6, 3), 1 / 3), mdp.gamma)
    assert values.dtype == np.float64 and mdp.transitions.dtype == np.float64
    assert not jax.config.jax_enable_x64


def test_gridworld_matches_the_mnm_task():
    """10 x 10, walls at rows 0-5 x columns 4-5 never entered, the intended move has probability
    1 - slip + slip / 4, reward 10 at the goal (0, 9) and 0.001 elsewhere, start (0, 0)."""
    mdp = T.gridworld()
    p = np.asarray(mdp.transitions)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    walls = [r * 10 + c for r in range(6) for c in (4, 5)]
    free = [s for s in range(100) if s not in walls]
    assert p[np.ix_(free, range(4), walls)].max() == 0.0
    assert p[3 * 10 + 2, 1, 3 * 10 + 3] == pytest.approx(0.5 + 0.125)  # right from (3, 2)
    assert p[3 * 10 + 3, 1, 3 * 10 + 3] == pytest.approx(0.5 + 0.125)  # right into the wall: stay
    assert p[0, 0, 0] == pytest.approx(0.5 + 0.125 + 0.125)  # up from (0, 0): border, plus slip left
    assert float(mdp.rewards[9, 2]) == 10.0 and float(mdp.rewards[0, 0]) == 1e-3
    assert float(mdp.initial[0]) == 1.0 and mdp.gamma == 0.9


@pytest.mark.parametrize("kwargs, bad", [(dict(slip=1.5), "slip"), (dict(gamma=1.0), "gamma"),
                                         (dict(size=1), "size"), (dict(start=(0, 4)), "start"),
                                         (dict(step_reward=0.0), "rewards")])
def test_gridworld_rejects_bad_settings(kwargs, bad):
    """A bad setting raises ValueError naming it."""
    with pytest.raises(ValueError, match=bad):
        T.gridworld(**kwargs)


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_values_solve_the_bellman_equation(seed):
    """The exact linear-solve values equal the truncated series sum_t gamma^t P_pi^t r_pi."""
    mdp, rng = _mdp(seed), np.random.default_rng(seed)
    policy = _random_policy(rng, 6, 3)
    values = np.asarray(T.policy_values(mdp.transitions, mdp.rewards, policy, mdp.gamma))
    p_pi = np.einsum("sa,sat->st", policy, mdp.transitions)
    r_pi = (policy * np.asarray(mdp.rewards)).sum(-1)
    series, term = np.zeros(6), r_pi.copy()
    for t in range(600):
        series += mdp.gamma ** t * term
        term = p_pi @ term
    np.testing.assert_allclose(values, series, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_value_iteration_matches_brute_force(seed):
    """Value iteration's V* equals the best of all 3^4 deterministic policies, state by state."""
    mdp = _mdp(seed, num_states=4)
    best = np.full(4, -np.inf)
    for actions in itertools.product(range(3), repeat=4):
        policy = np.eye(3)[list(actions)]
        best = np.maximum(best, np.asarray(T.policy_values(mdp.transitions, mdp.rewards, policy, mdp.gamma)))
    np.testing.assert_allclose(np.asarray(T.value_iteration(mdp)).max(-1), best, rtol=1e-10)


def test_bound_is_tight_for_constant_rewards_and_the_true_model():
    """With r = c everywhere and q = p, log J = log(c / (1 - gamma)) and the bound equals it."""
    mdp = _mdp(0)
    mdp = mdp._replace(rewards=np.full((6, 3), 0.37))
    policy = _random_policy(np.random.default_rng(0), 6, 3)
    expected = np.log(0.37 / (1 - mdp.gamma))
    assert float(T.mnm_bound(mdp, policy, mdp.transitions)) == pytest.approx(expected, rel=1e-12)
    assert float(np.log(T.expected_return(mdp, policy))) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_bound_never_exceeds_the_log_return(seed):
    """L(pi, q) <= log J(pi) for random policies and models, including q = p and q = q*."""
    mdp, rng = _mdp(seed), np.random.default_rng(seed)
    for _ in range(20):
        policy = _random_policy(rng, 6, 3)
        log_return = float(np.log(T.expected_return(mdp, policy)))
        best = T.optimistic_model(mdp.transitions, T.soft_policy_values(mdp, policy))
        for model in (_random_model(rng, 6, 3), mdp.transitions, best):
            assert float(T.mnm_bound(mdp, policy, model)) <= log_return + 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_optimistic_model_maximises_the_bound_for_a_fixed_policy(seed):
    """q* = p exp(W*) / Z attains W* (the soft values) and no perturbed model does better: neither
    random models, nor q* mixed with them, nor the accuracy-optimal q = p; q* shifts mass to
    high-value next states (E_q*[W*] >= E_p[W*] for every (s, a))."""
    mdp, rng = _mdp(seed), np.random.default_rng(seed)
    policy = _random_policy(rng, 6, 3)
    soft = np.asarray(T.soft_policy_values(mdp, policy))
    best = np.asarray(T.optimistic_model(mdp.transitions, soft))
    np.testing.assert_allclose(np.asarray(T.bound_values(mdp, policy, best)), soft, atol=1e-10)
    top = float(T.mnm_bound(mdp, policy, best))
    for weight in (1e-3, 0.05, 0.5, 1.0):
        for _ in range(10):
            model = (1 - weight) * best + weight * _random_model(rng, 6, 3)
            assert float(T.mnm_bound(mdp, policy, model)) < top
    assert float(T.mnm_bound(mdp, policy, mdp.transitions)) < top
    assert (best @ soft >= np.asarray(mdp.transitions) @ soft - 1e-12).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_joint_updates_increase_the_bound_up_to_its_maximum(seed):
    """Every exact joint update (greedy policy, then q*, smoothing 0.5) raises the bound; it never
    passes the maximum found by soft value iteration and reaches it within 1e-6 in 40 updates."""
    mdp = _mdp(seed)
    history = T.joint_optimisation(mdp, iterations=40)
    bound = np.asarray(history["bound"])
    assert (np.diff(bound) > 0).all() or np.abs(np.diff(bound)[np.diff(bound) <= 0]).max() < 1e-12
    assert (np.diff(bound)[:5] > 1e-8).all()
    optimum = float(np.asarray(mdp.initial) @ np.asarray(T.soft_value_iteration(mdp)) - np.log(1 - mdp.gamma))
    assert bound.max() <= optimum + 1e-10
    assert bound[-1] == pytest.approx(optimum, abs=1e-6)
    assert (bound <= np.asarray(history["log_return"]) + 1e-12).all()


def test_joint_optimisation_finds_the_optimal_gridworld_policy():
    """On the MnM gridworld, 30 joint updates increase the bound at every step and end at a policy
    whose true return is the optimal one."""
    mdp = T.gridworld()
    history = T.joint_optimisation(mdp, iterations=30)
    assert (np.diff(np.asarray(history["bound"])) > 0).all()
    optimal = float(T.expected_return(mdp, T.greedy_policy(T.value_iteration(mdp))))
    assert float(np.exp(history["log_return"][-1])) == pytest.approx(optimal, rel=1e-6)


def test_td_sweep_equals_per_transition_updates():
    """The count-based sweep equals the notebook's per-transition np.add.at update on all data."""
    rng = np.random.default_rng(0)
    s, a, s2 = rng.integers(0, 5, 300), rng.integers(0, 2, 300), rng.integers(0, 5, 300)
    table = rng.normal(size=(5, 2))
    q, values = rng.normal(size=(5, 2)), rng.normal(size=5)
    expected = q.copy()
    np.add.at(expected, (s, a), 0.01 * (table[s, a] + 0.9 * values[s2] - q[s, a]))
    counts, sums = np.zeros((5, 2, 5)), np.zeros((5, 2))
    np.add.at(counts, (s, a, s2), 1.0)
    np.add.at(sums, (s, a), table[s, a])
    np.testing.assert_allclose(np.asarray(T.td_sweep(q, counts, sums, values, 0.9, 0.01)), expected, atol=1e-12)


def test_maximum_likelihood_model_counts_and_stays_when_unvisited():
    """The accuracy-only model is the empirical next-state frequency; unvisited pairs stay put."""
    counts = np.zeros((3, 2, 3))
    counts[0, 1] = [1, 3, 0]
    model = np.asarray(T.maximum_likelihood_model(counts))
    np.testing.assert_allclose(model[0, 1], [0.25, 0.75, 0.0])
    np.testing.assert_allclose(model[2, 0], [0.0, 0.0, 1.0])


@pytest.mark.parametrize("method", T.METHODS)
def test_learners_stay_below_the_optimal_return(method):
    """Each learner runs per seed, is reproducible, and the exact return of its greedy policy is
    finite and never above the optimal return."""
    mdp = _mdp(3, num_states=5, num_actions=2)
    optimal = float(T.expected_return(mdp, T.greedy_policy(T.value_iteration(mdp))))
    returns = np.asarray(T.train(mdp, method, [0, 1, 0], iterations=15, rollout_steps=8)["returns"])
    assert returns.shape == (3, 15) and np.isfinite(returns).all()
    assert returns.max() <= optimal + 1e-12
    np.testing.assert_allclose(returns[2], returns[0], rtol=1e-12)
    assert not np.allclose(returns[1], returns[0])


def test_train_rejects_an_unknown_method():
    """An unknown method raises ValueError naming the allowed ones."""
    with pytest.raises(ValueError, match="allowed: q_learning, mnm, vmbpo, accuracy_model"):
        T.train(T.gridworld(), "dyna", [0])


def test_iterations_to_reach():
    """The first iteration at or above the target, None when never reached."""
    assert T.iterations_to_reach([0.1, 0.5, 0.9, 0.95], 0.9) == 2
    assert T.iterations_to_reach([0.1, 0.5], 0.9) is None
