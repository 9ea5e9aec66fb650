"""The matmul FLOP count behind every `share_of_peak` in the benchmarks (benchmarks.flops)."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks.flops import hlo_dot_flops, matmul_flops
from benchmarks.throughput import batched_plan
from conftest import tiny_online_config
from mbdpo_jax.data import replay
from mbdpo_jax.train.runner import build_trainer


def test_scan_bodies_count_once_per_step_and_vmap_multiplies_the_rows():
    """A 3-step scan of (4 x 8) @ (8 x 8) costs 3 x 2 x 4 x 8 x 8; vmapping it over 5 costs 5x that; a dot
    whose result is never used costs nothing."""
    w = jnp.ones((8, 8))

    def rollout(x):
        x @ w  # dead code: XLA drops it
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=3)[0]

    assert matmul_flops(rollout, jnp.ones((4, 8))) == 3 * 2 * 4 * 8 * 8
    assert matmul_flops(jax.vmap(rollout), jnp.ones((5, 4, 8))) == 5 * 3 * 2 * 4 * 8 * 8


def test_a_cond_counts_its_dearest_branch_and_a_while_loop_is_refused():
    w = jnp.ones((8, 8))
    branchy = lambda p, x: jax.lax.cond(p, lambda x: (x @ w) @ w, lambda x: x @ w, x)
    assert matmul_flops(branchy, True, jnp.ones((4, 8))) == 2 * 2 * 4 * 8 * 8
    looping = lambda x: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ w), (0, x))[1]
    with pytest.raises(ValueError, match="while loop"):
        matmul_flops(looping, jnp.ones((4, 8)))


ONE_STEP = {"tdmpc2": dict(iterations=1), "mbdpo": dict(diffusion_steps=2)}


@pytest.mark.parametrize("algo", ["tdmpc2", "mbdpo"])
def test_plan_and_update_counts_equal_the_dots_of_xlas_program_when_every_loop_runs_once(algo):
    """With one planner iteration (MBDPO: one reverse step) and horizon 1 every loop of the plan and of the
    update runs once, so XLA's HLO, which holds a loop body once, has exactly the matmuls we count."""
    cfg = tiny_online_config(algo=algo, horizon=1, **ONE_STEP[algo])
    trainer = build_trainer(cfg)
    agent, key = trainer.agent, jax.random.PRNGKey(0)
    carry = jax.jit(trainer.init)(key)
    plan, plan_args = batched_plan(trainer, carry, key)
    batch = replay.sample_sequences(trainer.buffer, carry.buffer, key)
    for fn, args in [(plan, plan_args), (agent.update, (carry.agent, batch, key))]:
        xla = hlo_dot_flops(jax.jit(fn).lower(*args).as_text(dialect="hlo"))
        assert xla > 0 and matmul_flops(fn, *args) == xla
