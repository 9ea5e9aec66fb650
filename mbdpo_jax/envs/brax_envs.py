"""`brax/<name>`: brax's differentiable MJX-backed locomotion and manipulation envs.

Each env is `brax.envs.get_environment(name, backend="mjx")`, used raw (none of brax's wrappers)
with brax's `State` in `EnvState.inner`. Actions in [-1, 1] are mapped affinely onto the actuator
ctrlrange, which is not [-1, 1] for humanoid and humanoidstandup ([-0.4, 0.4]),
inverted_pendulum ([-3, 3]) and pusher ([-2, 2]); brax's control costs see the rescaled action.
brax's `done` (unhealthy ant, hopper, humanoid, walker2d; fallen pendulums) is termination.

Differentiability: MJX's constraint solver runs a `lax.while_loop` (not reverse-differentiable)
unless `opt.iterations == 1`. brax sets that (Newton, 1 iteration) only for ant and humanoid; we
set `opt.iterations = 1` for all of them, so `jax.grad` through `step` works everywhere. The
Newton solver is warm-started, so one iteration changes the physics little.
Names are kebab-case: 'inverted_double_pendulum' -> 'brax/inverted-double-pendulum'. brax's
'swimmer' is left out: it has no MJX version ("Unsupported backend: mjx").

brax is imported only when an env is built.
"""
from __future__ import annotations

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.envs.wrappers import BackendAdapter, actuator_range, flat_obs_size

BRAX_NAMES: tuple[str, ...] = (
    "ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "inverted_pendulum",
    "inverted_double_pendulum", "pusher", "reacher", "walker2d",
)
TASKS: dict[str, str] = {n.replace("_", "-"): n for n in BRAX_NAMES}
# Envs whose `done` can end an episode early (unhealthy or fallen), i.e. episodic tasks.
TERMINATING = frozenset({"ant", "hopper", "humanoid", "walker2d", "inverted_pendulum", "inverted_double_pendulum"})
EPISODE_LENGTH = 1000


def build(task: str) -> tuple[BackendAdapter, int]:
    """Return (raw env, default action repeat) for `brax/<task>`; differentiable, 1000 steps."""
    from brax import envs  # heavy; imported on demand

    env = envs.get_environment(TASKS[task], backend="mjx")
    env.sys = env.sys.tree_replace({"opt.iterations": 1})  # reverse-mode through the solver
    name = f"brax/{task}"
    spec = EnvSpec(name=name, obs_size=flat_obs_size(name, env.reset),
                   action_size=int(env.action_size), episode_length=EPISODE_LENGTH,
                   differentiable=True, terminates=TASKS[task] in TERMINATING)
    return BackendAdapter(env, spec, actuator_range(env.sys.mj_model)), 1
