"""The incoherence paper's statements (arXiv 2510.06545), checked exactly on random tree MDPs."""
import jax
import numpy as np
import pytest

from mbdpo_jax.analysis import incoherence as inc

SEEDS = (0, 1, 2, 3)
DYNAMICS = (False, True)  # stochastic?


def random_prior(mdp, seed):
    """A random full-support policy."""
    rng = np.random.default_rng(1000 + seed)
    prior = []
    for r in mdp.log_rewards:
        w = rng.uniform(0.2, 1.0, r.shape)
        prior.append(w / w.sum(-1, keepdims=True))
    return tuple(prior)


def max_gap(p, q):
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(p, q))


def trajectory_prob(mdp, policy, traj_states, traj_actions):
    table = inc.enumerate_trajectories(mdp, policy)
    index = {(tuple(s), tuple(a)): p for s, a, p in zip(table["states"], table["actions"], table["probability"])}
    return np.array([index.get((tuple(s), tuple(a)), 0.0) for s, a in zip(traj_states, traj_actions)])


def mdp_from_lists(log_rewards, transitions):
    with jax.enable_x64(True):
        return inc.LayeredMDP(tuple(jax.numpy.asarray(r, jax.numpy.float64) for r in log_rewards),
                              tuple(jax.numpy.asarray(p, jax.numpy.float64) for p in transitions))


def mountain_race():
    """The paper's Example 1.1: root -> {mountain, forest}; mountain -> {gold (1), skull (0)},
    forest -> {silver (3/4), silver (3/4)}; rewards at the second decision."""
    eye = np.eye(2)[None]
    with np.errstate(divide="ignore"):
        log_rewards = np.log(np.array([[1.0, 0.0], [0.75, 0.75]]))
    return mdp_from_lists([np.zeros((1, 2)), log_rewards], [eye])


@pytest.mark.parametrize("stochastic", DYNAMICS)
@pytest.mark.parametrize("seed", SEEDS)
def test_soft_values_kappa_and_G_match_brute_force_enumeration(stochastic, seed):
    """exp V^pi(s_0) is the success probability, kappa_delta is the KL between exact trajectory
    distributions (Prop. 4.7) and G(pi) is the per-state marginal of the posterior given success."""
    mdp = inc.tree_mdp("T2_A2", stochastic=stochastic, seed=seed)
    prior = random_prior(mdp, seed)
    table = inc.enumerate_trajectories(mdp, prior)
    success = table["probability"] * np.exp(table["log_reward"])
    assert float(inc.success_probability(mdp, prior)) == pytest.approx(success.sum(), rel=1e-12)

    delta = 0.7
    target = trajectory_prob(mdp, inc.boltzmann_policy(mdp, prior, delta), table["states"], table["actions"])
    brute_kl = np.sum(table["probability"] * (np.log(table["probability"]) - np.log(target)))
    assert float(inc.incoherence(mdp, prior, delta)) == pytest.approx(brute_kl, rel=1e-10)

    conditioned = inc.goal_condition(mdp, prior)
    for t in range(mdp.horizon):
        for s in range(mdp.log_rewards[t].shape[0]):
            mass = np.array([success[(table["states"][:, t] == s) & (table["actions"][:, t] == a)].sum()
                             for a in range(mdp.num_actions)])
            np.testing.assert_allclose(np.asarray(conditioned[t][s]), mass / mass.sum(), rtol=1e-10)


@pytest.mark.parametrize("stochastic", DYNAMICS)
@pytest.mark.parametrize("seed", SEEDS)
def test_goal_conditioning_never_lowers_the_return(stochastic, seed):
    """Strong return improvement (Prop. 5.3): J(G(pi)) >= J(pi), for random priors, every step."""
    mdp = inc.tree_mdp("T3_A2", stochastic=stochastic, seed=seed)
    returns = [float(inc.success_probability(mdp, p))
               for p in inc.iterate_goal_conditioning(mdp, random_prior(mdp, seed), 8)]
    assert np.all(np.diff(returns) >= -1e-14), returns
    assert returns[-1] > returns[0]


@pytest.mark.parametrize("stochastic", DYNAMICS)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_goal_conditioning_converges_to_an_optimal_policy(stochastic, seed):
    """From a full-support prior, G-iteration reaches the optimal success probability (Prop. 5.4)."""
    mdp = inc.tree_mdp("T2_A2", stochastic=stochastic, seed=seed)
    best = float(inc.optimal_success_probability(mdp))
    policy = inc.iterate_goal_conditioning(mdp, random_prior(mdp, seed), 400)[-1]
    assert float(inc.success_probability(mdp, policy)) == pytest.approx(best, rel=1e-3)
    assert float(inc.success_probability(mdp, inc.uniform_policy(mdp))) < 0.9 * best


def test_coherent_is_not_optimal_and_conditioning_is_not_coherent():
    """Mountain race (Ex. 1.1): goal conditioning the uniform prior gives 2/5 for the mountain and is
    incoherent; taking the forest (then either silver trail, uniformly) and the chasm after the
    mountain is coherent for every delta (kappa = 0) yet not optimal."""
    mdp = mountain_race()
    conditioned = inc.goal_condition(mdp, inc.uniform_policy(mdp))
    assert float(conditioned[0][0, 0]) == pytest.approx(2 / 5, rel=1e-12)
    assert float(inc.incoherence(mdp, conditioned, 1.0)) > 0.05
    forest = (np.array([[0.0, 1.0]]), np.array([[0.0, 1.0], [0.5, 0.5]]))
    for delta in (0.1, 1.0, 5.0):
        assert float(inc.incoherence(mdp, forest, delta)) == 0.0
    assert float(inc.success_probability(mdp, forest)) == pytest.approx(0.75)
    assert float(inc.optimal_success_probability(mdp)) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_deterministic_G_k_is_the_trajectory_posterior_at_inverse_temperature_k(seed):
    """Deterministic dynamics, any prior p: G^k(p)(tau) = p(tau) exp(k R(tau)) / Z, hence
    G^k(p) = pi_alpha at alpha = k (Thm. 5.7; linear in k)."""
    mdp = inc.tree_mdp("T3_A2", seed=seed)
    prior = random_prior(mdp, seed)
    table = inc.enumerate_trajectories(mdp, prior)
    sequence = inc.iterate_goal_conditioning(mdp, prior, 4)
    for k in (1, 2, 3, 4):
        weights = table["probability"] * np.exp(k * table["log_reward"])
        got = trajectory_prob(mdp, sequence[k], table["states"], table["actions"])
        np.testing.assert_allclose(got, weights / weights.sum(), rtol=1e-9, atol=1e-15)
        assert max_gap(sequence[k], inc.annealed_policy(mdp, prior, float(k))) < 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_deterministic_k_cumulative_folds_equal_2_to_the_k_steps_of_G_and_annealing(seed):
    """Deterministic dynamics, uniform prior: k cumulative folds = pi_alpha at alpha = 2^k =
    G^(2^k) (Thm. 5.7: pi_{alpha(k)} = pi^G_{2^k} = pi^H_k), and k plain folds = G^k."""
    mdp = inc.tree_mdp("T3_A2", seed=seed)
    uniform = inc.uniform_policy(mdp)
    g = inc.iterate_goal_conditioning(mdp, uniform, 8)
    cumulative = inc.cumulatively_folded_policies(mdp, 3)
    for k in range(4):
        assert max_gap(cumulative[k], g[2**k]) < 1e-11
        assert max_gap(cumulative[k], inc.annealed_policy(mdp, uniform, 2.0**k)) < 1e-11
    assert max_gap(g[2], inc.annealed_policy(mdp, uniform, 4.0)) > 1e-3  # not 2^k steps per k
    for k, folded in enumerate(inc.folded_policies(mdp, uniform, 4)):
        assert max_gap(folded, g[k]) < 1e-12


@pytest.mark.parametrize("stochastic", DYNAMICS)
@pytest.mark.parametrize("seed", SEEDS)
def test_folding_equals_goal_conditioning_under_any_dynamics(stochastic, seed):
    """pi^F_k = pi^G_k (Thm. 5.7), stochastic dynamics and non-uniform priors included."""
    mdp = inc.tree_mdp("T3_A2", stochastic=stochastic, seed=seed)
    prior = random_prior(mdp, seed)
    for folded, conditioned in zip(inc.folded_policies(mdp, prior, 5), inc.iterate_goal_conditioning(mdp, prior, 5)):
        assert max_gap(folded, conditioned) < 1e-12


def test_paper_counterexample_goal_conditioning_differs_from_annealing():
    """Example 5.8 (stochastic): a1 reaches s1 w.p. 3/4, a2 w.p. 1/2, r(s1) = log 1/3, r(s2) = log 2/3;
    from a uniform prior G^2 gives pi(a1) = 25/61 but inverse temperature 2 gives 7/17."""
    transitions = [np.array([[[0.75, 0.25], [0.5, 0.5]]])]
    mdp = mdp_from_lists([np.zeros((1, 2)), np.log(np.array([[1 / 3, 1 / 3], [2 / 3, 2 / 3]]))], transitions)
    uniform = inc.uniform_policy(mdp)
    assert float(inc.iterate_goal_conditioning(mdp, uniform, 2)[2][0][0, 0]) == pytest.approx(25 / 61, rel=1e-12)
    assert float(inc.folded_policies(mdp, uniform, 2)[2][0][0, 0]) == pytest.approx(25 / 61, rel=1e-12)
    assert float(inc.annealed_policy(mdp, uniform, 2.0)[0][0, 0]) == pytest.approx(7 / 17, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_stochastic_random_trees_break_annealing_and_cumulative_folding(seed):
    """On random stochastic trees G^k differs from pi_alpha at alpha = k, and cumulative folds differ
    from G^(2^k): only plain folding and G coincide."""
    mdp = inc.tree_mdp("T3_A2", stochastic=True, seed=seed)
    uniform = inc.uniform_policy(mdp)
    g = inc.iterate_goal_conditioning(mdp, uniform, 4)
    assert max_gap(g[1], inc.annealed_policy(mdp, uniform, 1.0)) < 1e-12  # one step is the posterior
    assert max_gap(g[2], inc.annealed_policy(mdp, uniform, 2.0)) > 1e-4
    assert max_gap(inc.cumulatively_folded_policies(mdp, 2)[2], g[4]) > 1e-4


def test_float64_without_flipping_the_global_flag():
    """Results are float64 and the global x64 flag stays off (the rest of the library is float32)."""
    mdp = inc.tree_mdp("T2_A2", seed=0)
    assert inc.incoherence(mdp, inc.uniform_policy(mdp)).dtype == np.float64
    assert inc.goal_condition(mdp, inc.uniform_policy(mdp))[1].dtype == np.float64
    assert not jax.config.jax_enable_x64


def test_random_tree_shapes_and_dynamics():
    """Depth T has T + 1 decision levels of A^t states; every transition row is a distribution over
    the children of its state, one child per action when deterministic."""
    for stochastic in DYNAMICS:
        mdp = inc.tree_mdp("T3_A4", stochastic=stochastic, seed=5)
        assert [r.shape for r in mdp.log_rewards] == [(4**t, 4) for t in range(4)]
        for t, p in enumerate(mdp.transitions):
            p = np.asarray(p)
            np.testing.assert_allclose(p.sum(-1), 1.0)
            children = np.nonzero(p)[2].reshape(4**t, 4, -1)
            assert np.all(children // 4 == np.arange(4**t)[:, None, None])
            assert (children.shape[-1] == 1) != stochastic


def test_bad_input_names_the_value_and_the_allowed_ones():
    """Temperatures <= 0, unknown sizes and unknown misalignment kinds raise ValueError."""
    mdp = inc.tree_mdp("T2_A2")
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        inc.incoherence(mdp, inc.uniform_policy(mdp), 0.0)
    with pytest.raises(ValueError, match="inverse_temperature must be > 0, got -1"):
        inc.annealed_policy(mdp, inc.uniform_policy(mdp), -1.0)
    with pytest.raises(ValueError, match="'T9_A9'.*T2_A2"):
        inc.tree_mdp("T9_A9")
    with pytest.raises(ValueError, match="'regret'.*expected_reward"):
        inc.greedy_misalignment(mdp, "regret")


def test_experiment_writes_results_json(tmp_path):
    """`python -m experiments.incoherence --out DIR` writes results.json with the documented keys,
    a table and the plots (small instance counts here)."""
    import json

    from experiments import incoherence as experiment

    assert experiment.main(["--out", str(tmp_path), "--instances-per-size", "3", "--iteration-instances", "2",
                           "--sizes", "T2_A2", "--iteration-size", "T2_A2"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["correlation_by_temperature"]) == {"0.1", "0.3", "0.5", "0.8", "1.0", "2.0", "4.0", "8.0"}
    assert set(results["kappa_by_iteration"]) == {"deterministic", "stochastic"}
    assert len(results["kappa_by_iteration"]["deterministic"]) == 6
    assert set(results["return_by_iteration"]) == {"deterministic", "stochastic"}
    assert (tmp_path / "table.md").exists() and len(list(tmp_path.glob("*.png"))) == 3
    assert experiment.main(["--out", str(tmp_path / "bad"), "--sizes", "T9_A9"]) == 2
