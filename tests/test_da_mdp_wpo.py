"""DA-MDP:WPO: the Wasserstein actor gradient against the explicit formula (float64), zero at the gradient flow's
fixed point grad_x Q = alpha grad_x (log pi - log q), friction frozen, the trust-region switch, the reference's
defaults, a chunk through the on-policy loop with SDE evaluation, and clear errors on bad settings."""
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_online_config
from mbdpo_jax.agents.da_mdp_reppo import DAMDPREPPOConfig
from mbdpo_jax.agents.da_mdp_wpo import DAMDPWPO, DAMDPWPOConfig
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.train import host
from mbdpo_jax.train.runner import build_trainer

# K = 3, two action dims, 5 env-step rows; u_theta's head at full scale so that u is not ~0 and its gradient
# reaches every layer
TINY = dict(diffusion_steps=3, score_hidden=(8,), critic_hidden=(8, 8), num_bins=21, time_features=2, time_out=2,
            last_layer_scale=1.0, num_steps=2, epochs=1, minibatches=1)
SPEC = EnvSpec("test/wpo", obs_size=3, action_size=2, episode_length=10)
ROWS = 5


def tiny_agent(**changes):
    return DAMDPWPO(DAMDPWPOConfig(**{**TINY, **changes}), SPEC)


@pytest.fixture(scope="module")
def batch():
    """A fresh state of the tiny agent (the state does not depend on kl_bound) and a minibatch of ROWS env-step
    rows with random states and chain latents, the old kernels the current ones (as right after `prepare`)."""
    agent = tiny_agent()
    K, A, O = agent.K, SPEC.action_size, SPEC.obs_size

    def build(key):
        state = agent.init(key)
        keys = jax.random.split(jax.random.fold_in(key, 1), 8)
        s = jax.random.normal(keys[0], (ROWS, O))
        latents = 3.0 * jax.random.normal(keys[1], (ROWS, K + 1, A))
        mean, scale = agent.core.kernels(state.params["policy"], s, latents[:, :K])
        normal = lambda i, shape, sd=1.0: sd * jax.random.normal(keys[i], shape)
        return state, {"obs": s, "raw_obs": s, "latents": latents, "next_obs": normal(2, (ROWS, O)),
                       "next_x0": normal(3, (ROWS, A), 3.0), "next_x1": normal(4, (ROWS, A), 3.0),
                       "reward": normal(5, (ROWS,)), "target": normal(6, (ROWS, K)), "old_mean": mean,
                       "old_scale": scale}

    return jax.jit(build)(jax.random.PRNGKey(0))


def actor_grad_and_metrics(agent):
    """Jitted (params, minibatch, key) -> (gradient of the loss's actor_loss metric, every metric)."""
    def actor_loss(p, mb, key):
        metrics = agent.loss(p, mb, key)[1]
        return metrics["actor_loss"], metrics
    return jax.jit(jax.grad(actor_loss, has_aux=True))


def explicit_kernel(policy, agent, s, x):
    """pi(.|x_k, s) = N(mean, var) written out at x_k = x [B, K, A]: eta_k = softplus(dt_k) / softplus(friction),
    mean = x_k + eta_k (-x_k / sigma_0^2 + u(x_k, s, k)), var = 2 eta_k; and q's eta' = eta_{min(k+1, K-1)}."""
    K, sig2 = agent.K, agent.cfg.sigma_0 ** 2
    eta = jax.nn.softplus(policy["dt"])[:, None] / jax.nn.softplus(policy["friction"])  # [K, A]
    u = jax.vmap(lambda xb, sb: jax.vmap(lambda xk, k: agent.policy.net.apply(policy["score"], xk, sb, k))(
        xb, jnp.arange(K)))(x, s)
    return x + eta * (-x / sig2 + u), 2 * eta, eta[np.minimum(np.arange(K) + 1, K - 1)]


def explicit_score(policy, agent, s, x, x_t):
    """grad_x [log pi(x|x_k, s) - log q(x_k|x)] at x = x_t [B, K, A], written out: -(x_t - mean) / var minus
    grad_x log q, where q(x_k|x) = N(x_k; x - eta' x / sigma_0^2, 2 eta') gives grad_x log q = r (1 - eta' /
    sigma_0^2) / (2 eta') with r = x_k - x_t + eta' x_t / sigma_0^2."""
    sig2 = agent.cfg.sigma_0 ** 2
    mean, var, eta_next = explicit_kernel(policy, agent, s, x)
    r = x - x_t + eta_next * x_t / sig2
    return -(x_t - mean) / var - r * (1 - eta_next / sig2) / (2 * eta_next)


def test_wpo_actor_gradient_equals_the_explicit_formula_in_float64(batch):
    """Float64, 5 rows x K = 3 steps x 2 action dims, trust region never binding. With x~ = mean + sqrt(var) eps
    (eps = normal(split(key)[0]), held fixed), g the kernel's score in x at x~ (written out in `explicit_score`),
    grad_x Q by central differences of the critic and c = alpha g - grad_x Q held fixed, the gradient of the actor's
    loss mean(sum_a c_a g_a) is (1) for u_theta's parameters the VJP of the kernel mean with cotangent
    c / var / (B K) (g depends on u only through the mean, d g / d mean = 1 / var), (2) for dt the central
    difference of mean(sum_a c_a g_a(dt)) (dt enters the mean, var and q's eta'). The critic and both multipliers
    get none from it."""
    with jax.enable_x64(True):
        agent = tiny_agent(kl_bound=1e6)
        to64 = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating)
                                      else v, t)
        params, mb = to64(batch[0].params), to64(batch[1])
        key = jax.random.PRNGKey(7)
        grads, metrics = actor_grad_and_metrics(agent)(params, mb, key)
        assert float(metrics["kl_inside_fraction"]) == 1.0

        policy, K = params["policy"], agent.K
        s, x = mb["obs"], mb["latents"][:, :K]
        B, A = x.shape[0], x.shape[-1]

        @jax.jit
        def formula(policy):
            mean, var, _ = explicit_kernel(policy, agent, s, x)
            x_t = mean + jnp.sqrt(var) * jax.random.normal(jax.random.split(key)[0], mean.shape)
            q = lambda xt: agent.q(params["critic"], s[:, None], x, xt, jnp.broadcast_to(jnp.arange(K), (B, K)))
            h = jnp.stack([(q(x_t.at[..., a].add(1e-6)) - q(x_t.at[..., a].add(-1e-6))) / 2e-6 for a in range(A)], -1)
            c = jnp.exp(params["log_alpha"]) * explicit_score(policy, agent, s, x, x_t) - h
            _, vjp = jax.vjp(lambda sp: explicit_kernel({**policy, "score": sp}, agent, s, x)[0], policy["score"])
            surrogate = lambda dt: jnp.mean(jnp.sum(c * explicit_score({**policy, "dt": dt}, agent, s, x, x_t), -1))
            step = 1e-6 * jnp.eye(K)
            fd = jax.vmap(lambda e: (surrogate(policy["dt"] + e) - surrogate(policy["dt"] - e)) / 2e-6)(step)
            return vjp(c / var / (B * K))[0], fd, h, c

        expected, fd, h, c = formula(policy)
        assert float(jnp.max(jnp.abs(h))) > 1e-3 and float(jnp.max(jnp.abs(c))) > 1e-3
        for got, want in zip(jax.tree.leaves(grads["policy"]["score"]), jax.tree.leaves(expected)):
            assert float(jnp.max(jnp.abs(want))) > 0
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-10)
        assert float(jnp.max(jnp.abs(fd))) > 1e-3
        np.testing.assert_allclose(np.asarray(grads["policy"]["dt"]), np.asarray(fd), rtol=1e-6, atol=1e-9)
        for name in ("critic", "log_alpha", "log_lambda_kl"):
            assert all(float(jnp.max(jnp.abs(v))) == 0.0 for v in jax.tree.leaves(grads[name])), name


def test_the_actor_gradient_vanishes_at_the_gradient_flows_fixed_point(batch, monkeypatch):
    """A stand-in critic Q(s, x_k, x, k) = alpha (log pi_0 - log q_0)(x | x_k, s) of the policy pi_0 of the state
    (held constant), alpha = 0.5. At pi_0 itself grad_x Q = alpha grad_x (log pi - log q) at every sample: the flow
    sg(alpha g - grad_x Q) is 0 and so is the actor's gradient for u_theta and dt (it would not be without the stop
    gradient, or with log pi in place of the log-ratio in g). With u_theta's parameters moved by 0.3 x noise the
    same critic is no fixed point: the flow and the gradient are far from zero."""
    agent = tiny_agent(kl_bound=1e6)
    state, mb = batch
    params = {**state.params, "log_alpha": jnp.log(jnp.float32(0.5))}
    frozen, alpha = params["policy"], jnp.exp(params["log_alpha"])  # constants of the traced loss

    def stand_in_q(critic, s, x, x_next, k):
        mean, scale = agent.core.kernels(frozen, s[:, 0], x)
        return alpha * agent.core.log_ratio(frozen, x, x_next, mean, scale, k)

    monkeypatch.setattr(agent, "q", stand_in_q)
    grad_fn, key = actor_grad_and_metrics(agent), jax.random.PRNGKey(3)
    leaves, tree = jax.tree.flatten(params["policy"]["score"])
    noise = jax.tree.unflatten(tree, [0.3 * jax.random.normal(jax.random.PRNGKey(i), v.shape)
                                      for i, v in enumerate(leaves)])
    moved = {**params, "policy": {**params["policy"], "score": jax.tree.map(jnp.add, params["policy"]["score"], noise)}}
    flows, norms = [], []
    for p in (params, moved):
        grads, metrics = grad_fn(p, mb, key)
        flows.append(float(metrics["flow_sq_norm"]))
        norms.append(max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(
            {k: grads["policy"][k] for k in ("score", "dt")})))
    assert flows[1] > 1e-2 and norms[1] > 1e-3, (flows, norms)
    assert flows[0] < 1e-10 * flows[1] and norms[0] < 1e-5 * norms[1], (flows, norms)


def test_friction_gets_no_gradient_inside_or_outside_the_trust_region(batch):
    """Friction is frozen: the total loss's gradient for it is exactly 0 inside the trust region (KL = 0 right after
    prepare) and outside it (old means shifted by 10: there the actor's loss is lambda_KL x KL, and the KL depends
    on the kernel's scale, hence on friction), while dt and u_theta get non-zero gradients in both. (DA-MDP:REPPO's
    loss gives friction a gradient: tests/test_reppo.py. That updates leave it in place: the chunk test below.)"""
    agent = tiny_agent()
    state, mb = batch
    key = jax.random.PRNGKey(1)
    loss_grad = jax.jit(jax.grad(agent.loss, has_aux=True))
    far = {**mb, "old_mean": mb["old_mean"] + 10.0}
    for minibatch, inside in ((mb, 1.0), (far, 0.0)):
        grads, metrics = loss_grad(state.params, minibatch, key)
        assert float(metrics["kl_inside_fraction"]) == inside
        assert float(jnp.max(jnp.abs(grads["policy"]["friction"]))) == 0.0
        for name in ("score", "dt"):
            assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(grads["policy"][name])) > 0, name
    assert float(metrics["kl"]) > 1.0
    assert float(metrics["actor_loss"]) == pytest.approx(float(metrics["lambda_kl"]) * float(metrics["kl"]), rel=1e-5)


def test_defaults_are_the_reference_wpo_settings_and_the_rest_is_da_mdp_reppos():
    """KL bound 0.02, entropy target -8 per action dim, 301 bins, multipliers' Adam 6e-4, SDE evaluation; every
    other setting equals DA-MDP:REPPO's default."""
    wpo, base = DAMDPWPOConfig(), DAMDPREPPOConfig()
    changed = {"kl_bound": 0.02, "entropy_target": -8.0, "num_bins": 301, "multiplier_lr": 6e-4, "eval_sampler": "sde"}
    for name, value in changed.items():
        assert getattr(wpo, name) == value and getattr(base, name) != value, name
    for field in base.__dataclass_fields__:
        if field not in changed:
            assert getattr(wpo, field) == getattr(base, field), field


def test_a_chunk_through_the_on_policy_loop_counts_real_env_steps_and_evaluates_with_the_sde():
    """`build_trainer` on a da-mdp-wpo config (toy/pendulum, K = 4): a chunk of 2 rollouts of 4 envs x 8 env steps
    advances env_steps by 64 real steps and updates by 8 (2 rollouts x 2 epochs x 2 minibatches), every metric is
    finite, friction is where it started and dt has moved; evaluation gives a finite return, and eval mode is the
    SDE: the same key gives the same action as training mode, another key another action."""
    small = dict(diffusion_steps=4, score_hidden=(16,), critic_hidden=(16, 16), num_bins=51, time_features=4,
                 time_out=4)
    cfg = tiny_online_config("da-mdp-wpo", num_envs=4, num_steps=8, epochs=2, minibatches=2, eval_every=64, steps=64,
                             **small)
    trainer = build_trainer(cfg)
    start = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    carry, metrics = jax.jit(trainer.train_chunk)(start)
    assert int(carry.env_steps) == 64 and int(carry.updates) == 8
    values = host.floats(metrics)
    assert {"critic_loss", "actor_loss", "kl", "alpha", "lambda_kl", "entropy", "flow_sq_norm"} <= set(values)
    assert all(np.isfinite(v) for v in values.values()), values
    before, after = start.agent.params["policy"], carry.agent.params["policy"]
    np.testing.assert_array_equal(np.asarray(after["friction"]), np.asarray(before["friction"]))
    assert float(jnp.max(jnp.abs(after["dt"] - before["dt"]))) > 0
    assert np.isfinite(host.floats(jax.jit(trainer.evaluate)(carry.agent, jax.random.PRNGKey(1)))["eval_return"])
    agent, obs = trainer.agent, jnp.ones(trainer.env.spec.obs_size)
    act = lambda key, eval_mode: agent.act(carry.agent, obs, key, eval_mode)[0]
    k5, k6 = jax.random.PRNGKey(5), jax.random.PRNGKey(6)
    a_eval, a_train, a_other = jax.jit(lambda: (act(k5, True), act(k5, False), act(k6, True)))()
    np.testing.assert_array_equal(np.asarray(a_eval), np.asarray(a_train))
    assert not np.array_equal(np.asarray(a_eval), np.asarray(a_other))


def test_bad_da_mdp_wpo_settings_are_refused_in_one_line_naming_the_value():
    """Bad values are refused when the agent is built, in one line naming the setting, the value and the allowed
    range; so is a multi-task setup; `--help` lists the WPO defaults."""
    for changes, message in [(dict(kl_bound=0.0), "kl-bound must be > 0, got 0.0"),
                             (dict(eval_sampler="euler"), "eval-sampler must be one of sde, ode, got 'euler'"),
                             (dict(num_bins=1), "num-bins must be an integer >= 2, got 1"),
                             (dict(diffusion_steps=0), "diffusion-steps must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            DAMDPWPO(DAMDPWPOConfig(**changes), SPEC)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=re.escape("da-mdp-wpo is single-task, got num_tasks=2")):
        DAMDPWPO(DAMDPWPOConfig(**TINY), SPEC, num_tasks=2)
    out = subprocess.run([sys.executable, "-m", "experiments.online", "da-mdp-wpo", "--preset", "paper", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "(default: 0.02)" in out.stdout[out.stdout.index("--kl-bound"):out.stdout.index("--kl-samples")], out.stdout
    assert "--eval-sampler" in out.stdout and "--diffusion-steps" in out.stdout
