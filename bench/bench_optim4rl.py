"""Meta-training speed of optim4rl_metagrad.py at its Catch preset (64 units x 16 envs, M = 4 inner updates of 20-step
rollouts and the outer rollout: 102,400 env steps a meta-step) and its memory; then A2C training speed with the learned
optimizer next to Adam (64 envs, the evaluation setting). One run, compile excluded.

    python bench/bench_optim4rl.py [--preset catch] [--meta-steps 10] [--updates 100]
"""
import os
# XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped programs (every thread idle): switch it off
# before jax starts.
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")
import argparse
import resource
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import a2c  # noqa: E402
import optim4rl_metagrad as om  # noqa: E402
import ppo  # noqa: E402
from bench_ppo import timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="catch")
    parser.add_argument("--meta-steps", type=int, default=10)
    parser.add_argument("--updates", type=int, default=100)
    args = parser.parse_args()
    config = replace(om.Optim4RLConfig(), **om.PRESETS[args.preset])
    om.validate(config)
    init_state, run_chunk = om.make_meta_training(config)
    state = init_state(jax.random.PRNGKey(0))
    chunk = run_chunk.lower(state, args.meta_steps).compile()
    memory = chunk.memory_analysis()
    seconds = timed(chunk, state)
    env_steps = config.num_units * config.envs_per_unit * om.unit_agent_config(config).rollout_length * \
        (config.inner_updates + 1)
    agent_params = sum(x.size for x in jax.tree.leaves(state.units.params)) // config.num_units

    agent_cfg = om.eval_agent_config(config)
    agent_cfg = replace(agent_cfg, total_timesteps=args.updates * agent_cfg.num_envs * agent_cfg.rollout_length,
                        eval_episodes=1, eval_max_steps=1)
    learned = {"meta": state.meta_params, "learning_rate": jnp.float32(config.agent_lr)}
    speeds = {}
    for name, fn, optimizer_params in (("Optim4RL", om.make_optimizer_fn(config), learned),
                                       ("Adam", ppo.hand_designed("adam"), ppo.hyperparameters(agent_cfg))):
        train = jax.jit(a2c.make_train(agent_cfg, fn)).lower(jax.random.PRNGKey(0), optimizer_params).compile()
        speeds[name] = agent_cfg.total_timesteps / timed(train, jax.random.PRNGKey(0), optimizer_params)

    print(f"{config.env_name}, preset {args.preset}: {config.num_units} units x {config.envs_per_unit} envs, "
          f"M = {config.inner_updates}, {agent_params:,} agent parameters a unit, {env_steps:,} env steps a meta-step, "
          f"chunks of {args.meta_steps} meta-steps, {jax.devices()[0].device_kind}")
    print(f"  meta-training        : {args.meta_steps / seconds:12.2f} meta-steps/s")
    print(f"  meta-training        : {env_steps * args.meta_steps / seconds:12,.0f} env steps/s")
    print(f"  XLA temp memory      : {memory.temp_size_in_bytes / 2**20:12,.0f} MiB (one chunk)")
    print(f"  peak RSS (process)   : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:12,.0f} MiB")
    for name, speed in speeds.items():
        print(f"  A2C with {name:9s}   : {speed:12,.0f} env steps/s ({agent_cfg.num_envs} envs, "
              f"{args.updates} updates)")


if __name__ == "__main__":
    main()
