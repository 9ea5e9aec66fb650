"""PWM's smoothness argument, measured: does a world model trained over 16 steps give the actor
lower-variance first-order gradients than one trained over 3 (PWM, Georgiev et al., 2024, Sec. 4)?

    python -m benchmarks.pwm_horizon --data data/pendulum-random --out benchmarks/results/X.json

For each world-model training horizon (3 and 16) and each seed, a world model is trained offline on
the same dataset for `updates` steps (TD-MPC2's losses, rho 0.99). Then one fixed actor and critic
(the same initialisation for every model) take `grad_samples` gradients of PWM's actor loss through
`policy_horizon`-step imagination in each frozen model, each with a fresh batch of start states and
fresh action noise. Per model it reports the relative variance of those gradients,
E||g - mean g||^2 / ||mean g||^2 (noise-to-signal of one stochastic gradient), and the gradient norm;
per horizon, the mean and spread over seeds, and the spread of the mean gradient across seeds
(how much the direction depends on which world model was trained). The imagination horizon is the
same for both, so only the model's training horizon differs.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from benchmarks.throughput import device_info, emit_report
from mbdpo_jax.agents.pwm import PWM, PWMConfig
from mbdpo_jax.data import datasets
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models.learner import LearnerConfig
from mbdpo_jax.models.losses import LossCoefficients
from mbdpo_jax.train.offline import task_set


@dataclasses.dataclass(frozen=True)
class HorizonStudy:
    data: tuple[str, ...]
    """Dataset directories (one task), as written by experiments.collect."""
    horizons: tuple[int, ...] = (3, 16)
    seeds: tuple[int, ...] = (0, 1, 2)
    updates: int = 1000
    """World-model updates per model."""
    model_size: str = "tiny"
    batch_size: int = 64
    policy_horizon: int = 16
    grad_samples: int = 32
    """Actor gradients per model, each on a fresh batch and fresh action noise."""
    actor_hidden: tuple[int, ...] = (128, 64)
    critic_hidden: tuple[int, ...] = (128, 128)
    out: Optional[str] = None


def pwm_agent(s: HorizonStudy, spec, horizon: int) -> PWM:
    learner = LearnerConfig(model_size=s.model_size, horizon=horizon, batch_size=s.batch_size, discount=0.99,
                            losses=LossCoefficients(rho=0.99))
    return PWM(PWMConfig(learner=learner, actor_critic=ac.ActorCriticConfig(
        actor_hidden=s.actor_hidden, critic_hidden=s.critic_hidden)), spec)


def world_model_trainer(agent: PWM, data: datasets.MultiTaskData, updates: int):
    """jit(seed key -> (world-model params after `updates` offline steps, mean losses of the last 10%));
    compiled once per horizon, reused for every seed."""
    learner, tail = agent.learner, max(1, updates // 10)

    def one(state, k):
        k_batch, k_update = jax.random.split(k)
        batch = datasets.sample_sequences(data, k_batch, agent.batch_size, agent.horizon)
        state, metrics, _ = learner.update(state, batch, k_update)
        return state, metrics

    def train(key):
        state, metrics = jax.lax.scan(one, learner.init(key), jax.random.split(key, updates))
        return state.params, jax.tree.map(lambda v: jnp.mean(v[-tail:]), metrics)

    return jax.jit(train)


def actor_gradients(probe: PWM, data: datasets.MultiTaskData, samples: int):
    """jit(params -> [samples, P] flattened actor gradients) at one fixed actor/critic initialisation."""
    policy = probe.init_policy(jax.random.PRNGKey(1001), jax.random.PRNGKey(1002), probe.learner.init(jax.random.PRNGKey(0)))

    def grad(params, k):
        k_batch, k_noise = jax.random.split(k)
        obs = datasets.sample_sequences(data, k_batch, probe.batch_size, 1)["obs"][0]
        z0 = jax.lax.stop_gradient(probe.model.encode(params, obs))
        loss = lambda actor: probe._actor_loss(actor, policy.critics, policy.returns, params, z0, k_noise, None)[0]
        return jax.flatten_util.ravel_pytree(jax.grad(loss)(policy.actor))[0]

    keys = jax.random.split(jax.random.PRNGKey(2024), samples)
    return jax.jit(lambda params: jax.vmap(grad, in_axes=(None, 0))(params, keys))


def gradient_stats(g: np.ndarray) -> dict:
    mean = g.mean(0)
    return {"relative_variance": float(np.mean(np.sum((g - mean) ** 2, 1)) / np.sum(mean**2)),
            "mean_grad_norm": float(np.linalg.norm(mean)), "per_sample_grad_norm": float(np.linalg.norm(g, axis=1).mean())}


def summarise(rows: list[dict], means: dict[int, list[np.ndarray]]) -> dict:
    out = {}
    for h, ms in means.items():
        mine = [r for r in rows if r["horizon"] == h]
        rel = np.array([r["relative_variance"] for r in mine])
        m = np.stack(ms)
        across = float(np.mean(np.sum((m - m.mean(0)) ** 2, 1)) / np.sum(m.mean(0) ** 2))
        out[str(h)] = {"relative_variance_mean": float(rel.mean()), "relative_variance_std": float(rel.std(ddof=1))
                       if len(rel) > 1 else 0.0, "across_seed_relative_variance": across, "seeds": len(mine)}
    return out


def run(s: HorizonStudy) -> dict:
    data = datasets.mix([datasets.load_dataset(d) for d in s.data], max(s.horizons) + 1)
    if data.num_tasks != 1:
        raise ValueError(f"the study uses one task; the datasets hold {data.task_names}")
    spec = task_set(data).spec()
    probe = pwm_agent(s, spec, s.policy_horizon)
    gradients = actor_gradients(probe, data, s.grad_samples)
    rows, means = [], {h: [] for h in s.horizons}
    for h in s.horizons:
        train = world_model_trainer(pwm_agent(s, spec, h), data, s.updates)
        for seed in s.seeds:
            t0 = time.perf_counter()
            params, losses = train(jax.random.PRNGKey(seed))
            g = np.asarray(gradients(params), np.float64)
            losses = {k: float(v) for k, v in jax.device_get(losses).items()}
            means[h].append(g.mean(0))
            rows.append({"horizon": h, "seed": seed, **gradient_stats(g), "final_losses": losses,
                         "seconds": time.perf_counter() - t0})
            print(f"horizon {h} seed {seed}: relative variance {rows[-1]['relative_variance']:.3f}", file=sys.stderr)
    return {"benchmark": "pwm_horizon", "device": device_info(), "config": dataclasses.asdict(s),
            "task": data.task_names[0], "results": {"by_horizon": summarise(rows, means), "runs": rows}}


def main(argv: list[str] | None = None) -> int:
    import tyro

    s = tyro.cli(HorizonStudy, args=argv, description=__doc__)
    emit_report(run(s), s.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
