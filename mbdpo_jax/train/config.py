"""Experiment configs: an algorithm's own config (see `mbdpo_jax.agents`) plus the options of the loop
that trains it. Frozen dataclasses, so tyro turns every field into a flag and config.json holds
them all.

    OnlineConfig(agent=MBDPOConfig(), loop=LoopOptions(env="dmc/cartpole-swingup"))
    PretrainConfig(agent=TDMPC2Config(), offline=PretrainOptions(data=("data/a", "data/b")))

`to_dict` / `from_dict` convert to and from config.json (format `CONFIG_FORMAT`, algorithm by name).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from mbdpo_jax import agents

CONFIG_FORMAT = 2


def _require_positive(cfg: object, names: list[str]) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """What drives an online loop on one environment."""

    env: str = "dmc/cartpole-swingup"
    """Environment name, see `mbdpo_jax.envs.names()`."""
    steps: int = 100_000
    """Total env steps (all envs together); rounded up to whole chunks of eval_every."""
    num_envs: int = 1
    """Parallel environments stepped together (vmap)."""
    seed: int = 0
    run_dir: str = ""
    """Run directory; empty means runs/<algo>-<env>-s<seed>. Rerun with the same one to resume."""
    updates_per_step: float = 1.0
    """Gradient updates per env step (update-to-data ratio)."""
    seed_steps: Optional[int] = None
    """Random-action steps before learning; None means max(1000, 5 * episode length)."""
    seed_burst: bool = True
    """When the seed phase ends, run one burst of seed_steps * updates_per_step updates before acting
    with the agent (as TD-MPC2's and MBDPO's code)."""
    buffer_size: int = 1_000_000
    eval_every: int = 10_000
    """Env steps between evaluations; also the jitted chunk size and the checkpoint period."""
    eval_episodes: int = 10
    action_repeat: Optional[int] = None
    """None means the env family's default (2 for dmc/, 1 otherwise)."""
    save_dataset: bool = False
    """At the end, save the replay buffer as an offline dataset in <run-dir>/dataset."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        _require_positive(self, ["steps", "num_envs", "buffer_size", "eval_every", "eval_episodes",
                                 "updates_per_step"])
        if self.seed_steps is not None and self.seed_steps < 0:
            raise ValueError(f"seed-steps must be >= 0, got {self.seed_steps}")
        if self.action_repeat is not None and self.action_repeat < 1:
            raise ValueError(f"action-repeat must be >= 1, got {self.action_repeat}")
        if self.eval_every % self.num_envs:
            raise ValueError(f"eval-every={self.eval_every} must be a multiple of num-envs={self.num_envs}")


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Train an agent online on one environment.

    Env steps count agent steps (transitions); each is `action_repeat` control steps of the env.
    """

    agent: Any
    """The algorithm's config (e.g. `MBDPOConfig()`); its type names the algorithm."""
    loop: LoopOptions = LoopOptions()

    @property
    def algo(self) -> str:
        return agents.algorithm_of(self.agent)

    def resolved_run_dir(self) -> str:
        return self.loop.run_dir or f"runs/{self.algo}-{self.loop.env.replace('/', '-')}-s{self.loop.seed}"

    def validate(self) -> None:
        self.agent.validate()
        self.loop.validate()


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
    """What drives offline pretraining on datasets."""

    data: tuple[str, ...] = ()
    """Dataset directories (see experiments.collect); one task per distinct env."""
    steps: int = 20_000
    """Gradient updates."""
    eval_every: int = 5_000
    """Updates between evaluations (also the jitted chunk size and the checkpoint period)."""
    eval_episodes: int = 5
    segment_length: int = 64
    """Datasets are cut into segments of this many steps; sequences are sampled within one."""
    seed: int = 0
    run_dir: str = ""
    """Run directory; empty means runs/pretrain-<algo>-<model-size>-s<seed>. Rerun to resume."""
    progress: bool = True

    def validate(self) -> None:
        if not self.data:
            raise ValueError("--data needs at least one dataset directory")
        _require_positive(self, ["steps", "eval_every", "eval_episodes", "segment_length"])


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pretrain one (multi-task) world model and prior offline on datasets, evaluating in the real envs."""

    agent: Any
    offline: PretrainOptions = PretrainOptions()

    @property
    def algo(self) -> str:
        return agents.algorithm_of(self.agent)

    def resolved_run_dir(self) -> str:
        size = self.agent.learner.model_size
        return self.offline.run_dir or f"runs/pretrain-{self.algo}-{size}-s{self.offline.seed}"

    def validate(self) -> None:
        self.agent.validate()
        self.offline.validate()
        horizon = self.agent.learner.horizon
        if self.offline.segment_length <= horizon:
            raise ValueError(f"segment-length ({self.offline.segment_length}) must exceed horizon ({horizon})")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Continue online from a pretrained run on one of its tasks, or on a new one (new task embedding).

    The agent's config is the pretrained run's.
    """

    checkpoint: str = ""
    """Run directory written by experiments.pretrain."""
    loop: LoopOptions = LoopOptions(steps=40_000, seed_steps=0, eval_every=5_000)

    def resolved_run_dir(self) -> str:
        return self.loop.run_dir or f"runs/finetune-{self.loop.env.replace('/', '-')}-s{self.loop.seed}"

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint must name a pretraining run directory")
        self.loop.validate()


# ---- config.json ---------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict:
    """JSON-ready dict of an experiment config; the agent's config is stored with its algorithm name."""
    out = {"format": CONFIG_FORMAT}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "agent":
            out["algo"] = agents.algorithm_of(value)
        out[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def from_dict(cls: type, raw: dict) -> Any:
    """Inverse of `to_dict`; a ValueError names what does not fit (e.g. a run dir of an older format)."""
    if raw.get("format") != CONFIG_FORMAT:
        raise ValueError(f"config format {raw.get('format')!r} is not {CONFIG_FORMAT}: this run directory was "
                         "written by an older mbdpo_jax (one flat config for every algorithm); its checkpoints do "
                         "not match today's agent state, so start a new --run-dir")
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in raw:
            continue
        field_type = agents.config_class(raw["algo"]) if field.name == "agent" else _field_type(cls, field.name)
        kwargs[field.name] = _build(field_type, raw[field.name])
    return cls(**kwargs)


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _build(tp: Any, value: Any) -> Any:
    """A value of type `tp` from its JSON form (nested dataclasses, tuples, optionals)."""
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown {tp.__name__} setting(s) {', '.join(unknown)}")
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return value if value is None or len(inner) != 1 else _build(inner[0], value)
    return value


# ---- flat names ----------------------------------------------------------------------------------
def flat_fields(cfg: Any) -> dict[str, tuple[str, ...]]:
    """{flag name (underscored): path of nested field names} of a config, as its command line names
    them (nested configs contribute their fields without a prefix; names are unique)."""
    out: dict[str, tuple[str, ...]] = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            for name, path in flat_fields(value).items():
                out[name] = (field.name,) + path
        else:
            out[field.name] = (field.name,)
    return out


def replace_flat(cfg: Any, **changes: Any) -> Any:
    """`cfg` with settings changed by their flag names, wherever they live in the nested config:
    `replace_flat(OnlineConfig(agent=TDMPC2Config()), env="toy/pendulum", num_samples=64)`."""
    paths = flat_fields(cfg)
    unknown = sorted(set(changes) - set(paths))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(paths))}")
    for name, value in changes.items():
        cfg = _replace_path(cfg, paths[name], value)
    return cfg


def get_flat(cfg: Any, name: str) -> Any:
    """The value of the setting with flag name `name` in a nested config."""
    value = cfg
    for part in flat_fields(cfg)[name]:
        value = getattr(value, part)
    return value


def _replace_path(cfg: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _replace_path(getattr(cfg, path[0]), path[1:], value)})
