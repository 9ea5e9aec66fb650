"""Offline pretraining on several tasks' datasets, then fine-tuning online from it."""
import csv

import jax
import numpy as np
import pytest

from experiments import collect
from mbdpo_jax.train import checkpoint
from mbdpo_jax.agents.mbdpo import MBDPOConfig
from mbdpo_jax.train.config import FinetuneConfig, LoopOptions, PretrainConfig, PretrainOptions, replace_flat
from mbdpo_jax.train.offline import finetune, load_pretrained, pretrain

SMALL_AGENT = dict(model_size="tiny", batch_size=32, num_samples=16, num_elites=4, num_pi_trajs=2, diffusion_steps=3)


def _pretrain_config(**settings):
    return replace_flat(PretrainConfig(agent=MBDPOConfig(), offline=PretrainOptions()), **SMALL_AGENT, **settings)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Random datasets of two toy tasks and a short multi-task pretraining run on them."""
    root = tmp_path_factory.mktemp("offline")
    for env, name in [("toy/pendulum", "pend"), ("toy/point-mass", "pm")]:
        assert collect.main(["--env", env, "--policy", "random", "--steps", "1024", "--num-envs", "4",
                             "--out", str(root / name)]) == 0
    cfg = _pretrain_config(data=(str(root / "pend"), str(root / "pm")), steps=200, eval_every=100, eval_episodes=1,
                           run_dir=str(root / "pre"), progress=False)
    return root, pretrain(cfg)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pretraining_loss_falls_and_every_task_is_evaluated(pretrained):
    """The multi-task world-model loss falls and each task gets its own eval column."""
    _, run_dir = pretrained
    rows = _rows(run_dir / "metrics.csv")
    assert [int(r["updates"]) for r in rows] == [0, 100, 200]
    assert float(rows[-1]["total_loss"]) < float(rows[1]["total_loss"])
    for task in ["toy/pendulum", "toy/point-mass"]:
        assert all(r[f"eval_return/{task}"] != "" for r in rows)
    _, tasks, state = load_pretrained(run_dir)
    assert tasks.names == ("toy/pendulum", "toy/point-mass")
    assert state.learner.params["task_emb"].shape == (2, 96)


def _finetune(pretrained, env, name):
    root, run_dir = pretrained
    cfg = replace_flat(FinetuneConfig(checkpoint=str(run_dir)), env=env, steps=32, eval_every=32, eval_episodes=1,
                       num_envs=2, run_dir=str(root / name), progress=False)
    return finetune(cfg)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_finetune_starts_from_exactly_the_pretrained_parameters(pretrained):
    """On a pretraining task, the fine-tuning run's step-0 agent is the pretrained one, bit for bit."""
    _, run_dir = pretrained
    ft_dir = _finetune(pretrained, "toy/point-mass", "ft-known")
    _, _, pretrained_state = load_pretrained(run_dir)
    step0 = checkpoint.restore(ft_dir / "checkpoints", checkpoint_template(ft_dir), step=0)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(step0.agent), _leaves(pretrained_state)))
    rows = _rows(ft_dir / "metrics.csv")
    assert [int(r["env_steps"]) for r in rows] == [0, 32]


def checkpoint_template(ft_dir):
    """The carry structure of a fine-tuning run (rebuilt as `finetune` builds it)."""
    import json

    from mbdpo_jax import envs
    from mbdpo_jax.agents.task import TaskAgent
    from mbdpo_jax.envs.padded import PaddedEnv
    from mbdpo_jax.train.off_policy import OffPolicyTrainer
    from mbdpo_jax.train.offline import build_agent
    from mbdpo_jax.train.runner import loop_config

    raw = json.loads((ft_dir / "config.json").read_text())
    loop = LoopOptions(**raw["loop"])
    pre_cfg, tasks, _ = load_pretrained(raw["checkpoint"])
    env = envs.make(loop.env)
    trainer = OffPolicyTrainer(TaskAgent(build_agent(pre_cfg.agent, tasks), tasks.names.index(loop.env)),
                               PaddedEnv(env, tasks.obs_size, tasks.action_size), loop_config(loop, env.spec))
    return jax.eval_shape(trainer.init, jax.random.PRNGKey(0))


def test_finetune_on_a_new_task_adds_an_embedding(pretrained):
    """A task outside the pretraining set gets a third task embedding; the pretrained two are kept."""
    _, run_dir = pretrained
    ft_dir = _finetune(pretrained, "toy/multigoal", "ft-new")
    rows = _rows(ft_dir / "metrics.csv")
    assert rows[-1]["eval_return"] != "" and int(rows[-1]["env_steps"]) == 32
    _, _, pre_state = load_pretrained(run_dir)
    assert pre_state.learner.params["task_emb"].shape == (2, 96)


def test_pretrain_rejects_a_missing_dataset(tmp_path):
    """A --data path that is not a dataset stops pretraining with a one-line error naming it."""
    from mbdpo_jax.data.datasets import DatasetError

    with pytest.raises(DatasetError, match="missing: no such directory"):
        pretrain(_pretrain_config(data=(str(tmp_path / "missing"),), run_dir=str(tmp_path / "r")))


def test_multi_task_agent_uses_each_tasks_own_discount(monkeypatch):
    """gamma comes from each task's episode length (TD-MPC2's heuristic), in planning and in TD targets."""
    import jax.numpy as jnp

    from mbdpo_jax.models import imagine, losses
    from mbdpo_jax.models.losses import discount_from_episode_length
    from mbdpo_jax.train.offline import TaskSet, build_agent

    tasks = TaskSet(("long", "short"), (3, 2), (1, 1), (1000, 50), (1, 1))
    agent = build_agent(_pretrain_config().agent, tasks)
    learner = agent.learner
    gammas = [discount_from_episode_length(1000), discount_from_episode_length(50)]
    assert gammas[0] != gammas[1]
    np.testing.assert_allclose(learner.discount_of(jnp.array([0, 1, 1])), [gammas[0], gammas[1], gammas[1]],
                               rtol=1e-6)

    monkeypatch.setattr(agent.model, "q_value", lambda *a, **k: jnp.ones(a[1].shape[:-1]))
    h, b = 3, 4
    batch = {"next_obs": jnp.zeros((h, b, 3)), "reward": jnp.zeros((h, b)), "done": jnp.zeros((h, b)),
             "task": jnp.broadcast_to(jnp.array([0, 1, 0, 1]), (h, b))}
    params = agent.init(jax.random.PRNGKey(0)).learner.params
    _, td = losses.td_targets(agent.model, params, params["qs"], batch, jax.random.PRNGKey(1),
                              learner.discount_of(batch["task"]))
    np.testing.assert_allclose(td[0], [gammas[0], gammas[1], gammas[0], gammas[1]], rtol=1e-6)

    monkeypatch.setattr(agent.model, "reward_value", lambda params, z, a, task=None: jnp.ones(z.shape[:-1]))
    latent = jnp.zeros(agent.model.cfg.latent_dim)
    for task, g in enumerate(gammas):
        value = imagine.trajectory_value(agent.model, params, latent, jnp.zeros((2, h, 1)), jax.random.PRNGKey(2),
                                         learner.discount_of(jnp.int32(task)), task=jnp.int32(task))
        np.testing.assert_allclose(value, [sum(g ** t for t in range(h)) + g ** h] * 2, rtol=1e-5)
