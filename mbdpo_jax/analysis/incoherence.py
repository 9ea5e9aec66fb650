"""Exact incoherence of goal-conditioned policies on finite-horizon tabular MDPs, in float64.

After Karwowski & Douglas, "Incoherence in goal-conditioned autoregressive models" (arXiv
2510.06545; "the paper" below). Control as inference: a (non-positive) reward is a log-probability,
r(s, a) = log p(O_t = 1 | s, a), here the success probability of a Bernoulli reward, and success of
a trajectory means that every one of its rewards is 1.

Every public function enters `jax.enable_x64(True)` itself, so the arrays it returns are float64
while the global precision flag (and the float32 of the rest of the library) is left alone; arrays
returned here stay float64, but arithmetic on them outside such a context is float32.

The MDPs are layered: every state belongs to one time step t = 0..H-1, time 0 holds the single
initial state, `transitions[t]` maps level t to level t+1 and the episode ends after level H-1.
A policy is a tuple of per-level arrays [n_t, A] whose rows sum to one.

Exact forms of the paper's correspondences (Theorem "optimisation pressure, thrice", Sec. 5.1),
checked in tests/test_incoherence.py; with `G` the goal-conditioning operator, `pi_alpha` the
annealed posterior of a prior p at inverse temperature alpha and R(tau) the summed log reward:

- any dynamics, any prior: the k-th policy of the folded sequence (prior folded in, Def. 5.5 with a
  uniform base measure) is G^k(p);
- deterministic dynamics, any prior: G^k(p)(tau) is proportional to p(tau) exp(k R(tau)) over whole
  trajectories, so G^k(p) = pi_alpha at alpha = k (linear in k, not 2^k);
- deterministic dynamics, uniform prior: after k *cumulative* folds (Def. 5.6, r_{j+1} = r_j +
  log posterior_j) the posterior is pi_alpha at alpha = 2^k, i.e. G^(2^k)(uniform); this is the
  paper's pi_{alpha(k)} = pi^G_{2^k} = pi^H_k;
- stochastic dynamics: only the non-cumulative folds and G coincide; G^k differs from pi_alpha at
  alpha = k (the paper's Example 5.8: 25/61 against 7/17).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

Policy = tuple[jax.Array, ...]
F = TypeVar("F", bound=Callable)

# The paper's random-MDP sizes (Sec. 6, "Effective horizon"): name -> (depth T, actions A).
TREE_SIZES: dict[str, tuple[int, int]] = {
    "T2_A2": (2, 2), "T3_A2": (3, 2), "T4_A2": (4, 2), "T4_A3": (4, 3),
    "T5_A2": (5, 2), "T6_A2": (6, 2), "T3_A4": (3, 4),
}
MISALIGNMENT_KINDS = ("expected_reward", "success_probability")


class LayeredMDP(NamedTuple):
    """A finite-horizon MDP grouped by time step (the paper's Sec. 3 MDP with gamma = 1).

    log_rewards[t]: [n_t, A], r(s, a) = log P(reward 1 | s, a) <= 0 (may be -inf).
    transitions[t]: [n_t, A, n_{t+1}] for t < H - 1; level 0 is the single initial state.
    """

    log_rewards: tuple[jax.Array, ...]
    transitions: tuple[jax.Array, ...]

    @property
    def horizon(self) -> int:
        return len(self.log_rewards)

    @property
    def num_actions(self) -> int:
        return int(self.log_rewards[0].shape[-1])


def _visited_sum(visits: Sequence[jax.Array], per_state: Sequence[jax.Array]) -> jax.Array:
    """sum_t sum_s d_t(s) x_t(s), where unvisited states add 0 even if x is inf there."""
    return sum(jnp.sum(jnp.where(d > 0, d * x, 0.0)) for d, x in zip(visits, per_state))


def _float64(fn: F) -> F:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def _require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _as_policy(policy: Sequence) -> Policy:
    return tuple(jnp.asarray(p, jnp.float64) for p in policy)


def _as_mdp(mdp: LayeredMDP) -> LayeredMDP:
    return LayeredMDP(_as_policy(mdp.log_rewards), _as_policy(mdp.transitions))


# ----------------------------------------------------------------------------------- MDPs
@_float64
def random_tree_mdp(depth: int, num_actions: int, *, stochastic: bool = False, seed: int = 0) -> LayeredMDP:
    """The paper's random tree MDP (Sec. 6): decision states at depths 0..`depth` (depth + 1
    decisions, as the paper's code), `num_actions` actions, each child reachable from one parent.

    Each (s, a) has a Bernoulli reward with success probability drawn from U(0, 1]. Deterministic:
    action a in state s leads to child a of s. Stochastic: action a leads to a random distribution
    over the children of s, weights drawn from U(0, 1] and normalised (the paper's construction);
    the tree stays a tree (a state's parent is unique) but the action taken is not recoverable.
    """
    if depth < 0 or num_actions < 1:
        raise ValueError(f"depth must be >= 0 and num_actions >= 1, got depth={depth!r}, num_actions={num_actions!r}")
    rng = np.random.default_rng(seed)
    a = num_actions
    log_rewards, transitions = [], []
    for t in range(depth + 1):
        n = a**t
        log_rewards.append(jnp.asarray(np.log(1.0 - rng.random((n, a))), jnp.float64))
        if t == depth:
            break
        if stochastic:
            weights = 1.0 - rng.random((n, a, a))
            weights /= weights.sum(axis=-1, keepdims=True)
        else:
            weights = np.broadcast_to(np.eye(a), (n, a, a))
        table = np.zeros((n, a, n * a))
        parents = np.arange(n)[:, None, None]
        table[parents, np.arange(a)[None, :, None], parents * a + np.arange(a)[None, None, :]] = weights
        transitions.append(jnp.asarray(table, jnp.float64))
    return LayeredMDP(tuple(log_rewards), tuple(transitions))


def tree_mdp(size: str, *, stochastic: bool = False, seed: int = 0) -> LayeredMDP:
    """`random_tree_mdp` for one of the paper's sizes `TREE_SIZES` ("T4_A2": depth 4, 2 actions)."""
    if size not in TREE_SIZES:
        raise ValueError(f"unknown tree size {size!r}; allowed: {', '.join(TREE_SIZES)}")
    depth, num_actions = TREE_SIZES[size]
    return random_tree_mdp(depth, num_actions, stochastic=stochastic, seed=seed)


@_float64
def uniform_policy(mdp: LayeredMDP) -> Policy:
    """The uniform prior over actions in every state."""
    return _uniform_policy(_as_mdp(mdp))


@jax.jit
def _uniform_policy(mdp: LayeredMDP) -> Policy:
    return tuple(jnp.full(r.shape, 1.0 / r.shape[-1], jnp.float64) for r in mdp.log_rewards)


@_float64
def scale_rewards(mdp: LayeredMDP, inverse_temperature: float) -> LayeredMDP:
    """The same MDP with p(O = 1 | s, a) = exp(alpha r(s, a)) (the paper's Def. 5.4)."""
    _require_positive("inverse_temperature", inverse_temperature)
    return _scale_rewards(_as_mdp(mdp), jnp.float64(inverse_temperature))


@jax.jit
def _scale_rewards(mdp: LayeredMDP, inverse_temperature: jax.Array) -> LayeredMDP:
    return mdp._replace(log_rewards=tuple(inverse_temperature * r for r in mdp.log_rewards))


@_float64
def fold_into_reward(mdp: LayeredMDP, policy: Sequence) -> LayeredMDP:
    """The MDP with reward r(s, a) + log policy(a|s): the policy folded into the reward (Sec. 5)."""
    return _fold_into_reward(_as_mdp(mdp), _as_policy(policy))


@jax.jit
def _fold_into_reward(mdp: LayeredMDP, policy: Policy) -> LayeredMDP:
    return mdp._replace(log_rewards=tuple(r + jnp.log(p) for r, p in zip(mdp.log_rewards, policy)))


# ---------------------------------------------------------------------------- soft values
def _log_expected_next(transition: jax.Array, v_next: jax.Array) -> jax.Array:
    """log E_{s' ~ T(s, a)} exp V(s'), [n_t, A]."""
    return logsumexp(jnp.broadcast_to(v_next, transition.shape), b=transition, axis=-1)


@jax.jit
def _soft_values(mdp: LayeredMDP, policy: Policy):
    qs, vs = [None] * mdp.horizon, [None] * mdp.horizon
    for t in reversed(range(mdp.horizon)):
        q = mdp.log_rewards[t]
        if t < mdp.horizon - 1:
            q = q + _log_expected_next(mdp.transitions[t], vs[t + 1])
        qs[t], vs[t] = q, logsumexp(q, b=policy[t], axis=-1)
    return tuple(qs), tuple(vs)


@_float64
def soft_values(mdp: LayeredMDP, policy: Sequence) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Policy-dependent soft values (the paper's Def. 4.1): per level (Q [n_t, A], V [n_t]) with

        Q^pi(s, a) = r(s, a) + log E_{s'}[exp V^pi(s')],   V^pi(s) = log E_{a ~ pi}[exp Q^pi(s, a)],

    so Q^pi(s, a) = log P_pi(success | s, a) and V^pi(s) = log P_pi(success | s) (Prop. 4.2).
    """
    return _soft_values(_as_mdp(mdp), _as_policy(policy))


@_float64
def success_probability(mdp: LayeredMDP, policy: Sequence) -> jax.Array:
    """J(pi) = P_pi(every reward is 1) = exp V^pi(s_0), exact."""
    return _success_probability(_as_mdp(mdp), _as_policy(policy))


@jax.jit
def _success_probability(mdp: LayeredMDP, policy: Policy) -> jax.Array:
    return jnp.exp(_soft_values(mdp, policy)[1][0][0])


@jax.jit
def _optimal_values(mdp: LayeredMDP):
    qs, vs = [None] * mdp.horizon, [None] * mdp.horizon
    for t in reversed(range(mdp.horizon)):
        q = mdp.log_rewards[t]
        if t < mdp.horizon - 1:
            q = q + _log_expected_next(mdp.transitions[t], vs[t + 1])
        qs[t], vs[t] = q, q.max(axis=-1)
    return tuple(qs), tuple(vs)


@_float64
def optimal_values(mdp: LayeredMDP) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Q* and V* of the success probability (max-product dynamic programming), per level, in logs."""
    return _optimal_values(_as_mdp(mdp))


@_float64
def optimal_success_probability(mdp: LayeredMDP) -> jax.Array:
    """max_pi J(pi)."""
    return _optimal_success_probability(_as_mdp(mdp))


@jax.jit
def _optimal_success_probability(mdp: LayeredMDP) -> jax.Array:
    return jnp.exp(_optimal_values(mdp)[1][0][0])


@jax.jit
def _state_visitation(mdp: LayeredMDP, policy: Policy):
    visits = [jnp.ones((1,), jnp.float64)]
    for t, transition in enumerate(mdp.transitions):
        visits.append(jnp.einsum("s,sa,sap->p", visits[t], policy[t], transition))
    return tuple(visits)


@_float64
def state_visitation(mdp: LayeredMDP, policy: Sequence) -> tuple[jax.Array, ...]:
    """d_t^pi(s) = P_pi(S_t = s) per level (each level sums to one)."""
    return _state_visitation(_as_mdp(mdp), _as_policy(policy))


# ------------------------------------------------------------------------------ incoherence
def _kl_rows(p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p(.|s) || q(.|s)) per state; 0 log 0 = 0, inf where q = 0 < p."""
    terms = jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - log_q), 0.0)
    return terms.sum(axis=-1)


@_float64
def boltzmann_policy(mdp: LayeredMDP, policy: Sequence, temperature: float = 1.0) -> Policy:
    """pi^delta(a|s) proportional to exp(Q^pi(s, a) / delta), with pi's own soft Q (Def. 4.8)."""
    _require_positive("temperature", temperature)
    return _boltzmann_policy(_as_mdp(mdp), _as_policy(policy), jnp.float64(temperature))


@jax.jit
def _boltzmann_policy(mdp: LayeredMDP, policy: Policy, temperature: jax.Array) -> Policy:
    return tuple(jax.nn.softmax(q / temperature, axis=-1) for q in _soft_values(mdp, policy)[0])


@_float64
def causal_kl(mdp: LayeredMDP, p: Sequence, q: Sequence) -> jax.Array:
    """KL(P_p(tau) || P_q(tau)) over exact trajectory distributions, as
    sum_t E_{s ~ d_t^p} KL(p(.|s) || q(.|s)) (Prop. 4.7)."""
    p, q = _as_policy(p), _as_policy(q)
    return _causal_kl(_as_mdp(mdp), p, tuple(jnp.log(qt) for qt in q))


@jax.jit
def _causal_kl(mdp: LayeredMDP, p: Policy, log_q: Policy) -> jax.Array:
    visits = _state_visitation(mdp, p)
    return _visited_sum(visits, [_kl_rows(pt, lq) for pt, lq in zip(p, log_q)])


@_float64
def incoherence(mdp: LayeredMDP, policy: Sequence, temperature: float = 1.0) -> jax.Array:
    """Boltzmann incoherence kappa_delta(pi) = KL(P_pi(tau) || P_{pi^delta}(tau)) (Def. 4.10):

        sum_t E_{s ~ d_t^pi} KL(pi(.|s) || softmax(Q^pi(s, .) / delta)).

    kappa = 0 means coherent, which is not optimal (a deterministic policy that never visits the
    states where it would err is coherent for every delta).
    """
    _require_positive("temperature", temperature)
    return _incoherence(_as_mdp(mdp), _as_policy(policy), jnp.float64(temperature))


@jax.jit
def _incoherence(mdp: LayeredMDP, policy: Policy, temperature: jax.Array) -> jax.Array:
    qs, _ = _soft_values(mdp, policy)
    log_boltzmann = [jax.nn.log_softmax(q / temperature, axis=-1) for q in qs]
    return _causal_kl(mdp, policy, tuple(log_boltzmann))


# ------------------------------------------------------------------ goal conditioning & co.
@_float64
def goal_condition(mdp: LayeredMDP, policy: Sequence) -> Policy:
    """The control-as-inference operator G (Def. 5.2): G(pi)(a|s) = p_pi(a | s, O_{t:T} = 1)

        = pi(a|s) exp(Q^pi(s, a) - V^pi(s)),

    the per-state action marginals of pi's trajectory posterior given success, i.e. re-training
    pi on its own successful roll-outs. States from which success is impossible (V = -inf) keep pi.
    """
    return _goal_condition(_as_mdp(mdp), _as_policy(policy))


@jax.jit
def _goal_condition(mdp: LayeredMDP, policy: Policy) -> Policy:
    qs, vs = _soft_values(mdp, policy)
    conditioned = []
    for p, q, v in zip(policy, qs, vs):
        finite = jnp.isfinite(v)[:, None]
        posterior = p * jnp.exp(q - jnp.where(finite, v[:, None], 0.0))
        conditioned.append(jnp.where(finite, posterior, p))
    return tuple(conditioned)


@_float64
def iterate_goal_conditioning(mdp: LayeredMDP, policy: Sequence, steps: int) -> list[Policy]:
    """[pi, G(pi), ..., G^steps(pi)]: the re-training sequence pi^G_k (Def. 5.2)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    mdp, sequence = _as_mdp(mdp), [_as_policy(policy)]
    for _ in range(steps):
        sequence.append(_goal_condition(mdp, sequence[-1]))
    return sequence


@_float64
def annealed_policy(mdp: LayeredMDP, prior: Sequence, inverse_temperature: float) -> Policy:
    """pi_alpha(a|s) = p(a | s, O^alpha_{t:T} = 1) with p(O^alpha_t = 1 | s, a) = exp(alpha r(s, a))
    (RL with temperature, Def. 5.4): one goal conditioning of the prior under the scaled reward."""
    _require_positive("inverse_temperature", inverse_temperature)
    return _goal_condition(_scale_rewards(_as_mdp(mdp), jnp.float64(inverse_temperature)), _as_policy(prior))


@_float64
def folded_policies(mdp: LayeredMDP, prior: Sequence, folds: int) -> list[Policy]:
    """The folded sequence (Def. 5.5) with the prior folded into the reward as well: pi_0 = prior,
    r_k = r + log pi_k, pi_{k+1} = the uniform-prior posterior p_u(a | s, O^(k)_{t:T} = 1).

    Folding the policy into a reward under a uniform base measure is Levine's trick for priors
    (Sec. 5); with it pi_k = G^k(prior) under any dynamics and any prior (Theorem 5.7).
    """
    if folds < 0:
        raise ValueError(f"folds must be >= 0, got {folds!r}")
    mdp, sequence = _as_mdp(mdp), [_as_policy(prior)]
    for _ in range(folds):
        sequence.append(_fold_and_condition(mdp, sequence[-1])[1])
    return sequence


@jax.jit
def _fold_and_condition(mdp: LayeredMDP, policy: Policy) -> tuple[LayeredMDP, Policy]:
    """(mdp with policy folded into its reward, that MDP's uniform-prior posterior)."""
    folded = _fold_into_reward(mdp, policy)
    return folded, _goal_condition(folded, _uniform_policy(mdp))


@_float64
def cumulatively_folded_policies(mdp: LayeredMDP, folds: int) -> list[Policy]:
    """The cumulative folded sequence (Def. 5.6) from a uniform prior: element k is the posterior
    p_u(a | s, O^(k)_{t:T} = 1) under r_k, with r_0 = r and r_{k+1} = r_k + log (element k).

    Under deterministic dynamics element k equals `annealed_policy` at alpha = 2^k and
    G^(2^k)(uniform); under stochastic dynamics it does not.
    """
    if folds < 0:
        raise ValueError(f"folds must be >= 0, got {folds!r}")
    mdp = _as_mdp(mdp)
    sequence = [_goal_condition(mdp, _uniform_policy(mdp))]
    for _ in range(folds):
        mdp, posterior = _fold_and_condition(mdp, sequence[-1])
        sequence.append(posterior)
    return sequence


# ------------------------------------------------------------------------------ misalignment
@_float64
def expected_reward_values(mdp: LayeredMDP, policy: Sequence | None = None) -> tuple[jax.Array, ...]:
    """Q of the *additive* return sum_t P(reward_t = 1 | s_t, a_t) (the standard RL Q that the
    effective-horizon argument of Sec. 6 uses): Q^pi for a policy, Q* for `policy=None`."""
    return _expected_reward_values(_as_mdp(mdp), None if policy is None else _as_policy(policy))


@jax.jit
def _expected_reward_values(mdp: LayeredMDP, policy: Policy | None) -> tuple[jax.Array, ...]:
    qs, v_next = [None] * mdp.horizon, None
    for t in reversed(range(mdp.horizon)):
        q = jnp.exp(mdp.log_rewards[t])
        if t < mdp.horizon - 1:
            q = q + jnp.einsum("sap,p->sa", mdp.transitions[t], v_next)
        qs[t] = q
        v_next = q.max(axis=-1) if policy is None else (policy[t] * q).sum(axis=-1)
    return tuple(qs)


@_float64
def greedy_misalignment(mdp: LayeredMDP, kind: str = "expected_reward") -> jax.Array:
    """1 - the greedy-action agreement rate between the uniform policy's Q and Q* (Sec. 6):
    states weighted by the uniform policy's visitation, summed over all time steps.

    kind "expected_reward": additive expected-reward Q (the paper's code); "success_probability":
    the soft Q of the success probability (log P(success | s, a)), Q^uniform against Q*.
    """
    if kind not in MISALIGNMENT_KINDS:
        raise ValueError(f"unknown misalignment kind {kind!r}; allowed: {', '.join(MISALIGNMENT_KINDS)}")
    return _greedy_misalignment(_as_mdp(mdp), kind)


@functools.partial(jax.jit, static_argnums=1)
def _greedy_misalignment(mdp: LayeredMDP, kind: str) -> jax.Array:
    uniform = _uniform_policy(mdp)
    if kind == "expected_reward":
        q_uniform, q_star = _expected_reward_values(mdp, uniform), _expected_reward_values(mdp, None)
    else:
        q_uniform, q_star = _soft_values(mdp, uniform)[0], _optimal_values(mdp)[0]
    visits = _state_visitation(mdp, uniform)
    agree = _visited_sum(visits, [(qu.argmax(-1) == qs.argmax(-1)).astype(jnp.float64)
                                  for qu, qs in zip(q_uniform, q_star)])
    return 1.0 - agree / mdp.horizon


# ------------------------------------------------------------------ trajectory enumeration
def enumerate_trajectories(mdp: LayeredMDP, policy: Sequence) -> dict[str, np.ndarray]:
    """Every trajectory (s_0, a_0, ..., s_{H-1}, a_{H-1}) of positive probability, brute force, in
    numpy float64 (exponential in H: for checks on small MDPs). Keys: "states", "actions" [N, H]
    ints, "probability" [N] and "log_reward" [N] (log P(success | trajectory))."""
    policy = [np.asarray(p, np.float64) for p in policy]
    rewards = [np.asarray(r, np.float64) for r in mdp.log_rewards]
    transitions = [np.asarray(p, np.float64) for p in mdp.transitions]
    rows = []
    for path in _paths(transitions, policy, 0, 0):
        states, actions = path[0::2], path[1::2]
        prob, log_reward = 1.0, 0.0
        for t, (s, a) in enumerate(zip(states, actions)):
            prob *= policy[t][s, a] * (transitions[t][s, a, states[t + 1]] if t + 1 < len(states) else 1.0)
            log_reward += rewards[t][s, a]
        rows.append((states, actions, prob, log_reward))
    return {"states": np.array([r[0] for r in rows]), "actions": np.array([r[1] for r in rows]),
            "probability": np.array([r[2] for r in rows]), "log_reward": np.array([r[3] for r in rows])}


def _paths(transitions: list[np.ndarray], policy: list[np.ndarray], t: int, state: int):
    for action in np.flatnonzero(policy[t][state] > 0):
        if t == len(policy) - 1:
            yield (state, int(action))
            continue
        for nxt in np.flatnonzero(transitions[t][state, action] > 0):
            for rest in _paths(transitions, policy, t + 1, int(nxt)):
                yield (state, int(action)) + rest
