"""Default settings by where the user runs: the published ones on an accelerator, a small setting
that learns on a laptop CPU in minutes.

    agent_cfg, loop = preset_defaults("auto", "mbdpo")   # laptop on a CPU, paper on a GPU/TPU

A preset only sets defaults: every flag given on the command line overrides it.
"""
from __future__ import annotations

from typing import Any

import jax

from mbdpo_jax import agents
from mbdpo_jax.train.config import LoopOptions, OnlineConfig, get_flat, replace_flat

PRESETS = ("auto", "laptop", "paper")

# Shrunk for 2 CPU cores (measured on dmc/cartpole-swingup; see the README): the 'tiny' world model,
# 4 envs, one update per env step, fewer planner candidates, and on DMC tasks action repeat 4 (as
# PlaNet and Dreamer use on DMC; TD-MPC2 uses 2): 12k agent steps are 48 episodes of 1000 physics steps.
LAPTOP_LOOP = dict(num_envs=4, updates_per_step=1.0, steps=12_000, seed_steps=1_000, eval_every=3_000,
                   eval_episodes=4)
LAPTOP_DMC_ACTION_REPEAT = 4
_PLANNING = dict(model_size="tiny", batch_size=128, num_samples=64, num_elites=8, num_pi_trajs=4)
LAPTOP_AGENT = {
    "mbdpo": dict(_PLANNING, diffusion_steps=8),
    "tdmpc2": dict(_PLANNING, iterations=4),
    # PWM's actor-critic shrunk as well (published: actor [400, 200, 100], critics [400, 200]); a quarter
    # of an update per env step: one PWM update is a 16-step world-model step plus 32 critic steps.
    "pwm": dict(model_size="tiny", batch_size=64, actor_hidden=(128, 64), critic_hidden=(128, 128),
                updates_per_step=0.25),
    # SHAC (measured on brax/inverted-pendulum, 16 envs, 204.8k steps): 8-step windows (with 32-step ones
    # the actor gradient norm reaches 1e4-1e9 once episodes grow, best eval return 113), exploration std
    # e^-2 (with e^-1 the noise alone topples the pendulum within ~5 steps), non-finite actor gradients
    # skipped (a run with 'raise' turned non-finite between 61k and 82k steps, which stops a run).
    "shac": dict(window=8, init_log_std=-2.0, on_nonfinite="skip"),
    # PPO (measured on dmc/cartpole-balance, action repeat 4, 32 envs x 64 steps, 3 seeds, 8 eval episodes):
    # reward scale 1 (Playground's 10 reached 1000, 997, 752 at 307k steps; 1: 1000, 999, 999); 8 epochs
    # (4: 615, 645, 630); learning rate 1e-3 (3e-4: 360, 554, 460).
    "ppo": dict(num_steps=64, epochs=8, minibatches=8, policy_hidden=(64, 64), value_hidden=(64, 64),
                reward_scale=1.0),
    # DA-MDP:PPO: 4 denoising steps, small score and value nets, gamma 0.9975 and lambda 0.99 per denoising
    # step (0.99 and 0.96 per env step), HL-Gauss bins on [-100, 400] (returns of 4-step action-repeat DMC
    # rewards up to ~400; toy/pendulum's discounted returns reach about -750, so pass --v-min there), lr 1e-3
    # (measured runs: tests/test_da_mdp_ppo.py).
    "da-mdp-ppo": dict(diffusion_steps=4, score_hidden=(64, 64), value_hidden=(64, 64), num_bins=101,
                       v_min=-100.0, v_max=400.0, num_steps=32, epochs=8, minibatches=8, learning_rate=1e-3,
                       gamma=0.9975, gae_lambda=0.99),
    # REPPO (Gaussian; measured on dmc/cartpole-balance, see tests/test_reppo.py): small actor and critic,
    # HL-Gauss bins on [-100, 400] as da-mdp-ppo's, 64 envs x 16 steps (16 x 32: eval 568 at 61k steps, seed 0;
    # 64 x 16: 549-784 from 31k), and multipliers that move 10x faster from alpha 0.1 (the laptop run makes
    # ~1/30 of the paper's updates; at 3e-4 alpha barely moved from 0.01).
    "reppo": dict(actor_hidden=(64, 64), critic_hidden=(64, 64), num_bins=101, v_min=-100.0, v_max=400.0,
                  num_steps=16, epochs=4, minibatches=8, multiplier_lr=3e-3, init_alpha=0.1),
    # DA-MDP:REPPO: da-mdp-ppo's small chain, critic and discounts.
    "da-mdp-reppo": dict(diffusion_steps=4, score_hidden=(64, 64), critic_hidden=(64, 64), num_bins=101,
                         v_min=-100.0, v_max=400.0, num_steps=32, epochs=4, minibatches=8, gamma=0.9975,
                         td_lambda=0.99),
}


# First-order learners step many envs per window: chunks are whole windows of num_envs x window steps.
# On-policy learners likewise: chunks are whole rollouts of num_envs x num_steps.
ALGO_LOOP = {"shac": dict(num_envs=64, steps=4_096_000, eval_every=20_480),  # 10 windows of 64 x 32
             # Playground's DMC PPO: 2048 envs, ~60M steps, 10 evaluations; rollouts of 2048 x 480 steps
             "ppo": dict(num_envs=2048, steps=58_982_400, eval_every=5_898_240),
             # DA-MDP:PPO (reference: 2048 envs, 50M steps): 10 evaluations of 153 rollouts of 2048 x 16 env steps
             # (128 augmented steps each at K = 8)
             "da-mdp-ppo": dict(num_envs=2048, steps=50_135_040, eval_every=5_013_504),
             # REPPO (DA-MDP reference's REPPO batch): 10 evaluations of 38 rollouts of 1024 x 128 env steps
             "reppo": dict(num_envs=1024, steps=49_807_360, eval_every=4_980_736),
             # DA-MDP:REPPO (reference: 1024 envs, 50M steps): 10 evaluations of 304 rollouts of 1024 x 16 env steps
             "da-mdp-reppo": dict(num_envs=1024, steps=49_807_360, eval_every=4_980_736)}
LAPTOP_ALGO_LOOP = {"shac": dict(num_envs=16, steps=204_800, eval_every=20_480),  # 160 windows of 16 x 8
                    "ppo": dict(num_envs=32, steps=307_200, eval_every=20_480),  # 150 rollouts of 32 x 64
                    # DA-MDP:PPO: 500 rollouts of 16 x 32 (dmc/cartpole-balance, seed 0: training return ~990 by 225k)
                    "da-mdp-ppo": dict(num_envs=16, steps=256_000, eval_every=10_240),
                    "reppo": dict(num_envs=64, steps=102_400, eval_every=10_240),  # 100 rollouts of 64 x 16
                    "da-mdp-reppo": dict(num_envs=16, steps=102_400, eval_every=10_240)}
# DA-MDP:WPO: DA-MDP:REPPO's batch and loop (the reference runs both with 1024 envs x 128 augmented steps for 50M
# env steps), and on a laptop DA-MDP:REPPO's small chain, critic, discounts and loop.
LAPTOP_AGENT["da-mdp-wpo"] = dict(LAPTOP_AGENT["da-mdp-reppo"])
ALGO_LOOP["da-mdp-wpo"] = dict(ALGO_LOOP["da-mdp-reppo"])
LAPTOP_ALGO_LOOP["da-mdp-wpo"] = dict(LAPTOP_ALGO_LOOP["da-mdp-reppo"])


REPLAY_SETTINGS = ("updates_per_step", "seed_steps")
"""Loop settings only the off-policy loop reads."""


def laptop_settings(algo: str) -> dict:
    """The settings the laptop preset changes for `algo` (loop and agent), by flag name. The learners
    with loop settings of their own (LAPTOP_ALGO_LOOP: the first-order and on-policy ones) keep no
    replay, so the replay's settings are left out of theirs."""
    loop = LAPTOP_LOOP if algo not in LAPTOP_ALGO_LOOP else {
        k: v for k, v in LAPTOP_LOOP.items() if k not in REPLAY_SETTINGS}
    return {**loop, **LAPTOP_ALGO_LOOP.get(algo, {}), **LAPTOP_AGENT.get(algo, {})}


def resolve(preset: str) -> str:
    """'auto' -> 'paper' on a GPU or TPU, 'laptop' on a CPU; other names are checked and returned."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    if preset != "auto":
        return preset
    return "laptop" if jax.default_backend() == "cpu" else "paper"


def preset_defaults(preset: str, algo: str) -> tuple[Any, LoopOptions]:
    """(agent config, loop options) of a preset for `algo`."""
    cfg = replace_flat(OnlineConfig(agent=agents.config_class(algo)(), loop=LoopOptions()), **ALGO_LOOP.get(algo, {}))
    if resolve(preset) == "laptop":
        cfg = replace_flat(cfg, **laptop_settings(algo))
    return cfg.agent, cfg.loop


def finalize(preset: str, cfg: OnlineConfig) -> OnlineConfig:
    """Settings that depend on the env as well: the laptop preset's action repeat on dmc/ tasks, when
    --action-repeat is not given."""
    loop = cfg.loop
    if resolve(preset) == "laptop" and loop.action_repeat is None and loop.env.startswith("dmc/"):
        return replace_flat(cfg, action_repeat=LAPTOP_DMC_ACTION_REPEAT)
    return cfg


def describe(preset: str, cfg: OnlineConfig) -> str:
    """The first line a run prints: which preset was chosen, the settings it shrinks (as this run has
    them, flags included), and how to get the others."""
    name, algo = resolve(preset), cfg.algo
    chosen = f"preset {name}" + (f" (auto: {jax.default_backend()})" if preset == "auto" else "")
    keys = {**laptop_settings(algo), "action_repeat": None}
    values = ", ".join(f"{k}={get_flat(cfg, k)}" for k in keys)
    if name == "laptop":
        return f"{algo}: {chosen}, small settings for a CPU ({values}); --preset paper for the published ones"
    return f"{algo}: {chosen}, the published settings ({values}); --preset laptop for a small CPU setting"
