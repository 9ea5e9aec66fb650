"""Online training from an experiment config: build the env, the agent and its regime's loop
(off-policy, on-policy or first-order), and hand them to the host loop (`train.host`).

    run_dir = run_online(OnlineConfig(agent=MBDPOConfig(), loop=LoopOptions(env="toy/pendulum")))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from mbdpo_jax import envs
from mbdpo_jax.agents import make_agent
from mbdpo_jax.data.datasets import save_replay
from mbdpo_jax.train import host
from mbdpo_jax.train.config import LoopOptions, OnlineConfig, to_dict
from mbdpo_jax.train.first_order import FirstOrderLoopConfig, FirstOrderTrainer
from mbdpo_jax.train.off_policy import LoopConfig, OffPolicyTrainer
from mbdpo_jax.train.on_policy import OnPolicyLoopConfig, OnPolicyTrainer
from mbdpo_jax.train.run_dir import prepare_run_dir

PROGRESS_REPORTS_PER_CHUNK = 20  # host callbacks per chunk: cost measured in benchmarks/progress_overhead.py
RESUMABLE_CHANGES = ("loop.progress", "loop.save_dataset")


def loop_config(loop: LoopOptions, spec: envs.EnvSpec) -> LoopConfig:
    """The off-policy loop's static settings from the experiment options."""
    seed_steps = loop.seed_steps if loop.seed_steps is not None else max(1000, 5 * spec.episode_length)
    iterations = loop.eval_every // loop.num_envs
    every = max(1, iterations // PROGRESS_REPORTS_PER_CHUNK) if loop.progress else 0
    return LoopConfig(num_envs=loop.num_envs, steps_per_chunk=loop.eval_every, seed_steps=seed_steps,
                      updates_per_step=loop.updates_per_step, buffer_size=min(loop.buffer_size, loop.steps),
                      eval_episodes=loop.eval_episodes, seed_burst=loop.seed_burst, progress_every=every)


def first_order_loop_config(loop: LoopOptions, window: int) -> FirstOrderLoopConfig:
    """The first-order loop's static settings from the experiment options."""
    windows = loop.eval_every // max(1, loop.num_envs * window)
    every = max(1, windows // PROGRESS_REPORTS_PER_CHUNK) if loop.progress else 0
    return FirstOrderLoopConfig(num_envs=loop.num_envs, window=window, steps_per_chunk=loop.eval_every,
                                eval_episodes=loop.eval_episodes, progress_every=every)


def on_policy_loop_config(loop: LoopOptions, agent: Any) -> OnPolicyLoopConfig:
    """The on-policy loop's static settings from the experiment options and the agent's rollout shape."""
    iterations = loop.eval_every // max(1, loop.num_envs * agent.num_steps)
    every = max(1, iterations // PROGRESS_REPORTS_PER_CHUNK) if loop.progress else 0
    return OnPolicyLoopConfig(num_envs=loop.num_envs, num_steps=agent.num_steps, epochs=agent.epochs,
                              minibatches=agent.minibatches, steps_per_chunk=loop.eval_every,
                              eval_episodes=loop.eval_episodes, progress_every=every)


Trainer = OffPolicyTrainer | OnPolicyTrainer | FirstOrderTrainer


def build_trainer(cfg: OnlineConfig) -> Trainer:
    """Validate the config, make the env and agent, and wire the agent's training regime (off-policy,
    on-policy or first-order, from the agent's `regime`; nothing compiles yet)."""
    cfg.validate()
    env = envs.make(cfg.loop.env, action_repeat=cfg.loop.action_repeat)
    agent = make_agent(cfg.agent, env.spec)
    regime = getattr(agent, "regime", "off_policy")
    if regime != "off_policy" and cfg.loop.save_dataset:
        raise ValueError(f"--save-dataset needs a replay, which {cfg.algo} ({regime.replace('_', '-')}) does not keep")
    if regime == "first_order":
        return FirstOrderTrainer(agent, env, first_order_loop_config(cfg.loop, agent.cfg.window))
    if regime == "on_policy":
        return OnPolicyTrainer(agent, env, on_policy_loop_config(cfg.loop, agent))
    return OffPolicyTrainer(agent, env, loop_config(cfg.loop, env.spec))


def online_program(trainer: Trainer, loop: LoopOptions,
                   initial_agent: Any = None) -> host.Program:
    """The host loop's view of online training (either regime's trainer). initial_agent: agent state to start from instead
    of a fresh one (fine-tuning); a resumed run restores its own."""
    key = jax.random.PRNGKey(loop.seed)
    eval_key = jax.random.fold_in(key, 1)
    evaluate = jax.jit(trainer.evaluate)

    def init():
        carry = jax.jit(trainer.init)(key)
        return carry if initial_agent is None else carry.replace(agent=initial_agent)

    def evaluation(carry, env_steps):
        return host.floats(evaluate(carry.agent, jax.random.fold_in(eval_key, env_steps)))

    metric_names = lambda: jax.eval_shape(trainer.train_chunk, jax.eval_shape(trainer.init, key))[1]
    return host.Program(init=init, chunk=jax.jit(trainer.train_chunk, donate_argnums=0), evaluate=evaluation,
                        count=lambda carry: int(carry.env_steps), total=loop.steps, metric_names=metric_names,
                        label=loop.env)


def train_online(trainer: Trainer, loop: LoopOptions, run_dir: Path, initial_agent: Any = None) -> Path:
    """Run the host loop over the trainer's chunks in a prepared run directory; returns it."""
    carry = host.run_program(online_program(trainer, loop, initial_agent), run_dir, loop.progress)
    if loop.save_dataset:
        save_replay(run_dir / "dataset", carry.buffer, trainer.env.spec, source=f"replay of online run {run_dir}",
                    overwrite=True)
    return run_dir


def run_online(cfg: OnlineConfig) -> Path:
    """Train (or resume) an online run; returns the run directory."""
    trainer = build_trainer(cfg)
    defaults = to_dict(OnlineConfig(agent=type(cfg.agent)()))
    run_dir = prepare_run_dir(cfg.resolved_run_dir(), to_dict(cfg), resume_keys_ignored=RESUMABLE_CHANGES,
                              defaults=defaults)
    return train_online(trainer, cfg.loop, run_dir)
