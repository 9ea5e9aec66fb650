"""Experiment configs: each algorithm's own settings, reachable by flat names, written whole to
config.json and read back; run directories of the old flat layout are refused with the reason."""
import json

import pytest

from mbdpo_jax.agents import ALGORITHMS, config_class
from mbdpo_jax.train.config import LoopOptions, OnlineConfig, flat_fields, from_dict, replace_flat, to_dict
from mbdpo_jax.train.run_dir import RunDirError, prepare_run_dir


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_every_setting_has_a_unique_flat_name_and_round_trips_through_config_json(algo):
    """Flat names are unique across an algorithm's nested configs and the loop (so they can be flags),
    include the settings once hidden (rho, tau, discount, loss coefficients, encoder lr scale), and
    to_dict / from_dict give back the same config."""
    cfg = OnlineConfig(agent=config_class(algo)(), loop=LoopOptions())
    names = flat_fields(cfg)
    assert "seed_burst" in names and "env" in names
    if "model_size" in names:  # the world-model learners
        for hidden in ("rho", "tau", "discount", "consistency_coef", "reward_coef", "value_coef", "entropy_coef",
                       "enc_lr_scale", "grad_clip_norm", "episodic"):
            assert hidden in names, hidden
        changed = replace_flat(cfg, rho=0.7, tau=0.02, discount=0.9, batch_size=33, env="toy/pendulum")
        assert changed.agent.learner.losses.rho == 0.7 and changed.loop.env == "toy/pendulum"
    elif "critic_iterations" in names:  # the first-order actor-critics
        changed = replace_flat(cfg, td_lambda=0.9, critic_iterations=3, env="toy/pendulum")
        assert changed.agent.actor_critic.td_lambda == 0.9 and changed.loop.env == "toy/pendulum"
    else:  # the on-policy learners (PPO's GAE lambda, REPPO's TD(lambda))
        lam = "gae_lambda" if "gae_lambda" in names else "td_lambda"
        changed = replace_flat(cfg, **{lam: 0.9}, epochs=3, env="toy/pendulum")
        assert getattr(changed.agent, lam) == 0.9 and changed.loop.env == "toy/pendulum"
    assert from_dict(OnlineConfig, json.loads(json.dumps(to_dict(changed)))) == changed


def test_mppi_and_energy_settings_are_reachable():
    """MPPI's min/max std (TD-MPC2) and the energy and score-network settings (MBDPO) are settings."""
    assert {"min_std", "max_std"} <= set(flat_fields(config_class("tdmpc2")()))
    assert {"energy_momentum", "energy_clip", "negative_noise", "score_lr", "score_batch", "eta",
            "use_energy"} <= set(flat_fields(config_class("mbdpo")()))


def test_unknown_flat_setting_names_the_allowed_ones():
    """replace_flat refuses a name the config does not have, listing the allowed ones."""
    with pytest.raises(ValueError, match="unknown setting.*diffusion_steps.*allowed:.*iterations"):
        replace_flat(OnlineConfig(agent=config_class("tdmpc2")()), diffusion_steps=3)


def test_run_directory_of_the_old_flat_config_is_refused_with_the_reason(tmp_path):
    """A run directory whose config.json predates the per-algorithm configs is refused, saying why,
    and nothing in it is touched."""
    old = {"algo": "mbdpo", "env": "toy/pendulum", "model_size": "tiny", "steps": 96}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = OnlineConfig(agent=config_class("mbdpo")())
    with pytest.raises(RunDirError, match="config format 1.*older mbdpo_jax.*pick another --run-dir"):
        prepare_run_dir(tmp_path, to_dict(cfg))
    assert json.loads((tmp_path / "config.json").read_text()) == old
    with pytest.raises(ValueError, match="older mbdpo_jax"):
        from_dict(OnlineConfig, old)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_registered_agents_follow_their_regimes_protocol(algo):
    """Every registered agent built from its default config provides what its training loop needs
    (agents.protocols: OffPolicyAgent, or FirstOrderAgent / OnPolicyAgent when its regime says so), and
    inherits from no other agent (composition)."""
    from mbdpo_jax.agents import make_agent
    from mbdpo_jax.agents.protocols import FirstOrderAgent, OffPolicyAgent, OnPolicyAgent
    from mbdpo_jax.envs.base import EnvSpec

    cfg = OnlineConfig(agent=config_class(algo)())
    if "model_size" in flat_fields(cfg):
        cfg = replace_flat(cfg, model_size="tiny")
    agent = make_agent(cfg.agent, EnvSpec("t", obs_size=3, action_size=1, episode_length=50, differentiable=True))
    protocol = {"first_order": FirstOrderAgent, "on_policy": OnPolicyAgent}.get(getattr(agent, "regime", ""),
                                                                                OffPolicyAgent)
    assert isinstance(agent, protocol)
    assert type(agent).__mro__[1:] == (object,)


def test_presets_set_defaults_that_flags_override_and_auto_picks_laptop_on_a_cpu():
    """--preset laptop shrinks the model and planner, paper keeps the published defaults, auto is
    laptop on a CPU; a flag given on the command line wins over the preset; the first printed line
    names the preset and how to get the other one."""
    import jax

    from experiments.common import parse_config
    from mbdpo_jax.train import presets

    laptop, loop = presets.preset_defaults("laptop", "mbdpo")
    assert laptop.learner.model_size == "tiny" and laptop.planner.diffusion_steps == 8 and loop.num_envs == 4
    paper, paper_loop = presets.preset_defaults("paper", "mbdpo")
    assert paper == config_class("mbdpo")() and paper_loop == LoopOptions()
    if jax.default_backend() == "cpu":
        assert presets.resolve("auto") == "laptop"
    agent, loop = parse_config("mbdpo", "loop", loop, ["--num-envs", "2", "--diffusion-steps", "5"], "prog", "doc",
                               laptop)
    assert (loop.num_envs, agent.planner.diffusion_steps, agent.learner.model_size) == (2, 5, "tiny")
    line = presets.describe("laptop", OnlineConfig(agent=agent, loop=loop))
    assert line.startswith("mbdpo: preset laptop") and "num_envs=2" in line and "--preset paper" in line
    with pytest.raises(ValueError, match="unknown preset 'gpu'; allowed: auto, laptop, paper"):
        presets.resolve("gpu")


def test_laptop_preset_repeats_actions_4_times_on_dmc_unless_told_otherwise():
    """On dmc/ tasks the laptop preset sets action repeat 4; other envs, an explicit --action-repeat, and
    the paper preset keep theirs; the first printed line shows it."""
    from mbdpo_jax.train import presets

    agent, loop = presets.preset_defaults("laptop", "mbdpo")
    finalize = lambda preset, **flags: presets.finalize(preset, replace_flat(OnlineConfig(agent, loop), **flags))
    assert finalize("laptop", env="dmc/cartpole-swingup").loop.action_repeat == 4
    assert finalize("laptop", env="toy/pendulum").loop.action_repeat is None
    assert finalize("laptop", env="dmc/cartpole-swingup", action_repeat=2).loop.action_repeat == 2
    assert finalize("paper", env="dmc/cartpole-swingup").loop.action_repeat is None
    assert "action_repeat=4" in presets.describe("laptop", finalize("laptop", env="dmc/cartpole-swingup"))
