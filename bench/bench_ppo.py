"""Env steps/s of ppo.py with Adam at OPEN's MinAtar preset (Breakout-MinAtar, 64 envs x 128 steps, 4 epochs x 8
minibatches) next to raw env stepping (64 vmapped envs, random actions), measured in one run, compile excluded.

    python bench/bench_ppo.py [--updates 10] [--preset breakout]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402, F401  first: its XLA and OpenBLAS settings must come before jax starts
import argparse
import time
from dataclasses import replace

import jax

import wrappers  # noqa: E402
import ppo  # noqa: E402


def timed(fn, *args, repeats=3):
    """Best wall time of `repeats` calls of an already compiled function."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="breakout")
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    config = ppo.preset(args.preset, log_every=0, eval_episodes=1, eval_max_steps=1)
    steps = config.num_envs * config.num_steps * args.updates
    config = replace(config, total_timesteps=steps)

    train = jax.jit(ppo.make_train(config, ppo.hand_designed("adam"))).lower(
        jax.random.PRNGKey(0), ppo.hyperparameters(config)).compile()
    ppo_seconds = timed(train, jax.random.PRNGKey(0), ppo.hyperparameters(config))

    env, env_params = wrappers.make_env(config.env_name)
    num_actions = env.action_space(env_params).n

    @jax.jit
    def raw(rng):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(rng, config.num_envs), env_params)

        def step(state, key):
            action_key, env_key = jax.random.split(key)
            action = jax.random.randint(action_key, (config.num_envs,), 0, num_actions)
            _, state, reward, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(env_key, config.num_envs), state, action, env_params)
            return state, reward.sum()

        return jax.lax.scan(step, state, jax.random.split(rng, steps // config.num_envs))[1].sum()

    raw_seconds = timed(raw, jax.random.PRNGKey(0))
    print(f"{config.env_name}: {config.num_envs} envs x {config.num_steps} steps, {config.update_epochs} epochs x "
          f"{config.num_minibatches} minibatches, {args.updates} updates ({steps:,} env steps), "
          f"{jax.devices()[0].device_kind}")
    print(f"  raw env stepping : {steps / raw_seconds:12,.0f} env steps/s")
    print(f"  PPO with Adam    : {steps / ppo_seconds:12,.0f} env steps/s")
    print(f"  PPO / raw time   : {ppo_seconds / raw_seconds:12.1f}x")


if __name__ == "__main__":
    main()
