"""Interoperability with other implementations' checkpoints.

`tdmpc2`: TD-MPC2 / MBDPO PyTorch world models (nicklashansen/tdmpc2; Hansen et al., arXiv 2310.16828).
"""
from mbdpo_jax.interop.tdmpc2 import (StateDictError, infer_config, inferred_preset, load_checkpoint,
                                      load_state_dict, params_from_tdmpc2_state_dict)

__all__ = ["StateDictError", "infer_config", "inferred_preset", "load_checkpoint", "load_state_dict",
           "params_from_tdmpc2_state_dict"]
