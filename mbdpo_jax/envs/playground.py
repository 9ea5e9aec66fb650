"""`dmc/<task>`: the 25 DeepMind Control Suite tasks of MuJoCo Playground on MJX.

Tasks are built with `registry.load(name, config_overrides={"impl": "jax"})`: the MJX-JAX
implementation (the default warp one is far slower on CPU and not differentiable). We use the raw
playground env, not its training wrappers, whose auto-reset drops the final observation, and keep
playground's `State` in `EnvState.inner`. Playground's `done` (set only when the physics produces
NaNs for these tasks) is termination. `spec.differentiable` is True for the tasks whose MJX
constraint solver runs a single iteration (cartpole, point-mass, reacher, ball-in-cup): with more
iterations the solver is a `lax.while_loop`, which reverse-mode autodiff rejects.

Task names are the kebab-case of playground's names: 'CheetahRun' -> 'cheetah-run',
'SwimmerSwimmer6' -> 'swimmer-swimmer6'. Note that playground's ball-in-cup and humanoid tasks
reset to a fixed state (no initial-state noise).

mujoco_playground is imported only when a task is built.
"""
from __future__ import annotations

import re

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.envs.wrappers import BackendAdapter, actuator_range, flat_obs_size

# mujoco_playground.registry.dm_control_suite.ALL_ENVS, listed here so that `names()` needs no
# import of playground (a test checks the two agree).
PLAYGROUND_NAMES: tuple[str, ...] = (
    "AcrobotSwingup", "AcrobotSwingupSparse", "BallInCup", "CartpoleBalance",
    "CartpoleBalanceSparse", "CartpoleSwingup", "CartpoleSwingupSparse", "CheetahRun",
    "FingerSpin", "FingerTurnEasy", "FingerTurnHard", "FishSwim", "HopperHop", "HopperStand",
    "HumanoidStand", "HumanoidWalk", "HumanoidRun", "PendulumSwingup", "PointMass",
    "ReacherEasy", "ReacherHard", "SwimmerSwimmer6", "WalkerRun", "WalkerStand", "WalkerWalk",
)
DEFAULT_ACTION_REPEAT = 2  # as TD-MPC2 uses for DMC


def kebab_case(camel: str) -> str:
    """'CartpoleSwingupSparse' -> 'cartpole-swingup-sparse' (digits stay attached)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", camel).lower()


TASKS: dict[str, str] = {kebab_case(n): n for n in PLAYGROUND_NAMES}


def build(task: str) -> tuple[BackendAdapter, int]:
    """Return (raw env, default action repeat) for `dmc/<task>`.

    The raw spec's episode_length is playground's (1000 control steps); action repeat divides it.
    """
    from mujoco_playground import registry  # heavy; imported on demand

    config = registry.get_default_config(TASKS[task])
    env = registry.load(TASKS[task], config=config, config_overrides={"impl": "jax"})
    name = f"dmc/{task}"
    spec = EnvSpec(name=name, obs_size=flat_obs_size(name, env.reset),
                   action_size=int(env.action_size), episode_length=int(config.episode_length),
                   differentiable=int(env.mj_model.opt.iterations) == 1)
    return BackendAdapter(env, spec, actuator_range(env.mj_model)), DEFAULT_ACTION_REPEAT
