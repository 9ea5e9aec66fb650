"""Agents, one module per algorithm, each composed from the shared pieces of models/ and planners/.

`ALGORITHMS` maps a name to its (config class, agent class); `make_agent` builds one. Adding an
algorithm: write its module (a frozen config dataclass with `validate()`, and an agent class
following one protocol of `agents.protocols`), then register it here.
"""
from __future__ import annotations

import importlib
from typing import Any

from mbdpo_jax.envs.base import EnvSpec

# name -> (module, config class name, agent class name); modules are imported on first use.
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "mbdpo": ("mbdpo_jax.agents.mbdpo", "MBDPOConfig", "MBDPO"),
    "tdmpc2": ("mbdpo_jax.agents.tdmpc2", "TDMPC2Config", "TDMPC2"),
    "pwm": ("mbdpo_jax.agents.pwm", "PWMConfig", "PWM"),
    "shac": ("mbdpo_jax.agents.shac", "SHACConfig", "SHAC"),
    "ppo": ("mbdpo_jax.agents.ppo", "PPOConfig", "PPO"),
    "da-mdp-ppo": ("mbdpo_jax.agents.da_mdp_ppo", "DAMDPPOConfig", "DAMDPPO"),
    "reppo": ("mbdpo_jax.agents.reppo", "REPPOConfig", "REPPO"),
    "da-mdp-reppo": ("mbdpo_jax.agents.da_mdp_reppo", "DAMDPREPPOConfig", "DAMDPREPPO"),
    "da-mdp-wpo": ("mbdpo_jax.agents.da_mdp_wpo", "DAMDPWPOConfig", "DAMDPWPO"),
}
ALGORITHMS = tuple(_REGISTRY)


class UnknownAlgorithmError(ValueError):
    """An algorithm name that is not registered."""


def _entry(algo: str) -> tuple[Any, Any]:
    if algo not in _REGISTRY:
        raise UnknownAlgorithmError(f"unknown algorithm {algo!r}; allowed: {', '.join(ALGORITHMS)}")
    module, config_name, agent_name = _REGISTRY[algo]
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, agent_name)


def config_class(algo: str) -> type:
    """The config dataclass of `algo`."""
    return _entry(algo)[0]


def algorithm_of(config: Any) -> str:
    """The registered name of an agent config instance."""
    for name in ALGORITHMS:
        if type(config) is config_class(name):
            return name
    raise UnknownAlgorithmError(f"{type(config).__name__} is not the config of a registered algorithm "
                                f"({', '.join(ALGORITHMS)})")


def make_agent(config: Any, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None) -> Any:
    """The agent of `config` (an algorithm's config instance) for env `spec`."""
    _, agent_cls = _entry(algorithm_of(config))
    return agent_cls(config, spec, num_tasks, action_masks)
