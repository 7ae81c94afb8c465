"""OPEN's cost, measured in one run, compile excluded:
1. env steps/s of PPO with OPEN (the authors' released Breakout optimizer) vs PPO with Adam at OPEN's Breakout-MinAtar
   preset (64 envs x 128 steps, 4 epochs x 8 minibatches), and their time ratio (the paper's GPUs: 1.64x, Table 11);
2. env steps/s of one whole ES generation (every member training and evaluating a PPO agent) at population sizes
   8, 16, 32, 64 on the default task of open_es.py (PPO training steps counted; the final evaluation is not).

    python bench/bench_open.py [--updates 10] [--populations 8 16 32 64]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402, F401  first: its XLA and OpenBLAS settings must come before jax starts
import argparse
from dataclasses import replace

import jax

import open_es  # noqa: E402
import ppo  # noqa: E402
from bench_ppo import timed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--populations", type=int, nargs="+", default=[8, 16, 32, 64])
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}")

    config = ppo.preset("breakout", log_every=0, eval_episodes=1, eval_max_steps=1)
    steps = config.num_envs * config.num_steps * args.updates
    config = replace(config, total_timesteps=steps)
    seconds = {}
    for name, optimizer_fn, optimizer_params in (
            ("Adam", ppo.hand_designed("adam"), ppo.hyperparameters(config)),
            ("OPEN", *open_es.learned_optimizer(os.path.join(ROOT, "trained", "authors", "breakout_OPEN.npy")))):
        train = jax.jit(ppo.make_train(config, optimizer_fn)).lower(jax.random.PRNGKey(0), optimizer_params).compile()
        seconds[name] = timed(train, jax.random.PRNGKey(0), optimizer_params)
        print(f"PPO + {name:4s} on {config.env_name} ({args.updates} updates): "
              f"{steps / seconds[name]:10,.0f} env steps/s")
    print(f"OPEN / Adam time: {seconds['OPEN'] / seconds['Adam']:.2f}x")

    base = open_es.OpenConfig()
    for population in args.populations:
        config = replace(base, population_size=population)
        meta = open_es.init_meta_params(config, jax.random.PRNGKey(0))
        es = open_es.make_es(config, meta)
        state = es.init(jax.random.PRNGKey(0), meta, es.default_params)
        generation = open_es.make_generation(es, open_es.make_member_returns(config, open_es.open_optimizer(config)))
        seconds = timed(generation, state, jax.random.PRNGKey(1), repeats=2)
        env_steps = population * config.num_rollouts * config.ppo.total_timesteps  # training steps; eval not counted
        print(f"ES generation, population {population:3d}: {seconds:6.1f} s, {env_steps / seconds:10,.0f} "
              f"training env steps/s")


if __name__ == "__main__":
    main()
