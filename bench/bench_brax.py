"""Brax PPO: ppo.py + Adam next to brax.training.agents.ppo.train (the pinned brax's own PPO trainer), from one run:
the same env, backend, env-step budget, seeds and PPO settings (a ppo.py preset of Brax's PPO as Optim4RL ran it),
each seed trained by each in turn. Prints the final return of each (the mean and 95% CI over seeds of the return of
`--eval-episodes` stochastic-policy episodes at the end of training), the compile time and the env steps/s, and the
load average before and after.

    python bench/bench_brax.py                                     # Ant, 5M steps, 5 seeds
    python bench/bench_brax.py --preset humanoid_optim4rl --steps 5000000
    python bench/bench_brax.py --steps 20000 --num-envs 64 --seeds 2 --eval-episodes 4    # a smoke run
    python bench/bench_brax.py --no-grad-clip --only ppo     # ppo.py unclipped, as Brax's trainer runs here

Compile time: the wall time spent tracing, lowering and compiling (the union of JAX's compile events). ppo.py
compiles its whole run once and reuses it for every seed; Brax's trainer builds new functions on every call, so it
compiles again for each seed (its mean is shown). Env steps/s: the budget over each seed's wall time less its compile
time (the mean over seeds), the final evaluation included on both sides.
What differs between the two, besides the code: ppo.py's preset clips every gradient element to +-1 (Optim4RL's
configs), which Brax's trainer cannot do (max_grad_norm, a global norm, is left off). Both recompute GAE in every
minibatch of whole unrolls, leave truncated steps out, and merge the observation statistics once a rollout
(ppo.py's minibatch_gae, time_limit "exclude", normalize_per_rollout).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402  first: its XLA and OpenBLAS settings must come before jax starts
import argparse
import functools
import subprocess
import time
from dataclasses import replace

import jax
import numpy as np

import wrappers  # noqa: E402
import ppo  # noqa: E402

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
SPANS = []  # (start, end) wall times of JAX's compile events, nested ones included
jax.monitoring.register_event_time_span_listener(
    lambda event, start, end, **_: SPANS.append((start, end)) if event in COMPILE_EVENTS else None)


def timed(fn):
    """(fn(), wall seconds, seconds of that spent compiling: the union of the compile events' spans)."""
    del SPANS[:]
    start = time.time()
    out = jax.block_until_ready(fn())
    wall, compiling, reached = time.time() - start, 0.0, start
    for begin, end in sorted(SPANS):
        compiling += max(0.0, end - max(begin, reached))
        reached = max(reached, end)
    return out, wall, compiling


def train_ppo(config, seeds):
    anneal = ppo.optimizer_steps(config) if config.anneal_lr else None
    train = jax.jit(ppo.make_train(config, ppo.hand_designed(config.optimizer, anneal)))
    runs = [timed(lambda: train(jax.random.PRNGKey(seed), ppo.hyperparameters(config))) for seed in seeds]
    return [float(out["final_return"]) for out, _, _ in runs], [(wall, compiling) for _, wall, compiling in runs]


def train_brax(config, seeds):
    """brax.training.agents.ppo.train with the config's PPO: batch_size x num_minibatches / num_envs unrolls of
    unroll_length per env and update, as ppo.py's num_steps; one training epoch, then one evaluation."""
    from brax import envs
    from brax.training.agents.ppo import networks, train

    if "device_put_replicated" not in vars(jax):  # brax 0.14.2's trainer calls it; jax 0.10 dropped it from its
        from jax._src.api import device_put_replicated  # namespace, but not the function (in jax._src.api)
        jax.device_put_replicated = device_put_replicated
    environment = envs.get_environment(config.env_name, backend=config.brax_backend)
    network_factory = functools.partial(
        networks.make_ppo_networks, policy_hidden_layer_sizes=(config.width,) * config.depth,
        value_hidden_layer_sizes=(config.critic_width or config.width,) * (config.critic_depth or config.depth))
    kwargs = dict(
        num_timesteps=config.total_timesteps, episode_length=config.episode_length, num_envs=config.num_envs,
        batch_size=config.num_envs * config.num_steps // (config.unroll_length * config.num_minibatches),
        unroll_length=config.unroll_length, num_minibatches=config.num_minibatches,
        num_updates_per_batch=config.update_epochs, learning_rate=config.learning_rate, entropy_cost=config.ent_coef,
        discounting=config.gamma, gae_lambda=config.gae_lambda, clipping_epsilon=config.clip_eps,
        reward_scaling=config.reward_scale, normalize_observations=config.normalize_obs,
        vf_loss_coefficient=config.vf_coef, network_factory=network_factory, num_evals=1,
        num_eval_envs=config.eval_episodes, deterministic_eval=False)
    runs = [timed(lambda: train.train(environment, seed=seed, **kwargs)[2]) for seed in seeds]  # the metrics
    return ([float(metrics["eval/episode_reward"]) for metrics, _, _ in runs],
            [(wall, compiling) for _, wall, compiling in runs])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="ant_optim4rl", help="a ppo.py preset of Brax's PPO (unroll_length > 0)")
    parser.add_argument("--env", default=None, help="a Brax env (default: the preset's)")
    parser.add_argument("--steps", type=int, default=5_000_000, help="env-step budget of each run")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--num-envs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--eval-episodes", type=int, default=128, help="Brax's default num_eval_envs")
    parser.add_argument("--no-grad-clip", action="store_true",
                        help="ppo.py without the preset's gradient clip, as Brax's trainer runs here")
    parser.add_argument("--only", choices=("ppo", "brax"), default=None, help="run one trainer (default: both)")
    args = parser.parse_args()
    config = ppo.preset(args.preset, log_every=0, eval_episodes=args.eval_episodes)
    config = replace(config, env_name=args.env or config.env_name, num_envs=args.num_envs or config.num_envs)
    if args.no_grad_clip:
        config = replace(config, grad_clip_mode="global_norm", max_grad_norm=float("inf"))
    if not config.unroll_length or config.env_name not in wrappers.BRAX_ENVS:
        raise SystemExit(f"--preset {args.preset} / --env {config.env_name}: need a preset of Brax's PPO "
                         "(unroll_length > 0, e.g. ant_optim4rl, humanoid_optim4rl) and a Brax env")
    batch = config.num_envs * config.num_steps
    config = replace(config, total_timesteps=max(1, round(args.steps / batch)) * batch)  # whole updates for both
    ppo.validate(config)
    seeds = range(args.seeds)
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    trainers = {"ppo": ("ppo.py + Adam", train_ppo), "brax": ("brax ppo.train", train_brax)}
    results = {name: fn(config, seeds) for key, (name, fn) in trainers.items() if args.only in (None, key)}
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    print(f"\n{config.env_name} ({config.brax_backend} backend), ppo.py preset {args.preset}: "
          f"{config.total_timesteps:,} env steps x {args.seeds} seeds, {config.num_envs} envs x {config.num_steps} "
          f"steps per update ({config.unroll_length}-step unrolls), {config.update_epochs} epochs x "
          f"{config.num_minibatches} minibatches; ppo.py's gradient clip: {config.grad_clip_mode} "
          f"{config.max_grad_norm}; final return over {config.eval_episodes} episodes; "
          f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    print(f"{'':16s} {'final return: mean [95% CI]':>35s} {'compile s':>10s} {'env steps/s':>12s}")
    for name, (returns, times) in results.items():
        mean, half = runs.t_interval(returns, 0.95)  # Student-t interval over seeds
        low, high = mean - half, mean + half
        compiling = times[0][1] if name.startswith("ppo.py") else np.mean([c for _, c in times])
        speed = config.total_timesteps / np.mean([wall - c for wall, c in times])
        print(f"{name:16s} {mean:14.1f} [{low:8.1f}, {high:8.1f}] {compiling:10.1f} {speed:12,.0f}")
        print(f"{'':16s} per seed: {', '.join(f'{r:.1f}' for r in returns)}")
    print(f"load before: {load_before}\nload after:  {load_after}")


if __name__ == "__main__":
    main()
