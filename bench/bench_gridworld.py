"""Env steps/s of 1024 vmapped gridworlds under random actions (jitted lax.scan, compile time excluded).

    python bench/bench_gridworld.py
"""
import os
# XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped programs (every thread idle): switch it off
# before jax starts.
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")

import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import gridworld  # noqa: E402

NUM_ENVS = 1024

if __name__ == "__main__":
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {NUM_ENVS} envs x 500 steps, best of 3")
    env, params = gridworld.make("big_dense_long")
    print(f"big_dense_long:                  {gridworld.steps_per_second(env, params, NUM_ENVS):>12,.0f} steps/s")
    env, _ = gridworld.make("all")
    level = gridworld.sample_level(jax.random.PRNGKey(1), env)
    print(f"all, one sampled level:          {gridworld.steps_per_second(env, level, NUM_ENVS):>12,.0f} steps/s")
    levels = jax.vmap(lambda key: gridworld.sample_level(key, env))(jax.random.split(jax.random.PRNGKey(2), NUM_ENVS))
    print(f"all, a sampled level per env:    {gridworld.steps_per_second(env, levels, NUM_ENVS):>12,.0f} steps/s")
