"""TD-MPC2 reference state dicts (PyTorch names and layouts) load into our world model, sizes inferred
from the shapes for every preset, and our encode, next, reward, Q, termination and prior outputs then
agree with an independent float64 implementation of the reference's forward pass to 1e-5 in float32."""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_tdmpc2 import ReferenceWorldModel, np_mlp, reference_state_dict, state_dict_for, to_legacy

from mbdpo_jax.interop import (StateDictError, infer_config, inferred_preset, load_checkpoint, load_state_dict,
                               params_from_tdmpc2_state_dict)
from mbdpo_jax.models.world_model import PRESETS, TASK_DIMS, WorldModel, WorldModelConfig

TOL = dict(atol=1e-5, rtol=1e-5)


def _outputs(model, params, obs, z, act, task, key, target):
    """Every output of our model, in one jitted call (one compile per model, not one per op)."""
    def run(params, target, obs, z, act, task, key):
        out = {"z": model.encode(params, obs, task), "next": model.next(params, z, act, task),
               "reward": model.reward(params, z, act, task), "q": model.Q(params, z, act, task),
               "pi": model.pi_distribution(params, z, task), "action": model.pi(params, z, key, task)[0]}
        if target is not None:
            out["q_target"] = model.Q(params, z, act, task, qs_params=target)
        return out

    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return jax.jit(run)(params, target, f32(obs), f32(z), f32(act), None if task is None else jnp.int32(task), key)


def _check_forward(model, params, sd, batch=2, task=None, target=None, seed=1):
    """encode, next, reward, every (target) Q head, the prior's mean / log-std and a sampled action
    match the float64 reference on random [batch, obs] / [batch, z] inputs."""
    cfg, ref = model.cfg, ReferenceWorldModel(sd)
    rng = np.random.default_rng(seed)
    obs, act = rng.normal(size=(batch, cfg.obs_size)), np.tanh(rng.normal(size=(batch, cfg.action_size)))
    z_ref = ref.encode(obs, task)
    key = jax.random.PRNGKey(seed)
    out = _outputs(model, params, obs, z_ref, act, task, key, target)
    np.testing.assert_allclose(out["z"], z_ref, **TOL)
    np.testing.assert_allclose(out["next"], ref.next(z_ref, act, task), **TOL)
    np.testing.assert_allclose(out["reward"], ref.reward(z_ref, act, task), **TOL)
    np.testing.assert_allclose(out["q"], ref.Q(z_ref, act, task), **TOL)
    if target is not None:
        np.testing.assert_allclose(out["q_target"], ref.Q(z_ref, act, task, target=True), **TOL)
    mean_ref, log_std_ref = ref.pi_distribution(z_ref, task)
    np.testing.assert_allclose(out["pi"][0], mean_ref, **TOL)
    np.testing.assert_allclose(out["pi"][1], log_std_ref, **TOL)
    mask = np.ones(cfg.action_size) if task is None else sd["_action_masks"][task]
    eps = np.asarray(jax.random.normal(key, mean_ref.shape), np.float64)
    np.testing.assert_allclose(out["action"], np.tanh(mean_ref + eps * np.exp(log_std_ref)) * mask, **TOL)


@pytest.mark.parametrize("num_tasks", [1, 3])
def test_reference_weights_give_the_reference_outputs(num_tasks):
    """With the model given, every output (online and EMA-target Q heads included) matches the
    reference in float64 to 1e-5, single-task and multi-task."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=5, action_size=2, num_tasks=num_tasks)
    model = WorldModel(cfg)
    sd = state_dict_for(cfg)
    params, target = params_from_tdmpc2_state_dict(sd, model)
    _check_forward(model, params, sd, batch=7, task=2 if num_tasks > 1 else None, target=target)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_loads_with_inferred_sizes_and_reference_outputs(preset):
    """load_state_dict infers every size of each preset's reference state dict, names the preset,
    takes the log-std range from the reference's buffers, and its model reproduces the reference."""
    enc, mlp, latent, layers, num_q = PRESETS[preset]
    sd = reference_state_dict(5, 2, enc, mlp, latent, layers, num_q, num_bins=101, log_std=(-5.0, 1.0))
    model, params = load_state_dict(sd)
    cfg = model.cfg
    got = (cfg.obs_size, cfg.action_size, cfg.enc_dim, cfg.mlp_dim, cfg.latent_dim, cfg.num_enc_layers,
           cfg.num_q, cfg.num_bins, cfg.num_tasks, cfg.episodic, cfg.log_std_min, cfg.log_std_max)
    assert got == (5, 2, enc, mlp, latent, layers, num_q, 101, 1, False, -5.0, 1.0)
    assert inferred_preset(cfg) == preset and cfg.task_dim == TASK_DIMS[preset] and cfg.simnorm_dim == 8
    _check_forward(model, params, sd, batch=1 if preset == "317M" else 2)


def test_multitask_checkpoint_infers_tasks_embedding_and_action_masks():
    """A multi-task 1M state dict gives num_tasks and task_dim from `_task_emb.weight`, obs_size from
    the encoder input less task_dim, the largest task's action size, the `_action_masks` as the
    model's masks, and the reference's outputs for a task with padded action dims."""
    enc, mlp, latent, layers, num_q = PRESETS["1M"]
    sd = reference_state_dict(6, 3, enc, mlp, latent, layers, num_q, action_dims=[3, 1, 2], task_dim=96)
    model, params = load_state_dict(sd)
    cfg = model.cfg
    assert (cfg.num_tasks, cfg.task_dim, cfg.obs_size, cfg.action_size) == (3, 96, 6, 3)
    assert inferred_preset(cfg) == "1M"
    np.testing.assert_array_equal(model.action_masks, [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    for task in (1, 2):
        _check_forward(model, params, sd, task=task, seed=task)


def test_episodic_state_dict_gets_the_termination_head():
    """A `_termination` head makes the loaded model episodic, with the reference's termination logit."""
    enc, mlp, latent, layers, num_q = PRESETS["tiny"]
    sd = reference_state_dict(4, 2, enc, mlp, latent, layers, num_q, episodic=True)
    model, params = load_state_dict(sd)
    assert model.cfg.episodic
    z = ReferenceWorldModel(sd).encode(np.random.default_rng(0).normal(size=(3, 4)))
    np.testing.assert_allclose(model.termination(params, jnp.asarray(z, jnp.float32)),
                               np_mlp(sd, "_termination", z, 3)[..., 0], **TOL)


def test_full_checkpoint_and_first_release_names_load_the_same_parameters():
    """A full checkpoint {"model": ..., "optim": ...} and the reference's first-release names
    (numbered `_Qs.params.<k>`, `_target_Qs.params.<k>`, no buffers) give the same parameters and
    target Qs as the model state dict; without the buffers the log-std range is our (the reference's)
    default."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=5, action_size=2)
    sd = state_dict_for(cfg)
    model, params = load_state_dict(sd)
    _, target = params_from_tdmpc2_state_dict(sd, model)
    for variant in ({"model": sd, "optim": {"state": {}}}, to_legacy(sd)):
        other, other_params = load_state_dict(variant)
        assert other.cfg == model.cfg
        jax.tree.map(np.testing.assert_array_equal, other_params, params)
        jax.tree.map(np.testing.assert_array_equal, params_from_tdmpc2_state_dict(variant, other)[1], target)
    assert "_Qs.params.9" in to_legacy(sd) and not np.allclose(target["VmapMLP_0"]["Dense_0"]["kernel"],
                                                               params["qs"]["VmapMLP_0"]["Dense_0"]["kernel"])


def test_torch_like_tensors_are_converted():
    """Values with torch's tensor interface (detach / cpu / float / numpy) load like numpy arrays."""
    class FakeTensor:
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def is_floating_point(self):
            return True

        def float(self):
            return self

        def numpy(self):
            return self.a

    cfg = WorldModelConfig.from_preset("tiny", obs_size=3, action_size=1)
    sd = {k: v for k, v in state_dict_for(cfg).items() if not k.endswith(("__batch_size", "__device"))}
    _, params = load_state_dict(sd)
    _, from_tensors = load_state_dict({k: FakeTensor(v) for k, v in sd.items()})
    jax.tree.map(np.testing.assert_array_equal, from_tensors, params)


def test_overrides_set_unstored_fields_and_bad_ones_are_refused():
    """Overrides set fields the reference does not store (vmin, vmax); an unknown field is refused
    naming it and the allowed ones; a log-std range contradicting the buffers and a size contradicting
    the shapes are refused."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=5, action_size=2)
    sd = state_dict_for(cfg)
    model, _ = load_state_dict(sd, vmin=-5.0, vmax=5.0)
    assert (model.cfg.vmin, model.cfg.vmax) == (-5.0, 5.0)
    with pytest.raises(ValueError, match=r"\['latent'\].*allowed:.*latent_dim"):
        infer_config(sd, latent=3)
    with pytest.raises(StateDictError, match="log_std_min=-3.*-10"):
        load_state_dict(sd, log_std_min=-3.0)
    with pytest.raises(StateDictError, match="shape"):
        load_state_dict(sd, mlp_dim=64)


def test_state_dict_of_no_world_model_is_refused_naming_the_missing_entries():
    """A state dict lacking the required entries, or with a pixel encoder, or with a stray entry, is
    refused naming the missing, unsupported or unexpected keys."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=5, action_size=2)
    sd = state_dict_for(cfg)
    with pytest.raises(StateDictError, match="missing '_encoder.state.0.weight'.*'_Qs.params.0.weight'"):
        load_state_dict({"fc.weight": np.zeros((2, 2))})
    with pytest.raises(StateDictError, match="missing '_pi.2.weight'"):
        load_state_dict({k: v for k, v in sd.items() if not k.startswith("_pi.2.")})
    pixel = {("_encoder.rgb." + k[len("_encoder.state."):] if k.startswith("_encoder.state.") else k): v
             for k, v in sd.items()}
    with pytest.raises(StateDictError, match="pixel encoders"):
        load_state_dict(pixel)
    with pytest.raises(StateDictError, match="unexpected.*_extra.0.weight"):
        load_state_dict({**sd, "_extra.0.weight": np.zeros(3)})
    with pytest.raises(StateDictError, match="expected a mapping"):
        load_state_dict([("_pi.2.weight", np.zeros(2))])


def test_reference_comparison_would_catch_flax_layer_norm_epsilon():
    """On near-constant pre-activations (zero biases, tiny inputs), the eps = 1e-6 reference differs
    from ours by far more than the tolerance while eps = 1e-5 agrees: the checks above pin the eps."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=5, action_size=2)
    model = WorldModel(cfg)
    sd = state_dict_for(cfg)
    for k in [k for k in sd if k.startswith("_encoder.state.0.") and k.endswith("bias")]:
        sd[k] = np.zeros_like(sd[k])
    params, _ = params_from_tdmpc2_state_dict(sd, model)
    obs = 1e-3 * np.random.default_rng(2).normal(size=(7, 5))
    ours = np.asarray(model.encode(params, jnp.asarray(obs, jnp.float32)))
    n = max(cfg.num_enc_layers - 1, 1) + 1
    np.testing.assert_allclose(ours, np_mlp(sd, "_encoder.state", obs, n, "simnorm", eps=1e-5), atol=1e-5)
    assert np.abs(ours - np_mlp(sd, "_encoder.state", obs, n, "simnorm", eps=1e-6)).max() > 1e-4


def test_mismatched_state_dict_is_refused_naming_the_entry():
    """Into a given model: a missing key, an unexpected key and a wrong shape each get an error naming
    the entry."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=5, action_size=2)
    model = WorldModel(cfg)
    sd = state_dict_for(cfg)
    with pytest.raises(StateDictError, match="_reward.2.weight"):
        params_from_tdmpc2_state_dict({k: v for k, v in sd.items() if k != "_reward.2.weight"}, model)
    with pytest.raises(StateDictError, match="unexpected.*_extra.0.weight"):
        params_from_tdmpc2_state_dict({**sd, "_extra.0.weight": np.zeros(3)}, model)
    other = WorldModel(WorldModelConfig.from_preset("tiny", obs_size=6, action_size=2))
    with pytest.raises(StateDictError, match="shape"):
        params_from_tdmpc2_state_dict(sd, other)


def test_load_checkpoint_names_a_missing_file_and_a_missing_torch(tmp_path, monkeypatch):
    """A missing file is a FileNotFoundError naming the path; without torch an existing file is an
    ImportError telling the user to `pip install torch`."""
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(missing)
    path = tmp_path / "model.pt"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"model\.pt.*pip install torch"):
        load_checkpoint(path)


def test_load_checkpoint_reads_with_torch_load_on_the_cpu(tmp_path, monkeypatch):
    """With torch present, load_checkpoint calls torch.load(path, map_location='cpu', weights_only=True)
    and loads the checkpoint's "model" entry."""
    cfg = WorldModelConfig.from_preset("tiny", obs_size=3, action_size=1)
    sd = state_dict_for(cfg)
    calls = []

    def fake_load(path, map_location=None, weights_only=None):
        calls.append((path, map_location, weights_only))
        return {"model": sd}

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=fake_load))
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    model, params = load_checkpoint(path)
    assert calls == [(str(path), "cpu", True)] and model.cfg.obs_size == 3
    jax.tree.map(np.testing.assert_array_equal, params, load_state_dict(sd)[1])
