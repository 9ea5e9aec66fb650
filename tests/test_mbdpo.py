"""MBDPO's agent pieces: the energy classifier, its update, and planning with it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mbdpo_jax.agents.mbdpo import MBDPO, MBDPOConfig
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.planners.energy import Energy, EnergyConfig
from mbdpo_jax.planners.mbd import MBDConfig


def test_energy_separates_replay_actions_from_negatives():
    """On a toy dataset whose actions follow a = tanh(2 z_0), F learns to tell them from the hard
    negatives (prior and uniform actions): accuracy well above chance."""
    energy = Energy(EnergyConfig(hidden=(64, 64), lr=3e-3), latent_dim=4, action_size=2)
    state = energy.init(jax.random.PRNGKey(0))
    update = jax.jit(energy.update)
    for i in range(300):
        k_z, k_prior, k_up = jax.random.split(jax.random.PRNGKey(i + 1), 3)
        z = jax.random.normal(k_z, (256, 4))
        real = jnp.tanh(2 * z[:, :2])
        prior = jax.random.uniform(k_prior, (256, 2), minval=-1, maxval=1)  # an uninformed prior
        state, metrics = update(state, z, real, prior, jnp.ones(256), k_up)
    assert float(metrics["energy_accuracy"]) > 0.8
    z = jax.random.normal(jax.random.PRNGKey(999), (512, 4))
    real_score = energy.normalized(state, z, jnp.tanh(2 * z[:, :2]))
    fake_score = energy.normalized(state, z, jax.random.uniform(jax.random.PRNGKey(7), (512, 2), minval=-1, maxval=1))
    assert float(real_score.mean()) > float(fake_score.mean()) + 1.0
    assert float(jnp.abs(real_score).max()) <= EnergyConfig().clip


def _agent(**overrides):
    spec = EnvSpec("test", obs_size=6, action_size=2, episode_length=100)
    planner = MBDConfig(diffusion_steps=4, num_samples=32, num_elites=4, num_pi_trajs=4)
    return MBDPO(dataclasses.replace(MBDPOConfig(model_size="tiny", batch_size=32, planner=planner), **overrides), spec)


def _batch(key, horizon=3, batch=32):
    ks = jax.random.split(key, 2)
    obs = jax.random.normal(ks[0], (horizon + 1, batch, 6))
    action = jnp.tanh(obs[:-1, :, :2])
    return {"obs": obs[:-1], "next_obs": obs[1:], "action": action, "plan_action": action,
            "planned": jnp.ones((horizon, batch)), "reward": obs[:-1, :, 2], "done": jnp.zeros((horizon, batch)),
            "end": jnp.zeros((horizon, batch))}


def test_mbdpo_update_trains_model_prior_and_energy():
    """Repeated MBDPO updates on one batch lower the world-model losses and the energy loss, and the
    distillation term pulls the prior's log-likelihood of the planner's actions up."""
    agent = _agent()
    state = agent.init(jax.random.PRNGKey(0))
    batch = _batch(jax.random.PRNGKey(1))
    update = jax.jit(agent.update)
    z = agent.model.encode(state.core.params, batch["obs"])
    before = float(agent.model.pi_log_prob(state.core.params, z, batch["plan_action"]).mean())
    history = []
    for i in range(100):
        state, metrics = update(state, batch, jax.random.PRNGKey(i))
        history.append({k: float(v) for k, v in metrics.items()})
    assert history[-1]["total_loss"] < 0.5 * history[0]["total_loss"]
    assert history[-1]["energy_loss"] < history[0]["energy_loss"]
    z = agent.model.encode(state.core.params, batch["obs"])
    after = float(agent.model.pi_log_prob(state.core.params, z, batch["plan_action"]).mean())
    assert after > before + 1.0


def test_energy_switch_changes_planning_and_skips_its_training():
    """use_energy=False plans on J without eta * F and leaves the energy untouched by updates."""
    on, off = _agent(), _agent(use_energy=False)
    state = on.init(jax.random.PRNGKey(0))
    # A non-trivial energy: F's head starts at zero (constant logits would not change the plan).
    leaves, treedef = jax.tree.flatten(state.energy.params)
    noisy = [x + 0.3 * jax.random.normal(jax.random.PRNGKey(i), x.shape) for i, x in enumerate(leaves)]
    state = state.replace(energy=state.energy.replace(params=jax.tree.unflatten(treedef, noisy)))
    obs, plan, key = jnp.ones(6), jnp.zeros((3, 2)), jax.random.PRNGKey(3)
    _, plan_on, _ = on.act(state, obs, plan, key, True)
    _, plan_off, _ = off.act(state, obs, plan, key, True)
    assert not np.allclose(plan_on, plan_off)
    new_state, metrics = jax.jit(off.update)(state, _batch(jax.random.PRNGKey(1)), key)
    assert "energy_loss" not in metrics
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state.energy), jax.tree.leaves(state.energy)))


def test_act_reports_a_finite_prior_divergence_and_respects_action_bounds():
    """act returns an action in [-1, 1], a plan of shape [H, A] and a finite prior-divergence estimate."""
    agent = _agent()
    state = agent.init(jax.random.PRNGKey(0))
    action, plan, aux = jax.jit(lambda o, p, k: agent.act(state, o, p, k, False))(
        jnp.ones(6), jnp.zeros((3, 2)), jax.random.PRNGKey(1))
    assert action.shape == (2,) and plan.shape == (3, 2)
    assert bool(jnp.all(jnp.abs(action) <= 1.0))
    assert bool(jnp.isfinite(aux["prior_divergence"]))


def test_energy_diagnostics_tell_which_negatives_f_cannot_separate():
    """When the prior samples the same action distribution as the data, F scores real actions above
    prior samples only about half the time, while it still beats uniform actions; the hardest-kind
    fractions sum to one."""
    energy = Energy(EnergyConfig(hidden=(64, 64), lr=3e-3), latent_dim=4, action_size=2)
    state = energy.init(jax.random.PRNGKey(0))
    update = jax.jit(energy.update)

    def sample(z, key):  # the data's (and the prior's) action distribution given z
        return jnp.clip(jnp.tanh(2 * z[:, :2]) + 0.2 * jax.random.normal(key, (z.shape[0], 2)), -1, 1)

    for i in range(200):
        k_z, k_real, k_prior, k_up = jax.random.split(jax.random.PRNGKey(i + 1), 4)
        z = jax.random.normal(k_z, (512, 4))
        state, metrics = update(state, z, sample(z, k_real), sample(z, k_prior), jnp.ones(512), k_up)
    assert 0.4 < float(metrics["energy_beats_prior"]) < 0.6
    assert float(metrics["energy_beats_uniform"]) > 0.8
    total = sum(float(metrics[f"energy_hardest_{k}"]) for k in ("prior", "noisy", "uniform"))
    assert abs(total - 1.0) < 1e-5
