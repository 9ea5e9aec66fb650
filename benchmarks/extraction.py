"""PWM policy extraction (`mbdpo_jax.train.extract`) by world-model size and number of vmapped tasks, as
one JSON object.

    python -m benchmarks.extraction --model-sizes tiny 1M 5M 48M --num-tasks 1 4 --batch-size 512

For each model size, one multi-task world model (max(--num-tasks) task embeddings, random parameters:
the time does not depend on their values) is shared by K tasks extracted together, for each K of
--num-tasks. Timed program: `extraction_chunk` of --updates extraction updates of all K tasks (a scan
of a vmap over tasks of {draw start states, PWM.policy_update}), compiled once (compile seconds
reported apart) and called --repeats times (median). Reported per case: seconds per update (all tasks
together) and per update per task, the projected extraction time per task of PWM's 10k updates, the
matmul FLOPs of one call (`benchmarks.flops`) and their share of the float32 matmul peak measured in this run.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional

import jax
import jax.numpy as jnp

from benchmarks.first_order import matmul_peak, timed, with_share
from benchmarks.throughput import device_info, emit_report
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models.world_model import count_params
from mbdpo_jax.train import extract
from mbdpo_jax.train.offline import TaskSet

PUBLISHED_UPDATES = extract.PUBLISHED_UPDATES


@dataclasses.dataclass(frozen=True)
class ExtractionBench:
    model_sizes: tuple[str, ...] = ("tiny", "1M", "5M")
    num_tasks: tuple[int, ...] = (1, 4)
    """Tasks extracted together (vmapped) over one shared model."""
    obs_size: int = 24
    action_size: int = 6
    episode_length: int = 500
    batch_size: int = 512
    """Start states per update and task (PWM: 512)."""
    horizon: int = 16
    updates: int = 10
    """Extraction updates per timed call (one compiled chunk)."""
    actor_hidden: tuple[int, ...] = (400, 200, 100)
    critic_hidden: tuple[int, ...] = (400, 200)
    critic_iterations: int = 8
    critic_minibatches: int = 4
    repeats: int = 3
    matmul_size: int = 1024
    out: Optional[str] = None


def _pretrained_cfg(model_size: str):
    from mbdpo_jax.agents.tdmpc2 import TDMPC2Config
    from mbdpo_jax.models.learner import LearnerConfig

    return TDMPC2Config(learner=LearnerConfig(model_size=model_size))


def measure_case(b: ExtractionBench, model_size: str, k: int, peak: float) -> dict:
    """One model size, k vmapped tasks out of a model of max(num_tasks) tasks."""
    n = max(b.num_tasks)
    tasks = TaskSet(tuple(f"task{i}" for i in range(n)), (b.obs_size,) * n, (b.action_size,) * n,
                    (b.episode_length,) * n, (1,) * n)
    acc = dataclasses.replace(ac.ActorCriticConfig(), actor_hidden=b.actor_hidden, critic_hidden=b.critic_hidden,
                              critic_iterations=b.critic_iterations, critic_minibatches=b.critic_minibatches)
    agent = extract.extraction_agent(_pretrained_cfg(model_size), tasks, b.horizon, b.batch_size, 0.99, acc)
    params = agent.learner.init(jax.random.PRNGKey(0)).params
    ids = jnp.arange(k, dtype=jnp.int32)
    policies, keys = extract.init_policies(agent, ids, 0)
    rows = 4 * b.batch_size
    starts = extract.StartStates(jax.random.normal(jax.random.PRNGKey(1), (k, rows, b.obs_size)),
                                 jnp.full((k,), rows, jnp.int32))
    fn = lambda p, ks, prm, s: extract.extraction_chunk(agent, prm, p, ks, ids, s, b.updates)
    result = with_share(timed(fn, (policies, keys, params, starts), b.repeats), peak)
    per_update = result["seconds"] / b.updates
    return {"model_size": model_size, "model_params": count_params(params), "vmapped_tasks": k,
            "actor_critic_params": count_params(jax.tree.map(lambda x: x[0], (policies.actor, policies.critics))),
            **result, "s_per_update": per_update, "s_per_update_per_task": per_update / k,
            "projected_s_per_task_10k_updates": per_update / k * PUBLISHED_UPDATES}


def measure(b: ExtractionBench) -> dict:
    peak = matmul_peak(b.matmul_size, b.repeats)
    cases = [measure_case(b, size, k, peak) for size in b.model_sizes for k in b.num_tasks]
    return {"benchmark": "extraction", "device": device_info(), "config": dataclasses.asdict(b),
            "results": {"matmul_peak_flops_per_s": peak, "cases": cases}}


def main(argv: list[str] | None = None) -> int:
    import tyro

    jax.config.update("jax_default_matmul_precision", "float32")
    bench = tyro.cli(ExtractionBench, args=argv, prog="python -m benchmarks.extraction", description=__doc__)
    emit_report(measure(bench), bench.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
