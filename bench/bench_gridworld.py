"""Env steps/s of 1024 vmapped gridworlds under random actions (jitted lax.scan, compile time excluded).

    python bench/bench_gridworld.py
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import runs  # noqa: E402, F401  first: its XLA and OpenBLAS settings must come before jax starts

import time

import jax
import jax.numpy as jnp

import gridworld  # noqa: E402

NUM_ENVS = 1024


def steps_per_second(env, params, num_envs=1024, num_steps=500, repeats=3) -> float:
    """Env steps/s of `num_envs` vmapped envs under random actions: jitted lax.scan, compile time excluded, best of
    `repeats`. `params` is one level shared by all envs, or levels stacked along a leading axis of size num_envs."""
    params_axis = None if jnp.ndim(params.max_steps_in_episode) == 0 else 0

    @jax.jit
    def run(key):
        key_reset, key_run = jax.random.split(key)
        reset = jax.vmap(env.reset, in_axes=(0, params_axis))
        _, state = reset(jax.random.split(key_reset, num_envs), params)

        def body(state, key):
            key_action, key_step = jax.random.split(key)
            action = jax.random.randint(key_action, (num_envs,), 0, env.num_actions)
            step = jax.vmap(env.step, in_axes=(0, 0, 0, params_axis))
            obs, state, reward, _, _, _ = step(jax.random.split(key_step, num_envs), state, action, params)
            return state, obs.sum() + reward.sum()

        return jax.lax.scan(body, state, jax.random.split(key_run, num_steps))[1]

    run(jax.random.PRNGKey(0)).block_until_ready()
    seconds = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        run(jax.random.PRNGKey(seed)).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return num_envs * num_steps / min(seconds)


if __name__ == "__main__":
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {NUM_ENVS} envs x 500 steps, best of 3")
    env, params = gridworld.make("big_dense_long")
    print(f"big_dense_long:                  {steps_per_second(env, params, NUM_ENVS):>12,.0f} steps/s")
    env, _ = gridworld.make("all")
    level = gridworld.sample_level(jax.random.PRNGKey(1), env)
    print(f"all, one sampled level:          {steps_per_second(env, level, NUM_ENVS):>12,.0f} steps/s")
    levels = jax.vmap(lambda key: gridworld.sample_level(key, env))(jax.random.split(jax.random.PRNGKey(2), NUM_ENVS))
    print(f"all, a sampled level per env:    {steps_per_second(env, levels, NUM_ENVS):>12,.0f} steps/s")
