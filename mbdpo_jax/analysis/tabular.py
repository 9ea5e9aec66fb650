"""Exact small MDPs in float64 and the tabular analysis of MnM.

MnM is Eysenbach, Khazatsky, Levine and Salakhutdinov, "Mismatched No More: Joint Model-Policy
Optimization for Model-Based RL" (arXiv 2110.02758). Everything here is exact linear algebra on
tables: transitions p[s, a, s'], rewards r[s, a] > 0, a start distribution and a discount gamma.

The bound (MnM Sec. 3, the lower bound on the log of the expected return). With the return
J(pi) = E_p[sum_t gamma^t r_t], write J as (1 / (1 - gamma)) E_{t ~ Geom(1 - gamma)} E_p[r_t],
importance-weight the trajectory from the model q and apply Jensen's inequality:

    log J(pi) >= L(pi, q) = -log(1 - gamma)
                 + E_{pi, q}[sum_t gamma^t ((1 - gamma) log r(s_t, a_t) - gamma KL(q || p)(s_t, a_t))].

The weight gamma on the KL is P(t > k) = gamma^(k + 1) of the geometric time; the paper writes the
per-step reward as (1 - gamma) log r + log p - log q, i.e. a KL weight of 1, which is also a lower
bound (KL >= 0), only looser. With the weight gamma the optimal model for a fixed policy is exactly
q*(s'|s, a) proportional to p(s'|s, a) exp(W(s')) (MnM Sec. 4), W being the policy's value
under the augmented reward; with weight 1 it would be exp(gamma W). See `bound_rewards`.

All public functions run inside `jax.enable_x64(True)` (they do not change the global setting) and
return float64 arrays.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

GRID_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""Gridworld actions as (row, column) steps: up, right, down, left."""

METHODS = ("q_learning", "mnm", "vmbpo", "accuracy_model")
"""Learners of `train`, after the MnM authors' tabular notebook (Fig. 2a) plus an accuracy-only model."""


class TabularMDP(NamedTuple):
    """A finite MDP: transitions [S, A, S] (rows sum to 1), rewards [S, A], initial [S], gamma."""

    transitions: jax.Array
    rewards: jax.Array
    initial: jax.Array
    gamma: float


def float64(fn: Callable) -> Callable:
    """Run `fn` with float64 enabled, restoring the caller's precision setting afterwards."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped


def exact(fn: Callable) -> Callable:
    """`float64` around `jax.jit(fn)`: for the small array functions called in loops."""
    return float64(jax.jit(fn))


def _check_gamma(gamma: float) -> None:
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")


@float64
def make_mdp(transitions: Any, rewards: Any, gamma: float, initial: Any = None) -> TabularMDP:
    """A validated TabularMDP in float64; `initial` None means uniform over states."""
    _check_gamma(gamma)
    p = np.asarray(transitions, np.float64)
    r = np.asarray(rewards, np.float64)
    if p.ndim != 3 or p.shape[0] != p.shape[2] or r.shape != p.shape[:2]:
        raise ValueError(f"transitions must be [S, A, S] and rewards [S, A], got {p.shape} and {r.shape}")
    if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-9):
        raise ValueError("transitions must be non-negative with rows summing to 1")
    mu = np.full(p.shape[0], 1.0 / p.shape[0]) if initial is None else np.asarray(initial, np.float64)
    if mu.shape != (p.shape[0],) or (mu < 0).any() or not np.isclose(mu.sum(), 1.0):
        raise ValueError(f"initial must be a distribution over the {p.shape[0]} states, got shape {mu.shape}")
    return TabularMDP(jnp.asarray(p), jnp.asarray(r), jnp.asarray(mu), float(gamma))


def _grid_step(cell: tuple[int, int], move: tuple[int, int], walls: np.ndarray) -> tuple[int, int]:
    size = walls.shape[0]
    row = min(max(cell[0] + move[0], 0), size - 1)
    col = min(max(cell[1] + move[1], 0), size - 1)
    return cell if walls[row, col] else (row, col)


@float64
def gridworld(size: int = 10, slip: float = 0.5, gamma: float = 0.9, step_reward: float = 1e-3,
              goal_reward: float = 10.0, wall_block: tuple[int, int, int, int] = (0, 6, 4, 6),
              start: tuple[int, int] = (0, 0), goal: tuple[int, int] | None = None) -> TabularMDP:
    """The stochastic gridworld of MnM Sec. 5 (Fig. 2a): 10 x 10, a wall, 50% action noise, gamma 0.9.

    With probability 1 - slip the intended move happens; otherwise a move drawn uniformly from the
    four actions (the intended one included, as in the authors' notebook), so the intended move has
    probability 1 - slip + slip / 4. Moves into the border or a wall leave the agent in place. The
    wall covers rows [wall_block[0], wall_block[1]) x columns [wall_block[2], wall_block[3]); state
    index is row * size + column; the reward depends on the state only: goal_reward at the goal
    (default top-right corner), step_reward elsewhere. The start state is deterministic.
    """
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip}")
    if not (step_reward > 0 and goal_reward > 0):
        raise ValueError(f"rewards must be > 0 (the bound takes their log), got {step_reward}, {goal_reward}")
    goal = (0, size - 1) if goal is None else goal
    walls = np.zeros((size, size), bool)
    walls[wall_block[0]:wall_block[1], wall_block[2]:wall_block[3]] = True
    for name, cell in (("start", start), ("goal", goal)):
        if not (0 <= cell[0] < size and 0 <= cell[1] < size) or walls[cell]:
            raise ValueError(f"{name} {cell} must be a free cell of the {size} x {size} grid")
    num_states, num_actions = size * size, len(GRID_MOVES)
    p = np.zeros((num_states, num_actions, num_states))
    for (row, col), a in itertools.product(itertools.product(range(size), range(size)), range(num_actions)):
        s = row * size + col
        for b, move in enumerate(GRID_MOVES):
            nrow, ncol = _grid_step((row, col), move, walls)
            p[s, a, nrow * size + ncol] += slip / num_actions + (1.0 - slip) * (a == b)
    r = np.full((num_states, num_actions), step_reward)
    r[goal[0] * size + goal[1]] = goal_reward
    initial = np.zeros(num_states)
    initial[start[0] * size + start[1]] = 1.0
    return make_mdp(p, r, gamma, initial)


@float64
def random_mdp(key: jax.Array, num_states: int, num_actions: int, gamma: float = 0.9,
               concentration: float = 1.0, reward_range: tuple[float, float] = (0.1, 1.0)) -> TabularMDP:
    """A random MDP: Dirichlet(concentration) transition rows (full support), uniform positive rewards
    in reward_range and a Dirichlet(1) start distribution."""
    if num_states < 1 or num_actions < 1:
        raise ValueError(f"num_states and num_actions must be >= 1, got {num_states}, {num_actions}")
    if not 0 < reward_range[0] <= reward_range[1]:
        raise ValueError(f"reward_range must be positive and ordered, got {reward_range}")
    k_p, k_r, k_mu = jax.random.split(key, 3)
    p = jax.random.dirichlet(k_p, jnp.full(num_states, concentration), (num_states, num_actions))
    r = jax.random.uniform(k_r, (num_states, num_actions), minval=reward_range[0], maxval=reward_range[1])
    mu = jax.random.dirichlet(k_mu, jnp.ones(num_states))
    return make_mdp(np.asarray(p), np.asarray(r), gamma, np.asarray(mu))


@exact
def policy_values(transitions: jax.Array, rewards: jax.Array, policy: jax.Array, gamma: float) -> jax.Array:
    """Exact values V[s] of `policy` [S, A] in the model `transitions` with `rewards`: the linear
    solve (I - gamma P_pi) V = r_pi."""
    p_pi = jnp.einsum("sa,sat->st", policy, transitions)
    r_pi = jnp.sum(policy * rewards, -1)
    return jnp.linalg.solve(jnp.eye(p_pi.shape[0]) - gamma * p_pi, r_pi)


@exact
def q_values(transitions: jax.Array, rewards: jax.Array, values: jax.Array, gamma: float) -> jax.Array:
    """One Bellman backup Q[s, a] = r[s, a] + gamma sum_s' p(s'|s, a) V[s']."""
    return rewards + gamma * jnp.einsum("sat,t->sa", transitions, values)


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _value_iteration(transitions, rewards, gamma, tolerance, max_iterations):
    def body(carry):
        q, _, i = carry
        new = rewards + gamma * jnp.einsum("sat,t->sa", transitions, q.max(-1))
        return new, jnp.max(jnp.abs(new - q)), i + 1

    init = (jnp.zeros_like(rewards), jnp.inf, 0)
    q, _, _ = jax.lax.while_loop(lambda c: (c[1] > tolerance) & (c[2] < max_iterations), body, init)
    return q


@float64
def value_iteration(mdp: TabularMDP, tolerance: float = 1e-12, max_iterations: int = 100_000) -> jax.Array:
    """Optimal Q*[s, a] of the true MDP by value iteration, stopped at a sup-norm change <= tolerance."""
    return _value_iteration(mdp.transitions, mdp.rewards, mdp.gamma, tolerance, max_iterations)


@exact
def greedy_policy(q: jax.Array) -> jax.Array:
    """The deterministic policy one_hot(argmax_a Q[s, a]) (first action on ties)."""
    return jax.nn.one_hot(jnp.argmax(q, -1), q.shape[-1], dtype=q.dtype)


@exact
def expected_return(mdp: TabularMDP, policy: jax.Array) -> jax.Array:
    """J(pi) = E_{s0 ~ initial}[V^pi(s0)] under the true dynamics and rewards."""
    return mdp.initial @ policy_values(mdp.transitions, mdp.rewards, policy, mdp.gamma)


@exact
def model_kl(model: jax.Array, transitions: jax.Array) -> jax.Array:
    """KL(q(.|s, a) || p(.|s, a)) [S, A], with 0 log 0 = 0 (inf where q puts mass where p has none)."""
    ratio = jnp.where(model > 0, jnp.log(jnp.where(model > 0, model, 1.0)) - jnp.log(transitions), 0.0)
    return jnp.sum(jnp.where(model > 0, model * ratio, 0.0), -1)


@exact
def bound_rewards(mdp: TabularMDP, model: jax.Array) -> jax.Array:
    """The augmented reward (1 - gamma) log r(s, a) - gamma KL(q || p)(s, a) of the MnM bound (see
    the module docstring for the weight gamma on the KL)."""
    return (1.0 - mdp.gamma) * jnp.log(mdp.rewards) - mdp.gamma * model_kl(model, mdp.transitions)


@exact
def bound_values(mdp: TabularMDP, policy: jax.Array, model: jax.Array) -> jax.Array:
    """W[s]: the value of `policy` in the model q under the augmented reward (the bound from s, less
    its constant -log(1 - gamma))."""
    return policy_values(model, bound_rewards(mdp, model), policy, mdp.gamma)


@exact
def mnm_bound(mdp: TabularMDP, policy: jax.Array, model: jax.Array) -> jax.Array:
    """L(pi, q) = E_{s0}[W(s0)] - log(1 - gamma) <= log J(pi) (MnM Sec. 3)."""
    return mdp.initial @ bound_values(mdp, policy, model) - jnp.log1p(-mdp.gamma)


@exact
def optimistic_model(transitions: jax.Array, values: jax.Array) -> jax.Array:
    """q*(s'|s, a) proportional to p(s'|s, a) exp(values[s']): the model that maximises the bound for
    a fixed policy when `values` is that policy's W under q* (MnM Sec. 4)."""
    logits = jnp.log(transitions) + values
    return jax.nn.softmax(logits, axis=-1)


@jax.jit
def _soft_backup(transitions, log_rewards_scaled, values, gamma):
    return log_rewards_scaled + gamma * jax.nn.logsumexp(jnp.log(transitions) + values, axis=-1)


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _soft_fixed_point(transitions, rewards, policy, gamma, tolerance, max_iterations):
    scaled = (1.0 - gamma) * jnp.log(rewards)

    def backup(v):
        q = _soft_backup(transitions, scaled, v, gamma)
        return q.max(-1) if policy is None else jnp.sum(policy * q, -1)

    def body(carry):
        v, _, i = carry
        new = backup(v)
        return new, jnp.max(jnp.abs(new - v)), i + 1

    init = (jnp.zeros(rewards.shape[0], rewards.dtype), jnp.inf, 0)
    v, _, _ = jax.lax.while_loop(lambda c: (c[1] > tolerance) & (c[2] < max_iterations), body, init)
    return v


@float64
def soft_policy_values(mdp: TabularMDP, policy: jax.Array, tolerance: float = 1e-12,
                       max_iterations: int = 100_000) -> jax.Array:
    """W*[s] = max_q W(s) for a fixed policy: the fixed point of the soft backup
    W(s) = sum_a pi(a|s) [(1 - gamma) log r(s, a) + gamma log sum_s' p(s'|s, a) exp W(s')],
    attained by q* = optimistic_model(p, W*)."""
    return _soft_fixed_point(mdp.transitions, mdp.rewards, policy, mdp.gamma, tolerance, max_iterations)


@float64
def soft_value_iteration(mdp: TabularMDP, tolerance: float = 1e-12, max_iterations: int = 100_000) -> jax.Array:
    """W*[s] = max over policies and models of W(s): the soft backup with a max over actions. Its
    E_{s0}[W*] - log(1 - gamma) is the largest value the MnM bound can take."""
    return _soft_fixed_point(mdp.transitions, mdp.rewards, None, mdp.gamma, tolerance, max_iterations)


@jax.jit
def _joint_update(mdp, policy, model, smoothing):
    rewards = bound_rewards(mdp, model)
    w = policy_values(model, rewards, policy, mdp.gamma)
    policy = smoothing * policy + (1.0 - smoothing) * greedy_policy(q_values(model, rewards, w, mdp.gamma))
    w = policy_values(model, rewards, policy, mdp.gamma)
    model = smoothing * model + (1.0 - smoothing) * optimistic_model(mdp.transitions, w)
    return policy, model


@float64
def joint_update(mdp: TabularMDP, policy: jax.Array, model: jax.Array,
                 smoothing: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """One exact joint step on the bound (MnM Sec. 4, the notebook's Fig. 3b): the policy moves to
    the greedy policy of its bound Q-values, then the model to q* of the new policy's W, each mixed
    with its previous value (weight `smoothing` on the old one).

    The policy step is a policy improvement in the MDP (q, augmented reward); the model step is one
    too, in the MDP whose "actions" are the rows q(.|s, a) with the per-row objective
    gamma (E_q[W] - KL(q || p)), concave in q. So every state's bound is non-decreasing.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return _joint_update(mdp, policy, model, smoothing)


@float64
def joint_optimisation(mdp: TabularMDP, iterations: int = 30, smoothing: float = 0.5) -> dict[str, jax.Array]:
    """Alternate `joint_update` from the uniform policy and q = p. Returns `bound` and `log_return`
    ([iterations + 1], the MnM bound and log J of the current policy before each step, and after the
    last), and the final `policy` and `model`."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    num_states, num_actions = mdp.rewards.shape
    policy = jnp.full((num_states, num_actions), 1.0 / num_actions)
    model = mdp.transitions
    bounds, log_returns = [], []
    for i in range(iterations + 1):
        bounds.append(mnm_bound(mdp, policy, model))
        log_returns.append(jnp.log(expected_return(mdp, policy)))
        if i < iterations:
            policy, model = joint_update(mdp, policy, model, smoothing)
    return dict(bound=jnp.stack(bounds), log_return=jnp.stack(log_returns), policy=policy, model=model)


@exact
def epsilon_greedy(q: jax.Array, epsilon: float) -> jax.Array:
    """Uniform with probability epsilon, else argmax_a Q[s, a]."""
    return epsilon / q.shape[-1] + (1.0 - epsilon) * greedy_policy(q)


@exact
def maximum_likelihood_model(counts: jax.Array) -> jax.Array:
    """The accuracy-only model: q(s'|s, a) = N(s, a, s') / N(s, a); an unvisited (s, a) stays put."""
    visits = counts.sum(-1, keepdims=True)
    stay = jnp.broadcast_to(jnp.eye(counts.shape[0])[:, None, :], counts.shape)
    return jnp.where(visits > 0, counts / jnp.maximum(visits, 1.0), stay)


@exact
def td_sweep(q: jax.Array, counts: jax.Array, reward_sums: jax.Array, values: jax.Array, gamma: float,
             step_size: float) -> jax.Array:
    """One tabular TD step on every stored transition at once, all reading the same Q and V (the
    notebook's np.add.at update): Q += step_size sum_i [r_i + gamma V(s'_i) - Q(s_i, a_i)], written
    with the sufficient statistics counts[s, a, s'] and reward_sums[s, a] of the stored data."""
    visits = counts.sum(-1)
    return q + step_size * (reward_sums + gamma * jnp.einsum("sat,t->sa", counts, values) - visits * q)


def _rollout(key, model, policy, initial, steps):
    """`steps` transitions from a start state drawn from `initial`, acting with `policy` in `model`."""

    def step(state, k):
        k_action, k_next = jax.random.split(k)
        action = jax.random.categorical(k_action, jnp.log(policy[state]))
        nxt = jax.random.categorical(k_next, jnp.log(model[state, action]))
        return nxt, (state, action, nxt)

    k_start, k_steps = jax.random.split(key)
    start = jax.random.categorical(k_start, jnp.log(initial))
    _, transitions = jax.lax.scan(step, start, jax.random.split(k_steps, steps))
    return transitions


def _model_and_reward(mdp, method, values, real_counts):
    """The model that generates a learner's data and the reward it stores (MnM notebook, Fig. 2a)."""
    log_reward = (1.0 - mdp.gamma) * jnp.log(mdp.rewards)
    if method == "q_learning":
        return mdp.transitions, mdp.rewards
    if method == "accuracy_model":
        return maximum_likelihood_model(real_counts), log_reward
    model = optimistic_model(mdp.transitions, values)
    kl = model_kl(model, mdp.transitions)
    return model, (log_reward - mdp.gamma * kl if method == "mnm" else mdp.rewards - kl)


def _learner_iteration(mdp, method, steps, step_size, epsilon, carry, key):
    q, policy, counts, reward_sums, real_counts = carry
    values = q.max(-1)
    k_real, k_model = jax.random.split(key)
    if method == "accuracy_model":
        s, a, s2 = _rollout(k_real, mdp.transitions, policy, mdp.initial, steps)
        real_counts = real_counts.at[s, a, s2].add(1.0)
    model, reward = _model_and_reward(mdp, method, values, real_counts)
    s, a, s2 = _rollout(k_model, model, policy, mdp.initial, steps)
    counts = counts.at[s, a, s2].add(1.0)
    reward_sums = reward_sums.at[s, a].add(reward[s, a])
    q = td_sweep(q, counts, reward_sums, values, mdp.gamma, step_size / steps)
    true_return = mdp.initial @ policy_values(mdp.transitions, mdp.rewards, greedy_policy(q), mdp.gamma)
    return (q, epsilon_greedy(q, epsilon), counts, reward_sums, real_counts), true_return


@functools.partial(jax.jit, static_argnames=("method", "iterations", "steps"))
def _train(mdp, method, key, iterations, steps, step_size, epsilon):
    num_states, num_actions = mdp.rewards.shape
    zeros_sas = jnp.zeros((num_states, num_actions, num_states))
    carry = (jnp.zeros((num_states, num_actions)), jnp.full((num_states, num_actions), 1.0 / num_actions),
             zeros_sas, jnp.zeros((num_states, num_actions)), zeros_sas)
    body = functools.partial(_learner_iteration, mdp, method, steps, step_size, epsilon)
    (q, _, counts, _, _), returns = jax.lax.scan(body, carry, jax.random.split(key, iterations))
    return dict(returns=returns, q=q, max_td_step=step_size / steps * counts.sum(-1).max())


@float64
def train(mdp: TabularMDP, method: str, seeds: list[int], iterations: int = 1501, rollout_steps: int = 200,
          learning_rate: float = 1e-2, epsilon: float = 0.5) -> dict[str, jax.Array]:
    """The tabular learners of the MnM notebook (Fig. 2a), one run per seed (vmapped).

    Each iteration: V = max_a Q; draw `rollout_steps` transitions from the start with the
    epsilon-greedy policy of the previous iteration (uniform at first) in the learner's model; store
    them with the learner's reward; one `td_sweep` over all data stored so far with step size
    learning_rate / rollout_steps; record the exact true return J of the greedy policy of the new Q.

    Methods: `q_learning` (data from p, reward r), `mnm` (data from q = p exp(V) / Z, reward
    (1 - gamma) log r - gamma KL(q || p)), `vmbpo` (the same q, reward r - KL(q || p), as in the
    notebook) and `accuracy_model` (also draws `rollout_steps` real transitions each iteration, fits
    the maximum-likelihood model to all of them and draws its data from that model, reward
    (1 - gamma) log r: MnM's learner with a model trained for accuracy alone). `mnm` and `vmbpo`
    build q from the true p, as the notebook does.

    Returns `returns` [seeds, iterations], the final `q` [seeds, S, A] and `max_td_step` [seeds]
    (step size times the most-visited pair's count; above 2 the TD sweep diverges on that pair).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    for name, value in (("iterations", iterations), ("rollout_steps", rollout_steps), ("seeds", len(seeds))):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    keys = jnp.stack([jax.random.PRNGKey(int(seed)) for seed in seeds])
    run = lambda key: _train(mdp, method, key, iterations, rollout_steps, learning_rate, epsilon)  # noqa: E731
    return jax.vmap(run)(keys)


def iterations_to_reach(returns: Any, target: float) -> int | None:
    """The first (0-based) iteration whose return is >= target, or None if none is."""
    hits = np.flatnonzero(np.asarray(returns) >= target)
    return int(hits[0]) if hits.size else None
