"""Policies as pure functions of plain parameter pytrees: the diffusion chain of DA-MDP (`diffusion`)."""
from mbdpo_jax.policies.diffusion import Chain, DiffusionPolicy, DiffusionPolicyConfig

__all__ = ["Chain", "DiffusionPolicy", "DiffusionPolicyConfig"]
