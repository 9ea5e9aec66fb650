"""MBDPO next to TD-MPC2 (same env, model size and envs), and offline pretraining speed by model size.

    python -m benchmarks.compare --env dmc/cartpole-swingup --num-envs 8 --model-size 1M \
        --pretrain-sizes tiny 1M 5M --out benchmarks/results/compare.json

One JSON object: device, config, and for each algorithm the planner calls per second (one call
plans for all envs) and env steps per second of planning alone and end to end (compile time
reported apart); then gradient updates per second of multi-task offline pretraining of MBDPO
(2 tasks, task embeddings) for each model size.

Agent settings are each algorithm's own defaults (see `python -m experiments.online ALGO --help`);
this benchmark defines none. Each of its agent flags is a flag name of at least one algorithm's
config and is applied, by that name, to every algorithm that has it: `--model-size 1M` sets both,
`--iterations 4` only TD-MPC2 (MPPI) and `--diffusion-steps 8` only MBDPO. A flag left out keeps
each algorithm's default. The pretraining models are MBDPO's config with `--model-size` replaced
by each of `--pretrain-sizes`.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Optional

import jax
import jax.numpy as jnp

from benchmarks.throughput import BenchOptions, device_info, emit_report, measure, timed
from mbdpo_jax import agents
from mbdpo_jax.train.config import flat_fields, replace_flat
from mbdpo_jax.train.offline import TaskSet, build_agent

ALGORITHMS = ("tdmpc2", "mbdpo")
"""Compared algorithms, in report order; the last one is also the pretraining model."""


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """What the benchmark itself needs; agent settings are flags of the algorithms (module doc)."""

    bench: BenchOptions = BenchOptions()
    pretrain_sizes: tuple[str, ...] = ("1M", "5M")
    """Model sizes whose offline update speed is measured."""
    online: bool = True
    """Measure the online algorithms (--no-online: offline pretraining speed only)."""


def flat_settings(cfg: Any) -> dict[str, tuple[Any, Any]]:
    """{flag name (underscored): (field type, default)} of a nested config, as `flat_fields` names them."""
    out = {}
    for name, path in flat_fields(cfg).items():
        owner = cfg
        for part in path[:-1]:
            owner = getattr(owner, part)
        out[name] = (typing.get_type_hints(type(owner))[path[-1]], getattr(owner, path[-1]))
    return out


def agent_flags_class(algos: tuple[str, ...] = ALGORITHMS) -> type:
    """A dataclass with one optional field per flag name of any of `algos`' configs (None: each
    algorithm's default); its help says which algorithms have the setting and their defaults."""
    import tyro

    by_name: dict[str, dict[str, tuple[Any, Any]]] = {}
    for algo in algos:
        for name, (tp, default) in flat_settings(agents.config_class(algo)()).items():
            by_name.setdefault(name, {})[algo] = (tp, default)
    fields = []
    for name, owners in sorted(by_name.items()):
        types = {tp for tp, _ in owners.values()}
        if len(types) != 1:
            raise TypeError(f"setting {name} has different types in {', '.join(owners)}: {types}")
        defaults = {repr(default) for _, default in owners.values()}
        hint = (f"(default: {defaults.pop()} in {' and '.join(owners)})" if len(defaults) == 1 else
                "(default: " + ", ".join(f"{d!r} in {algo}" for algo, (_, d) in owners.items()) + ")")
        tp = typing.Annotated[Optional[types.pop()], tyro.conf.arg(help_behavior_hint=hint)]
        fields.append((name, tp, dataclasses.field(default=None)))
    return dataclasses.make_dataclass("AgentFlags", fields, frozen=True)


def agent_configs(flags: Any, algos: tuple[str, ...] = ALGORITHMS) -> dict[str, Any]:
    """{algo: its default config with every set flag that it has replaced}."""
    chosen = {k: v for k, v in dataclasses.asdict(flags).items() if v is not None}
    configs = {}
    for algo in algos:
        default = agents.config_class(algo)()
        own = set(flat_fields(default))
        cfg = replace_flat(default, **{k: v for k, v in chosen.items() if k in own})
        cfg.validate()
        configs[algo] = cfg
    return configs


def pretrain_updates_per_s(agent_cfg: Any, size: str, repeats: int) -> dict:
    """Updates/s of a 2-task model of `agent_cfg` at `size` (obs 24 and 17 -> padded 24, actions 6
    and 1 -> 6), on a synthetic batch of the offline loop's shapes."""
    tasks = TaskSet(("a", "b"), (24, 17), (6, 1), (500, 500), (2, 2))
    agent = build_agent(replace_flat(agent_cfg, model_size=size), tasks)
    state = agent.init(jax.random.PRNGKey(0))
    h, b = agent.horizon, agent.batch_size
    key = jax.random.PRNGKey(1)
    batch = {"obs": jax.random.normal(key, (h, b, 24)), "next_obs": jax.random.normal(key, (h, b, 24)),
             "action": jnp.zeros((h, b, 6)), "reward": jnp.ones((h, b)), "done": jnp.zeros((h, b)),
             "end": jnp.zeros((h, b)), "task": jnp.arange(b) % 2,
             **{k: jnp.zeros((h, b) + shape) for k, shape in agent.replay_extras.items()}}
    compile_s, steady = timed(jax.jit(agent.update), state, batch, key, repeats=repeats)
    return {"model_size": size, "compile_s": compile_s, "updates_per_s": 1 / steady, "ms_per_update": 1e3 * steady}


def run(configs: dict[str, Any], c: CompareOptions, flags: dict) -> dict:
    algos = {}
    for algo, cfg in configs.items() if c.online else ():
        result = measure(cfg, c.bench)["results"]
        algos[algo] = {"planner_calls_per_s": 1e3 / result["planning"]["ms_per_plan_call"],
                       "planning": result["planning"], "end_to_end": result["end_to_end"],
                       "updates": result["updates"]}
    pretrain_cfg = configs[ALGORITHMS[-1]]
    config = {"flags": flags, "agents": {algo: dataclasses.asdict(cfg) for algo, cfg in configs.items()},
              **dataclasses.asdict(c), "pretrain_algo": ALGORITHMS[-1]}
    return {"benchmark": "compare", "device": device_info(), "config": config, "online": algos,
            "pretrain": [pretrain_updates_per_s(pretrain_cfg, s, c.bench.repeats) for s in c.pretrain_sizes]}


def main(argv: list[str] | None = None) -> int:
    import tyro

    flags_cls = agent_flags_class()
    typed = dataclasses.make_dataclass(
        "CompareRun", [("agent", flags_cls, dataclasses.field(default=flags_cls())),
                       ("compare", CompareOptions, dataclasses.field(default=CompareOptions()))], frozen=True)
    parsed = tyro.cli(typed, args=argv, prog="python -m benchmarks.compare", description=__doc__,
                      config=(tyro.conf.OmitArgPrefixes,))
    flags = {k: v for k, v in dataclasses.asdict(parsed.agent).items() if v is not None}
    try:
        configs = agent_configs(parsed.agent)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    emit_report(run(configs, parsed.compare, flags), parsed.compare.bench.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
