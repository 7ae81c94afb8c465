"""Meta-training speed and memory of optim4rl_metagrad.py, then A2C training speed with the learned optimizer next to
Adam (64 envs, the evaluation setting). Compile excluded.

    python bench/bench_optim4rl.py                                      # Catch preset (64 units x 1 env)
    python bench/bench_optim4rl.py --preset big_dense_long --units 64 256 512 --meta-steps 1
    python bench/bench_optim4rl.py --preset big_dense_long --units 64 512 --plain --compile-only --updates 0
    python bench/bench_optim4rl.py --preset big_dense_long --meta-steps 0           # A2C speeds only

With several --units, each size runs in its own subprocess, so that each peak resident memory (ru_maxrss) is that
size's alone. --compile-only reports XLA's memory plan without running (for sizes that do not fit in memory).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402, F401  first: its XLA and OpenBLAS settings must come before jax starts
import argparse
import resource
import subprocess
import time
from dataclasses import replace

import jax
import jax.numpy as jnp

import a2c  # noqa: E402
import optim4rl_metagrad as om  # noqa: E402
import ppo  # noqa: E402
from bench_ppo import timed  # noqa: E402


def meta_training(config, meta_steps, compile_only):
    """Seconds per meta-step, XLA's temporary memory and this process's peak resident memory at `config`."""
    training = om.make_meta_training(config)
    state = training.init_state(jax.random.PRNGKey(0))
    start = time.time()
    chunk = training.run_chunk.lower(state, meta_steps).compile()
    compile_seconds = time.time() - start
    memory = chunk.memory_analysis()
    seconds = float("nan")
    if not compile_only:  # one timed call of the compiled chunk: at paper sizes a meta-step takes minutes on a CPU
        start = time.perf_counter()
        jax.block_until_ready(chunk(state))
        seconds = (time.perf_counter() - start) / meta_steps
    per_update = om.AGENTS[config.algorithm].steps_per_update(om.unit_agent_config(config))
    env_steps = len(om.task_names(config)) * config.num_units * per_update * (config.inner_updates + 1)
    agent_params = sum(x.size for x in jax.tree.leaves(state.units[0].params)) // config.num_units
    print(f"{config.env_name}: {config.num_units} units x {config.envs_per_unit} envs, M = {config.inner_updates}, "
          f"{agent_params:,} agent parameters a unit, remat {config.remat} (chunk {config.remat_chunk}), "
          f"unit_chunk {config.unit_chunk}, "
          f"{jax.devices()[0].device_kind}")
    print(f"  compile              : {compile_seconds:12.1f} s")
    print(f"  meta-step            : {seconds:12.2f} s ({env_steps / seconds:,.0f} env steps/s)")
    print(f"  XLA temp memory      : {memory.temp_size_in_bytes / 2**30:12.2f} GiB (one chunk of {meta_steps})")
    print(f"  peak RSS (process)   : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:12.2f} GiB",
          flush=True)


def a2c_speeds(config, meta_params, updates):
    """Env steps/s of A2C (eval_agent_config, 64 envs) with the learned optimizer and with Adam."""
    agent_cfg = om.eval_agent_config(config)
    agent_cfg = replace(agent_cfg, total_timesteps=updates * agent_cfg.num_envs * agent_cfg.rollout_length,
                        eval_episodes=1, eval_max_steps=1)
    learned = {"meta": meta_params, "learning_rate": jnp.float32(config.agent_lr)}
    speeds = {}
    for name, fn, optimizer_params in (("Optim4RL", om.make_optimizer_fn(replace(config, remat=False)), learned),
                                       ("Adam", ppo.hand_designed("adam"), ppo.hyperparameters(agent_cfg))):
        train = jax.jit(a2c.make_train(agent_cfg, fn)).lower(jax.random.PRNGKey(0), optimizer_params).compile()
        speeds[name] = agent_cfg.total_timesteps / timed(train, jax.random.PRNGKey(0), optimizer_params)
    for name, speed in speeds.items():
        print(f"  A2C with {name:9s}   : {speed:12,.0f} env steps/s ({agent_cfg.env_name}, {agent_cfg.num_envs} envs, "
              f"{updates} updates)")
    print(f"  Adam / Optim4RL      : {speeds['Adam'] / speeds['Optim4RL']:12.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="catch")
    parser.add_argument("--units", type=int, nargs="*", default=[], help="num_units (default: the preset's)")
    parser.add_argument("--meta-steps", type=int, default=10, help="meta-steps a chunk (0: skip meta-training)")
    parser.add_argument("--updates", type=int, default=100, help="A2C updates of the speed comparison (0: skip)")
    parser.add_argument("--plain", action="store_true", help="no remat and no unit chunks (for comparison)")
    parser.add_argument("--compile-only", action="store_true")
    args = parser.parse_args()
    config = replace(om.Optim4RLConfig(), **om.PRESETS[args.preset],
                     **({"remat": False, "unit_chunk": 0} if args.plain else {}))
    om.validate(config)
    if len(args.units) > 1:  # one subprocess per size: each peak RSS is that size's alone
        flags = ["--preset", args.preset, "--meta-steps", str(args.meta_steps)] + \
            ["--plain"] * args.plain + ["--compile-only"] * args.compile_only
        for units in args.units:
            subprocess.run([sys.executable, __file__, *flags, "--units", str(units), "--updates", "0"], check=True)
    elif args.meta_steps:
        meta_training(replace(config, num_units=(args.units or [config.num_units])[0]), args.meta_steps,
                      args.compile_only)
    if args.updates:  # the speed of an update does not depend on the meta-parameters' values
        a2c_speeds(config, om.init_meta_params(config, jax.random.PRNGKey(0)), args.updates)


if __name__ == "__main__":
    main()
