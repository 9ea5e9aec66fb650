"""MBDPO's agent pieces: the energy classifier, its place in the world-model update, and planning with it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbdpo_jax.agents.mbdpo import MBDPO, MBDPOConfig
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models.classifier import ActionEnergy, EnergyConfig, Normalizer
from mbdpo_jax.models.learner import LearnerConfig
from mbdpo_jax.planners.mbd import MBDConfig


def _train_energy(energy, sample, steps, batch=256, seed=0):
    """Adam on F's loss alone, with the normaliser's EMA, on samples (z, real, prior) = sample(key)."""
    params, stats, tx = energy.init(jax.random.PRNGKey(seed)), Normalizer.create(), optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, stats, key):
        k_data, k_loss = jax.random.split(key)
        z, real, prior = sample(k_data)
        (loss, (logits, metrics)), grads = jax.value_and_grad(energy.loss, has_aux=True)(
            params, z, real, prior, jnp.ones(z.shape[0]), k_loss)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, stats.update(logits, 0.99), metrics

    for i in range(steps):
        params, opt, stats, metrics = step(params, opt, stats, jax.random.PRNGKey(i + 1))
    return params, stats, metrics


def test_energy_separates_replay_actions_from_negatives():
    """On a toy dataset whose actions follow a = tanh(2 z_0), F learns to tell them from the hard
    negatives (prior and uniform actions): accuracy well above chance, clipped normalised scores."""
    energy = ActionEnergy(EnergyConfig(energy_hidden=(64, 64)), latent_size=4, action_size=2)

    def sample(key):
        k_z, k_prior = jax.random.split(key)
        z = jax.random.normal(k_z, (256, 4))
        return z, jnp.tanh(2 * z[:, :2]), jax.random.uniform(k_prior, (256, 2), minval=-1, maxval=1)

    params, stats, metrics = _train_energy(energy, sample, 300)
    assert float(metrics["energy_accuracy"]) > 0.8
    z = jax.random.normal(jax.random.PRNGKey(999), (512, 4))
    real_score = energy.normalized(params, stats, z, jnp.tanh(2 * z[:, :2]))
    fake_score = energy.normalized(params, stats, z, jax.random.uniform(jax.random.PRNGKey(7), (512, 2), minval=-1,
                                                                         maxval=1))
    assert float(real_score.mean()) > float(fake_score.mean()) + 1.0
    assert float(jnp.abs(real_score).max()) <= EnergyConfig().energy_clip


def test_energy_diagnostics_tell_which_negatives_f_cannot_separate():
    """When the prior samples the same action distribution as the data, F scores real actions above
    prior samples only about half the time, while it still beats uniform actions; the hardest-kind
    fractions sum to one."""
    energy = ActionEnergy(EnergyConfig(energy_hidden=(64, 64)), latent_size=4, action_size=2)

    def sample(key):
        k_z, k_real, k_prior = jax.random.split(key, 3)
        z = jax.random.normal(k_z, (512, 4))
        draw = lambda k: jnp.clip(jnp.tanh(2 * z[:, :2]) + 0.2 * jax.random.normal(k, (512, 2)), -1, 1)
        return z, draw(k_real), draw(k_prior)

    _, _, metrics = _train_energy(energy, sample, 200)
    assert 0.4 < float(metrics["energy_beats_prior"]) < 0.6
    assert float(metrics["energy_beats_uniform"]) > 0.8
    total = sum(float(metrics[f"energy_hardest_{k}"]) for k in ("prior", "noisy", "uniform"))
    assert abs(total - 1.0) < 1e-5


def _agent(**overrides):
    spec = EnvSpec("test", obs_size=6, action_size=2, episode_length=100)
    planner = MBDConfig(diffusion_steps=4, num_samples=32, num_elites=4, num_pi_trajs=4)
    cfg = MBDPOConfig(learner=LearnerConfig(model_size="tiny", batch_size=32), planner=planner)
    return MBDPO(dataclasses.replace(cfg, **overrides), spec)


def _batch(key, horizon=3, batch=32):
    ks = jax.random.split(key, 2)
    obs = jax.random.normal(ks[0], (horizon + 1, batch, 6))
    action = jnp.tanh(obs[:-1, :, :2])
    return {"obs": obs[:-1], "next_obs": obs[1:], "action": action, "plan_action": action,
            "planned": jnp.ones((horizon, batch)), "reward": obs[:-1, :, 2], "done": jnp.zeros((horizon, batch)),
            "end": jnp.zeros((horizon, batch))}


def test_mbdpo_update_trains_model_prior_and_energy():
    """Repeated MBDPO updates on one batch lower the world-model losses and the energy loss; F's
    parameters live in the world model's parameters and optimiser (one joint gradient clip)."""
    agent = _agent()
    state = agent.init(jax.random.PRNGKey(0))
    assert "energy" in state.learner.params
    batch = _batch(jax.random.PRNGKey(1))
    update = jax.jit(agent.update)
    history = []
    for i in range(100):
        state, metrics = update(state, batch, jax.random.PRNGKey(i))
        history.append({k: float(v) for k, v in metrics.items()})
    assert history[-1]["total_loss"] < 0.5 * history[0]["total_loss"]
    assert history[-1]["energy_loss"] < history[0]["energy_loss"]


def test_distillation_is_off_by_default_and_pulls_the_prior_to_the_planner_when_on():
    """distill_coef defaults to 0 (the official behaviour: no replay extras stored); with it on, updates
    raise the prior's log-likelihood of the planner's actions."""
    assert _agent().replay_extras == {}
    agent = _agent(distill_coef=1.0)
    assert set(agent.replay_extras) == {"plan_action", "planned"}
    state = agent.init(jax.random.PRNGKey(0))
    batch = _batch(jax.random.PRNGKey(1))
    log_lik = lambda s: float(agent.model.pi_log_prob(s.learner.params, agent.model.encode(
        s.learner.params, batch["obs"]), batch["plan_action"]).mean())
    before = log_lik(state)
    update = jax.jit(agent.update)
    for i in range(100):
        state, _ = update(state, batch, jax.random.PRNGKey(i))
    assert log_lik(state) > before + 1.0


def test_energy_switch_changes_planning_and_skips_its_training():
    """use_energy=False plans on J without eta * F and has no energy parameters to train."""
    on, off = _agent(), _agent(use_energy=False)
    state = on.init(jax.random.PRNGKey(0))
    # A non-trivial energy: F's head starts at zero (constant logits would not change the plan).
    leaves, treedef = jax.tree.flatten(state.learner.params["energy"])
    noisy = [x + 0.3 * jax.random.normal(jax.random.PRNGKey(i), x.shape) for i, x in enumerate(leaves)]
    params = {**state.learner.params, "energy": jax.tree.unflatten(treedef, noisy)}
    state = state.replace(learner=state.learner.replace(params=params))
    obs, plan, key = jnp.ones(6), jnp.zeros((3, 2)), jax.random.PRNGKey(3)
    _, plan_on, _ = on.act(state, obs, plan, key, True)
    _, plan_off, _ = off.act(state, obs, plan, key, True)
    assert not np.allclose(plan_on, plan_off)
    off_state = off.init(jax.random.PRNGKey(0))
    assert "energy" not in off_state.learner.params
    _, metrics = jax.jit(off.update)(off_state, _batch(jax.random.PRNGKey(1)), key)
    assert "energy_loss" not in metrics


def test_act_reports_a_finite_prior_divergence_and_respects_action_bounds():
    """act returns an action in [-1, 1], a plan of shape [H, A] and a finite prior-divergence estimate."""
    agent = _agent()
    state = agent.init(jax.random.PRNGKey(0))
    action, plan, aux = jax.jit(lambda o, p, k: agent.act(state, o, p, k, False))(
        jnp.ones(6), jnp.zeros((3, 2)), jax.random.PRNGKey(1))
    assert action.shape == (2,) and plan.shape == (3, 2)
    assert bool(jnp.all(jnp.abs(action) <= 1.0))
    assert bool(jnp.isfinite(aux["prior_divergence"]))


def test_energy_normaliser_tracks_emas_of_the_batch_mean_and_the_batch_std():
    """F's normaliser keeps EMA(batch mean) and EMA(batch std) (MBDPO's code), not an EMA of the
    variance around the running mean; normalised logits are clipped."""
    stats = Normalizer.create()
    logits = jnp.array([1.0, 3.0, 5.0, 7.0])
    stats = stats.update(logits, momentum=0.9)
    np.testing.assert_allclose(float(stats.mean), 0.1 * 4.0, rtol=1e-6)
    np.testing.assert_allclose(float(stats.std), 0.9 * 1.0 + 0.1 * float(jnp.std(logits)), rtol=1e-6)
    assert float(jnp.max(jnp.abs(stats(100 * logits, clip=5.0)))) == 5.0


def test_energy_trains_on_the_rolled_latents_with_the_pre_update_prior(monkeypatch):
    """F's loss sees the world model's dynamics-rolled latents of the batch (detached) and negatives
    from the prior at the parameters before the update, and is 0.5 (BCE_pos + BCE_neg)."""
    from mbdpo_jax.models import losses

    agent = _agent()
    state = agent.init(jax.random.PRNGKey(0))
    batch = _batch(jax.random.PRNGKey(1))
    seen = {}
    real_loss = agent.energy.loss

    def recording(params, x, real, prior_action, weight, key):
        jax.debug.callback(lambda x, real: seen.update(x=x, real=real), x, real)  # the values F's loss sees
        return real_loss(params, x, real, prior_action, weight, key)

    monkeypatch.setattr(agent.energy, "loss", recording)
    jax.block_until_ready(jax.jit(agent.update)(state, batch, jax.random.PRNGKey(2)))
    jax.effects_barrier()
    params = state.learner.params
    _, (_, zs, _) = losses.world_model_loss(agent.model, agent.cfg.learner.losses, params, params["qs"], batch,
                                            jax.random.PRNGKey(0), agent.learner.discount)
    assert seen["x"].shape == zs[:-1].shape
    np.testing.assert_allclose(np.asarray(seen["x"][0]), np.asarray(zs[0]), atol=1e-5)  # z_0 = encode(obs_0)
    z = jnp.zeros((5, 4))
    energy = ActionEnergy(EnergyConfig(energy_hidden=(8,)), latent_size=4, action_size=2)
    p = jax.tree.map(lambda x: x + 0.5, energy.init(jax.random.PRNGKey(3)))
    a = jnp.zeros((5, 2))
    loss, _ = energy.loss(p, z, a, a, jnp.ones(5), jax.random.PRNGKey(4))
    fake, _ = energy.hard_negatives(p, z, a, jax.random.PRNGKey(4))
    bce = 0.5 * (optax.sigmoid_binary_cross_entropy(energy.logit(p, z, a), 1.0)
                 + optax.sigmoid_binary_cross_entropy(energy.logit(p, z, fake), 0.0))
    np.testing.assert_allclose(float(loss), float(jnp.mean(bce)), rtol=1e-5)
