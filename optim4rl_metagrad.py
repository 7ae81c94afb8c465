"""Optim4RL (Lan et al., 2023): a learned optimizer for RL, meta-trained with meta-gradients and pipeline training.

    python optim4rl_metagrad.py                       # meta-train on Catch (meta_rl_catch.json), then evaluate
    python optim4rl_metagrad.py --preset no_pipeline  # Table 1's ablation; --architecture l2lgd2: Sec. 6.1's
    python optim4rl_metagrad.py --preset six_gridworlds        # Sec. 6.2 (also big_dense_long, ant): for GPUs
    python optim4rl_metagrad.py --eval runs/optim4rl_six_gridworlds --eval-env ant   # transfer to Brax with PPO

The optimizer (Algorithm 1, App. A) works coordinate-wise: every agent parameter has its own hidden states of two
GRUs; GRU1 reads the gradient g and a read-out maps its state to o1, GRU2 reads g^2 and another read-out gives o2;
m = sign(g) exp(o1), v = exp(o2) and the update is -lr m / sqrt(v + eps) (eq. 2). The input gradient is stop-gradient.
As in the authors' code (components/optim.py, RLC 2024 version) each read-out is one Dense layer with flax's default
init; App. A's MLPs [16, 16] and the 2023 code's inputs [sign g, log|g|] are `--preset processed_inputs`.
`make_optimizer_fn(config)({"meta": meta_params, "learning_rate": lr})` is an ordinary optax transformation (context
keyword arguments ignored) for a2c.py, ppo.py or any optax loop; `learned_optimizer(path)` loads a checkpoint's.

Meta-training (Sec. 2.2, 5.1, App. C): n training units (agent parameters, envs, optimizer state) are vmapped; each
meta-step makes M inner updates per unit (a2c.py, or ppo.py for Brax, each on a fresh rollout), takes the agent's loss
on the next rollout as the outer loss, averages its meta-gradient over units (through the parameter updates and the
GRU states) and, in multi-task training (Sec. 6.2), over tasks, and applies Adam with global-norm clipping. With
pipeline training, unit i is re-initialised when t mod m == r_i. Memory (the authors' big_dense_long needs 66 GB):
`remat` and `unit_chunk` backpropagate chunk by chunk, so 512 units fit in about 10 GiB.
"""
import runs  # first: its XLA and OpenBLAS settings must come before jax starts
import os
import functools
import json
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.flatten_util import ravel_pytree

import a2c
import gridworld
import wrappers
import ppo
from ppo import hand_designed, hyperparameters


@dataclass(frozen=True)
class Optim4RLConfig:
    architecture: str = "optim4rl"  # "optim4rl" (Algorithm 1); ablations (Sec. 6.1): "linear_optim", "l2lgd2"
    gru_size: int = 8  # hidden size of each GRU (Sec. 6, App. A)
    mlp_sizes: tuple[int, ...] = ()  # hidden layers of each read-out: none in the authors' code; App. A: 16 16
    gradient_processing: bool = False  # GRU inputs [sign g, log|g|] and log g^2 (the 2023 code) instead of g, g^2
    zero_readout: bool = False  # zero read-out kernels: start as exactly sign-SGD; off: flax's default, as the authors
    agent_lr: float = 1e-3  # lr of eq. 2; Catch 1e-3, big_dense_long 3e-3, Brax 3e-4 (App. C.3, meta_rl_*.json)
    algorithm: str = "a2c"  # the units' agent: "a2c" (Catch, gridworlds; App. C) or "ppo" (Brax; App. C.3)
    env_name: str = "Catch-bsuite"  # meta-training env, with its a2c.py preset (App. C)
    tasks: tuple[str, ...] = ()  # multi-task (Sec. 6.2): gridworlds at once, Table 3 reward scales; (): env_name
    task_lrs: tuple[float, ...] = ()  # multi-task: agent lr of each task (meta_rl_grid.json); (): agent_lr for all
    num_units: int = 64  # n training units (Sec. 5.1); Catch: 64 (App. C.3)
    envs_per_unit: int = 1  # envs of each unit's agent: 1 in the authors' code (meta_rl_catch.json: 64 envs = units)
    inner_updates: int = 4  # M inner updates per outer update (Sec. 2.2, App. C)
    pipeline: bool = True  # pipeline training (Sec. 5.1); off: units start together and are never reset
    reset_interval: int = 32  # m (Sec. 5.1); Catch: 32 or 64 (App. C.3)
    num_meta_steps: int = 78  # outer updates; Catch: 5e5 env steps / (64 units x 20 steps x (M + 1)), as authors
    meta_lr: float = 1e-2  # Adam meta-lr: the top of meta_rl_catch.json's sweep {1e-4, ..., 1e-2}, best in 78 steps
    meta_grad_clip: float = 0.5  # clip of the meta-gradient: global norm 0.5 or element-wise 1.0 (meta_rl_*.json)
    meta_grad_clip_mode: str = "global_norm"  # "global_norm" or "elementwise" (the authors' grad_norm / grad_clip)
    # Rematerialise the optimizer network in backprop, `remat_chunk` parameters at a time; off: keep its activations
    # (Catch: 1.0-1.1 s a meta-step and 2.1 GiB with, 1.27 s and 3.9 GiB without; bench/bench_optim4rl.py).
    remat: bool = True
    remat_chunk: int = 16_384
    unit_chunk: int = 0  # backprop through this many units at a time, one chunk after another (0: all at once)
    checkpoint_every: int = 50  # K: meta-steps per compiled chunk; a progress line and a checkpoint after each
    run_dir: str = "runs/optim4rl_catch"  # checkpoint.msgpack (meta-state + this config) and evaluation outputs
    seed: int = 0  # seed of meta-training; evaluation seeds are seed, seed + 1, ...
    eval: Optional[str] = None  # a checkpoint (or its run dir) to evaluate instead of meta-training
    eval_env: Optional[str] = None  # env of the evaluation (None: env_name), trained with its a2c.py preset
    eval_seeds: int = 10  # N seeds per optimizer (Sec. 6: 10 runs, 90% confidence intervals)
    eval_timesteps: int = 500_000  # env steps of each evaluation run (the authors' Catch runs: 5e5)
    wandb: bool = False  # log the progress records (run_dir/metrics.jsonl) to Weights & Biases too (`wandb` extra)
    eval_baseline_lrs: tuple[float, ...] = ()  # Adam, RMSprop at each of these lrs (a2c_grid.json); (): the agent lr


# Gridworld meta-training at paper scale (App. C.3-C.4; meta_rl_{sdl,bdl,grid}.json): 512 units of one env each; m
# from {72, ..., 576}; evaluated over a2c.py's 3e7-step, 512-env runs (lopt_rl_*.json), baselines at a2c_grid's lrs.
GRIDWORLD = dict(num_units=512, envs_per_unit=1, reset_interval=144, num_meta_steps=2000, checkpoint_every=25,
                 remat_chunk=4096, unit_chunk=64, eval_timesteps=30_000_000, meta_lr=3e-3,
                 eval_baseline_lrs=(3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4))
# meta_rl_grid.json: the agent lr of each of the six gridworlds.
SIX_GRIDWORLD_LRS = {"small_dense_long": 1e-3, "small_dense_short": 3e-3, "big_sparse_short": 3e-3,
                     "big_dense_short": 3e-3, "big_sparse_long": 1e-3, "big_dense_long": 3e-3}
# PPO on Brax (App. C.3, meta_rl_{ant,humanoid}.json: ppo.py's *_optim4rl_meta presets): 2048 envs as 16 units of 128;
# m from {32, ..., 512}; evaluated with the *_optim4rl presets over 1e8 steps (lopt_rl_grid_*.json "train_steps").
HUMANOID = "humanoid@brax-0.9.4"  # Humanoid as brax 0.9.4 had it, which the authors pinned (wrappers.py)
BRAX = dict(algorithm="ppo", agent_lr=3e-4, num_units=16, envs_per_unit=128, reset_interval=128, num_meta_steps=1000,
            checkpoint_every=10, remat_chunk=4096, unit_chunk=4, eval_timesteps=100_000_000, meta_lr=3e-3)
PRESETS = {
    "default": {},
    "catch": {},  # meta_rl_catch.json: 64 units of one env, agent lr 1e-3, m = 32 (or 64), global-norm clip 0.5
    "catch_m64": dict(reset_interval=64),
    "catch_elementwise_clip": dict(meta_grad_clip_mode="elementwise", meta_grad_clip=1.0),  # meta_rl_catch.json
    "catch_16_envs": dict(envs_per_unit=16),  # this repo's earlier default: less noisy meta-gradients
    # App. A's MLPs [16, 16], the inputs of the authors' 2023 code (commit ab902e3) and zero read-outs
    "processed_inputs": dict(gradient_processing=True, mlp_sizes=(16, 16), zero_readout=True),
    "no_pipeline": dict(pipeline=False),
    **{f"{name}{suffix}": dict({"env_name": name, **settings}, pipeline=not suffix,
                               run_dir=f"runs/optim4rl_{name}{suffix}")
       for name, settings in (("small_dense_long", dict(GRIDWORLD, agent_lr=3e-2)),  # meta_rl_sdl.json, lopt_rl_sdl
                              ("big_dense_long", dict(GRIDWORLD, agent_lr=3e-3)), ("ant", BRAX),
                              ("humanoid", dict(BRAX, env_name=HUMANOID)))
       for suffix in ("", "_no_pipeline")},  # Table 1
    "six_gridworlds": dict(GRIDWORLD, env_name="big_dense_long", tasks=gridworld.OPTIM4RL_LEVELS, agent_lr=3e-3,
                           task_lrs=tuple(SIX_GRIDWORLD_LRS[n] for n in gridworld.OPTIM4RL_LEVELS),
                           run_dir="runs/optim4rl_six_gridworlds"),  # Sec. 6.2, App. C.4, meta_rl_grid.json
}
# The agent preset of each env (a2c.py's or ppo.py's PRESETS): (for meta-training units, for evaluation).
AGENT_PRESETS = {"Catch-bsuite": ("catch", "catch"), **{name: (name, name) for name in gridworld.OPTIM4RL_LEVELS},
                 "ant": ("ant_optim4rl_meta", "ant_optim4rl"),
                 HUMANOID: ("humanoid_optim4rl_meta", "humanoid_optim4rl"),
                 **{ppo.PRESETS[n]["env_name"]: (n, n) for n in ("asterix", "breakout", "freeway", "spaceinvaders")}}
META_GRAD_CLIP_MODES = ("global_norm", "elementwise")
AGENTS = {"a2c": a2c, "ppo": ppo}  # Optim4RLConfig.algorithm: the module of the units' agent
ARCHITECTURES = {"optim4rl": (1, 1), "linear_optim": (3,), "l2lgd2": (1,)}  # outputs of the read-out of each GRU
ARCHITECTURE_FIELDS = ("architecture", "gru_size", "mlp_sizes", "gradient_processing", "zero_readout")
EVAL_FIELDS = ("eval", "eval_env", "eval_seeds", "eval_timesteps")  # a checkpoint's eval_baseline_lrs kept by --eval
# Free to change when resuming: the run's length, outputs and evaluation, and (MEMORY_FIELDS) memory and speed
RUN_FIELDS = ("num_meta_steps", "checkpoint_every", "run_dir", "eval_baseline_lrs", "wandb") + EVAL_FIELDS
MEMORY_FIELDS = ("remat", "remat_chunk", "unit_chunk")
EPS = 1e-8  # eps of eq. 2 (Algorithm 1)
LOG_EPS = 1e-18  # inside log|g| (the authors' code)
L2L_P = 10.0  # p of L2LGD^2's gradient preprocessing (Andrychowicz et al. 2016, App. A)


def agent_config(env_name, algorithm="a2c", meta=False, **overrides):
    """The a2c.py or ppo.py config of `env_name`: its preset in AGENT_PRESETS (Optim4RL App. C, C.3; `meta`: the one
    for meta-training) where the agent has it, the agent's defaults otherwise."""
    agent = AGENTS[algorithm]
    name = AGENT_PRESETS.get(env_name, ("default", "default"))[not meta]
    return agent.preset(name if name in agent.PRESETS else "default", env_name=env_name, log_every=0, **overrides)


def task_lr(config, env_name):
    """The agent lr of a meta-training env: its task_lrs entry in multi-task training (meta_rl_grid.json), else
    agent_lr."""
    return dict(zip(config.tasks, config.task_lrs)).get(env_name, config.agent_lr)


def unit_agent_config(config, env_name=None):
    env_name = env_name or config.env_name
    return agent_config(env_name, config.algorithm, meta=True, num_envs=config.envs_per_unit,
                        learning_rate=task_lr(config, env_name))


def task_names(config):
    """The env of each group of units: `tasks` in multi-task training (Sec. 6.2), else env_name alone."""
    return tuple(config.tasks) or (config.env_name,)


def make_unit_agents(config):
    """One A2C or PPO agent (a2c.make_agent, ppo.make_agent) per task; in multi-task training each gridworld's
    rewards are scaled by Table 3."""
    def env_params(name):
        return gridworld.make(name, reward_scale=gridworld.REWARD_SCALES[name])[1] if config.tasks else None

    return tuple(AGENTS[config.algorithm].make_agent(unit_agent_config(config, name), env_params(name))
                 for name in task_names(config))


def eval_algorithm(config):
    """PPO on Brax envs (Sec. 6.2) and for optimizers meta-trained with PPO; A2C otherwise."""
    return "ppo" if (config.eval_env or config.env_name) in wrappers.BRAX_ENVS else config.algorithm


def eval_agent_config(config):
    """On a meta-training env at its agent lr (Catch: 1e-3, App. C.3); on another env at that env's preset lr."""
    env_name = config.eval_env or config.env_name
    lr = {"learning_rate": task_lr(config, env_name)} if env_name in (config.env_name,) + config.tasks else {}
    return agent_config(env_name, eval_algorithm(config), total_timesteps=config.eval_timesteps,
                        num_seeds=config.eval_seeds, **lr)


def validate(config):
    """Refuse bad settings with a message naming the value and the valid choices, before anything compiles."""
    runs.require_choice("architecture", config.architecture, ARCHITECTURES)
    runs.require_choice("algorithm", config.algorithm, AGENTS)
    runs.require_choice("meta_grad_clip_mode", config.meta_grad_clip_mode, META_GRAD_CLIP_MODES)
    if config.task_lrs and len(config.task_lrs) != len(config.tasks):
        raise ValueError(f"task_lrs {config.task_lrs} must give one lr per task of {config.tasks}")
    if min(config.task_lrs + config.eval_baseline_lrs, default=1.0) <= 0:
        raise ValueError(f"learning rates must be positive, got task_lrs {config.task_lrs} and eval_baseline_lrs "
                         f"{config.eval_baseline_lrs}")
    unknown = [name for name in config.tasks if name not in gridworld.REWARD_SCALES]
    if unknown or len(set(config.tasks)) < len(config.tasks):
        raise ValueError(f"tasks must be distinct Optim4RL gridworlds, got {config.tasks}; valid: "
                         f"{', '.join(gridworld.REWARD_SCALES)}")
    runs.require_positive(config, "gru_size", "num_units", "envs_per_unit", "inner_updates", "num_meta_steps",
                          "checkpoint_every", "eval_timesteps", "remat_chunk")
    if config.unit_chunk < 0 or config.unit_chunk and config.num_units % config.unit_chunk:
        raise ValueError(f"unit_chunk must be 0 or divide num_units = {config.num_units}, got {config.unit_chunk}")
    if config.reset_interval < 1:
        raise ValueError(f"reset_interval must be at least 1, got {config.reset_interval}")
    if min(config.mlp_sizes, default=1) < 1:
        raise ValueError(f"mlp_sizes must be positive sizes, got {config.mlp_sizes}")
    if config.eval_seeds < 2:
        raise ValueError(f"eval_seeds must be at least 2 for a confidence interval, got {config.eval_seeds}")
    runs.require_positive(config, "agent_lr", "meta_lr", "meta_grad_clip")
    runs.check_wandb(config.wandb)
    if config.eval and not os.path.exists(checkpoint_path(config.eval)):
        raise ValueError(f"eval: no checkpoint at {config.eval!r}")
    for name in task_names(config):
        AGENTS[config.algorithm].validate(unit_agent_config(config, name))
    AGENTS[eval_algorithm(config)].validate(eval_agent_config(config))


# ----------------------------------------------------------------------------------------------- the optimizer
class LearnedOptimizer(nn.Module):
    """One GRU per input (Algorithm 1: g and g^2; LinearOptim and L2LGD^2: g), each followed by an MLP head. Applied to
    a flat vector of N gradients with hidden states (N, GRUs, gru_size); returns the new states and the outputs
    (N, o)."""
    architecture: str
    gru_size: int
    mlp_sizes: tuple[int, ...]
    gradient_processing: bool
    zero_readout: bool

    @nn.compact
    def __call__(self, hidden, g):
        log_abs = jnp.log(jnp.abs(g) + LOG_EPS)
        if self.architecture == "l2lgd2":
            inputs = (l2l_preprocess(g, log_abs),)
        elif self.gradient_processing:  # RL gradients span many orders of magnitude (ICLR 2024 version)
            inputs = (jnp.stack([jnp.sign(g), log_abs], -1), 2.0 * log_abs[:, None])
        else:
            inputs = (g[:, None], (g * g)[:, None])
        states, outputs = [], []
        for i, num_outputs in enumerate(ARCHITECTURES[self.architecture]):
            state, x = nn.GRUCell(self.gru_size, name=f"gru{i + 1}")(hidden[:, i], inputs[i])
            for j, size in enumerate(self.mlp_sizes):
                x = nn.relu(nn.Dense(size, name=f"mlp{i + 1}_{j}")(x))
            # zero read-out: o = 0 at first, so Optim4RL is exactly sign-SGD, -lr sign(g), the others SGD; flax's
            # default (the authors') is close to that while the states are small, and lets meta-gradients reach the GRUs
            init = nn.initializers.zeros if self.zero_readout else nn.initializers.lecun_normal()
            outputs.append(nn.Dense(num_outputs, kernel_init=init, name=f"out{i + 1}")(x))
            states.append(state)
        return jnp.stack(states, 1), jnp.concatenate(outputs, -1)


def l2l_preprocess(g, log_abs):
    """L2LGD^2's input (Andrychowicz et al. 2016, App. A): (log|g| / p, sign g) if log|g| / p >= -1, else
    (-1, e^p g)."""
    scaled = log_abs / L2L_P
    large = scaled >= -1.0
    return jnp.stack([jnp.where(large, scaled, -1.0), jnp.where(large, jnp.sign(g), np.exp(L2L_P) * g)], -1)


def parameter_update(architecture, g, o, learning_rate):
    """Optim4RL, eq. 2: m = sign(g) exp(o1), v = exp(o2), -lr m / sqrt(v + eps). LinearOptim (Sec. 6.1):
    -lr (exp(o1) g + exp(o2) o3). L2LGD^2 (Andrychowicz et al., 2016): -lr exp(o) g."""
    if architecture == "optim4rl":
        return -learning_rate * jnp.sign(g) * jnp.exp(o[:, 0]) / jnp.sqrt(jnp.exp(o[:, 1]) + EPS)
    if architecture == "l2lgd2":
        return -learning_rate * jnp.exp(o[:, 0]) * g
    return -learning_rate * (jnp.exp(o[:, 0]) * g + jnp.exp(o[:, 1]) * o[:, 2])


def optimizer_network(config):
    return LearnedOptimizer(config.architecture, config.gru_size, tuple(config.mlp_sizes), config.gradient_processing,
                            config.zero_readout)


def rematerialised(apply, chunk):
    """`apply(hidden, g)` on chunks of at most `chunk` parameters under jax.checkpoint, one chunk after another:
    backprop keeps only each chunk's inputs and recomputes the GRU/MLP activations of one chunk at a time, so memory
    holds one chunk's activations instead of every parameter's (the coordinate-wise network dominates memory)."""
    def chunked(hidden, g):
        size = g.shape[0]
        num_chunks = -(-size // chunk)
        length = -(-size // num_chunks)  # the fewest chunks, as even as possible: little padding
        pad = num_chunks * length - size
        hidden_chunks = jnp.pad(hidden, ((0, pad), (0, 0), (0, 0))).reshape((num_chunks, length) + hidden.shape[1:])
        g_chunks = jnp.pad(g, (0, pad)).reshape((num_chunks, length))
        hidden_chunks, o_chunks = jax.lax.map(jax.checkpoint(lambda x: apply(*x)), (hidden_chunks, g_chunks))
        return hidden_chunks.reshape((-1,) + hidden.shape[1:])[:size], o_chunks.reshape((-1, o_chunks.shape[-1]))[:size]

    return chunked


class LearnedOptimizerState(NamedTuple):
    hidden: jax.Array  # (parameters, GRUs, gru_size): every parameter's own GRU states (Algorithm 1)


def make_optimizer_fn(config):
    """`optimizer_fn({"meta": meta_params, "learning_rate": lr})` -> optax transformation of Algorithm 1."""
    network = optimizer_network(config)
    num_grus = len(ARCHITECTURES[config.architecture])

    def optimizer_fn(optimizer_params):
        def init(params):
            size = sum(x.size for x in jax.tree.leaves(params))
            return LearnedOptimizerState(jnp.zeros((size, num_grus, config.gru_size)))

        def update(updates, state, params=None, **context):
            g, unravel = ravel_pytree(updates)
            g = jax.lax.stop_gradient(g)  # Algorithm 1: the input gradient carries no meta-gradient
            apply = functools.partial(network.apply, optimizer_params["meta"])
            hidden, o = (rematerialised(apply, config.remat_chunk) if config.remat else apply)(state.hidden, g)
            return unravel(parameter_update(config.architecture, g, o, optimizer_params["learning_rate"])), \
                LearnedOptimizerState(hidden)

        return optax.GradientTransformationExtraArgs(init, update)

    return optimizer_fn


def init_meta_params(config, rng):
    """The meta-parameters that meta-training with key `rng` starts from (near sign-SGD; exactly with zero_readout)."""
    num_grus = len(ARCHITECTURES[config.architecture])
    return optimizer_network(config).init(jax.random.fold_in(rng, 1), jnp.zeros((1, num_grus, config.gru_size)),
                                          jnp.zeros(1))


# ----------------------------------------------------------------------------------------------- meta-training
class Unit(NamedTuple):
    """A training unit (Sec. 5.1): an A2C or PPO agent, its envs, its optimizer state, iterations since its last
    reset."""
    params: dict
    opt_state: LearnedOptimizerState  # of all agent parameters (PPO: actor and critic in one tree, as in ppo.py)
    env_state: object
    obs: jax.Array
    age: jax.Array


class MetaState(NamedTuple):
    meta_params: dict
    meta_opt_state: tuple
    units: tuple  # one Unit per task (task_names), every leaf with a leading axis of num_units
    step: jax.Array  # t, meta-steps done
    skipped: jax.Array  # meta-steps whose meta-gradient was not finite
    rng: jax.Array


class MetaTraining(NamedTuple):
    init_state: Callable  # rng -> MetaState
    run_chunk: Callable  # (state, length) -> (state, metrics of each meta-step)
    meta_gradient: Callable  # (meta_params, units, keys (tasks, units, 2)) -> ((loss, (units, returns)), grads)


def reset_offsets(num_units, reset_interval):
    """r_i = int(linspace(0, m - 1, n)) (Sec. 5.1)."""
    return np.linspace(0, reset_interval - 1, num_units).astype(np.int32)


def reset_mask(step, offsets, reset_interval, pipeline):
    """Which units are re-initialised at meta-step t: t mod m == r_i with pipeline training, none without."""
    return jnp.logical_and(pipeline, step % reset_interval == offsets)


def outer_loss(meta_params, unit, key, agent, optimizer_fn, config):
    """One unit's part of a meta-step (Sec. 2.2): M inner updates with the learned optimizer, each on a fresh rollout,
    then the A2C loss of the updated parameters on the next rollout. Returns (loss, (unit after, training return))."""
    optimizer = optimizer_fn({"meta": meta_params, "learning_rate": config.agent_lr})
    training_proportion = unit.age / config.reset_interval  # context for learned optimizers (Optim4RL ignores it)

    def inner(carry, key):
        params, opt_state, env_state, obs, metrics = agent.update(*carry, key, optimizer, training_proportion)
        return (params, opt_state, env_state, obs), metrics["episode_return"]

    keys = jax.random.split(key, config.inner_updates + 1)
    (params, opt_state, env_state, obs), returns = jax.lax.scan(
        inner, (unit.params, unit.opt_state, unit.env_state, unit.obs), keys[:-1])
    trajectory, env_state, obs = agent.rollout(params, env_state, obs, keys[-1])
    loss, _ = agent.loss(params, trajectory)
    return loss, (Unit(params, opt_state, env_state, obs, unit.age + 1), returns[-1])


def meta_gradient_clip(config):
    """The meta-gradient's clip: global norm (the authors' grad_norm) or element-wise (their grad_clip)."""
    clip = optax.clip_by_global_norm if config.meta_grad_clip_mode == "global_norm" else optax.clip
    return clip(config.meta_grad_clip)


def make_meta_optimizer(config):
    return optax.chain(meta_gradient_clip(config), optax.adam(config.meta_lr))


def apply_meta_gradient(meta_optimizer, state, units, grads, rng):
    """Adam step on the meta-parameters. A non-finite meta-gradient is not applied: the step is counted as skipped
    and the run continues from the state before it (meta-parameters, Adam state and units), with a new key."""
    finite = jnp.all(jnp.array([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
    updates, meta_opt_state = meta_optimizer.update(grads, state.meta_opt_state, state.meta_params)
    candidate = (optax.apply_updates(state.meta_params, updates), meta_opt_state, units)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), candidate,
                        (state.meta_params, state.meta_opt_state, state.units))
    return MetaState(*kept, state.step + 1, state.skipped + (~finite).astype(jnp.int32), rng)


def make_meta_training(config):
    """MetaTraining(init_state, run_chunk, meta_gradient), all jitted; run_chunk makes `length` meta-steps in one
    lax.scan. Configs that differ only in RUN_FIELDS or seed (e.g. a resumed, longer run) share one compiled program."""
    return _meta_training(replace(config, **{n: getattr(Optim4RLConfig, n) for n in RUN_FIELDS + ("seed",)}))


@functools.lru_cache(maxsize=8)
def _meta_training(config):
    agents = make_unit_agents(config)
    task_configs = [replace(config, agent_lr=task_lr(config, name)) for name in task_names(config)]
    optimizer_fn = make_optimizer_fn(config)
    meta_optimizer = make_meta_optimizer(config)
    offsets = jnp.asarray(reset_offsets(config.num_units, config.reset_interval))

    def fresh_units(key):
        """A new group of units for each task (keys: (tasks, units, 2))."""
        def fresh_unit(agent, key):
            params, env_state, obs = agent.init(key)
            opt_state = optimizer_fn(None).init(params)  # init needs no meta-parameters; PPO: actor and critic
            return Unit(params, opt_state, env_state, obs, jnp.int32(0))

        return tuple(jax.vmap(functools.partial(fresh_unit, agent))(keys) for agent, keys in zip(agents, key))

    def unit_keys(key):
        return jax.random.split(key, (len(agents), config.num_units))

    def init_state(rng):
        meta_params = init_meta_params(config, rng)
        rng, units_key = jax.random.split(rng)
        units = fresh_units(unit_keys(units_key))
        return MetaState(meta_params, meta_optimizer.init(meta_params), units, jnp.int32(0), jnp.int32(0), rng)

    def task_gradient(agent, task_config, meta_params, group, keys):
        """A task's outer loss averaged over its units, its meta-gradient, the units after and their mean return.
        Units go through backprop in chunks of unit_chunk, one chunk after another: memory holds one chunk's
        activations, and the gradient is the mean of the equal-sized chunks' mean gradients."""
        def chunk_loss(meta_params, group, keys):
            loss, (group, returns) = jax.vmap(outer_loss, in_axes=(None, 0, 0, None, None, None))(
                meta_params, group, keys, agent, optimizer_fn, task_config)
            return loss.mean(), (group, returns)

        def chunk_step(total, chunk):
            (loss, aux), grads = jax.value_and_grad(chunk_loss, has_aux=True)(meta_params, *chunk)
            return jax.tree.map(jnp.add, total, grads), (loss, aux)

        size = config.unit_chunk or config.num_units
        chunks = jax.tree.map(lambda x: x.reshape((config.num_units // size, size) + x.shape[1:]), (group, keys))
        total, (losses, (group, returns)) = jax.lax.scan(chunk_step, jax.tree.map(jnp.zeros_like, meta_params),
                                                         chunks)
        group = jax.tree.map(lambda x: x.reshape((config.num_units,) + x.shape[2:]), group)
        return losses.mean(), group, jnp.nanmean(returns), jax.tree.map(lambda g: g / losses.size, total)

    def meta_gradient(meta_params, units, keys):
        """The meta-gradient averaged over each task's units, then over tasks (Sec. 5.1, 6.2)."""
        per_task = [task_gradient(agent, task_config, meta_params, group, group_keys)  # shapes differ: one per task
                    for agent, task_config, group, group_keys in zip(agents, task_configs, units, keys)]
        losses, groups, returns, grads = zip(*per_task)
        grads = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
        return (jnp.mean(jnp.stack(losses)), (tuple(groups), jnp.stack(returns))), grads

    def meta_step(state, _):
        rng, reset_key, step_key = jax.random.split(state.rng, 3)
        reset = reset_mask(state.step, offsets, config.reset_interval, config.pipeline)
        units = jax.tree.map(lambda f, u: jnp.where(reset.reshape((-1,) + (1,) * (u.ndim - 1)), f, u),
                             fresh_units(unit_keys(reset_key)), state.units)
        (loss, (units, returns)), grads = meta_gradient(state.meta_params, units, unit_keys(step_key))
        metrics = {"outer_loss": loss, "train_return": returns, "grad_norm": optax.tree.norm(grads)}
        return apply_meta_gradient(meta_optimizer, state, units, grads, rng), metrics

    def run_chunk(state, length):
        return jax.lax.scan(meta_step, state, None, length)

    return MetaTraining(jax.jit(init_state), jax.jit(run_chunk, static_argnums=1), jax.jit(meta_gradient))


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, config, state):
    """The whole meta-state and the config, in the repo's one checkpoint format (runs.save_checkpoint)."""
    runs.save_checkpoint(path, {"config": json.dumps(asdict(config)), "optim4rl_state": serialization.to_state_dict(
        jax.tree.map(np.asarray, state))})


def checkpoint_path(path):  # a checkpoint, or the run dir holding one
    return os.path.join(path, "checkpoint.msgpack") if os.path.isdir(path) else path


def read_checkpoint(path):
    """(config, payload) of a checkpoint or its run dir; a damaged file is named (runs.load_checkpoint)."""
    payload = runs.load_checkpoint(checkpoint_path(path))
    if payload is None or "optim4rl_state" not in payload:
        raise ValueError(f"no optim4rl_metagrad.py checkpoint at {path!r}")
    return runs.config_from_dict(Optim4RLConfig, json.loads(payload["config"])), payload


def is_checkpoint(path):
    """Whether `path` is a checkpoint of this script or a run dir holding one."""
    try:
        return "optim4rl_state" in runs.read_input(checkpoint_path(path), "a checkpoint", ())
    except (OSError, ValueError):
        return False


def load_state(path, config):
    """The meta-state in a checkpoint written with `config`'s architecture and training settings; anything else is
    refused with the differing fields named, before anything compiles."""
    saved, payload = read_checkpoint(path)
    for names, what in ((ARCHITECTURE_FIELDS, "another architecture"),
                        ([f.name for f in fields(config) if f.name not in RUN_FIELDS + MEMORY_FIELDS],
                         "other training settings")):
        runs.refuse_other(f"checkpoint {path}", what, {n: getattr(saved, n) for n in names},
                          {n: getattr(config, n) for n in names})
    template = jax.eval_shape(make_meta_training(config).init_state, jax.random.PRNGKey(config.seed))
    state = serialization.from_state_dict(template, payload["optim4rl_state"])
    if [np.shape(a) for a in jax.tree.leaves(state)] != [x.shape for x in jax.tree.leaves(template)]:
        raise ValueError(f"checkpoint {path} does not fit the meta-state of its config")
    return jax.tree.map(lambda a, x: jnp.asarray(a, x.dtype), state, template)


def learned_optimizer(path, learning_rate=None):
    """(optimizer_fn, optimizer_params) of the learned optimizer in checkpoint `path` (or its run dir), for ppo.py's
    or a2c.py's make_train; the lr of eq. 2 defaults to the checkpoint's agent_lr."""
    config, _ = read_checkpoint(path)
    meta_params = load_state(path, config).meta_params
    lr = config.agent_lr if learning_rate is None else learning_rate
    return make_optimizer_fn(replace(config, remat=False)), {"meta": meta_params, "learning_rate": jnp.float32(lr)}


def meta_train(config):
    """Meta-train in chunks of `checkpoint_every` meta-steps, resuming from run_dir's checkpoint if there is one."""
    validate(config)
    os.makedirs(config.run_dir, exist_ok=True)
    path = os.path.join(config.run_dir, "checkpoint.msgpack")
    state = load_state(path, config) if os.path.exists(path) or os.path.exists(f"{path}.prev") else None
    training = make_meta_training(config)
    state = training.init_state(jax.random.PRNGKey(config.seed)) if state is None else state
    if int(state.step):
        print(f"resuming {path} at meta-step {int(state.step)}")
    agent_cfg = unit_agent_config(config)
    pace = runs.Pace(config.num_meta_steps, len(task_names(config)) * config.num_units * (config.inner_updates + 1)
                     * AGENTS[config.algorithm].steps_per_update(agent_cfg))
    while int(state.step) < config.num_meta_steps:
        start = time.time()
        length = min(config.checkpoint_every, config.num_meta_steps - int(state.step))
        state, metrics = jax.block_until_ready(training.run_chunk(state, length))
        save_checkpoint(path, config, state)
        means = {k: np.nanmean(np.asarray(v), 0) for k, v in metrics.items()}  # over the chunk's meta-steps
        line = {"meta_step": int(state.step), "outer_loss": float(means["outer_loss"]),
                "train_return": dict(zip(task_names(config), map(float, means["train_return"]))),
                "meta_grad_norm": float(means["grad_norm"]), "skipped": int(state.skipped),
                "seconds": round(time.time() - start, 2)}
        returns = "  ".join(f"{name} {r:.2f}" for name, r in line["train_return"].items())
        print(f"meta-step {line['meta_step']}/{config.num_meta_steps}  outer loss {line['outer_loss']:.4f}  "
              f"train return {returns}  meta-grad norm {line['meta_grad_norm']:.3g}  skipped {line['skipped']}  "
              f"{line['seconds']:.1f} s, {pace(line['meta_step'], line['seconds'] / length)}", flush=True)
        runs.record(config.run_dir, line, config.wandb)
    return state


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate(config, meta_params, out_dir):
    """Fresh agents on the evaluation env (A2C; PPO on Brax, Sec. 6.2) with the learned and the untrained optimizer at
    the agent lr, Adam and RMSprop at it or each eval_baseline_lrs, `eval_seeds` seeds each (runs.compare with the
    paper's 90% t-intervals, Sec. 6): eval_<env>.md, .json and .png in out_dir."""
    validate(config)
    agent_cfg = eval_agent_config(config)
    algorithm = eval_algorithm(config)
    agent = AGENTS[algorithm]
    optimizer_fn = make_optimizer_fn(replace(config, remat=False))
    lr = jnp.float32(agent_cfg.learning_rate)
    optimizers = {"Optim4RL (learned)": (optimizer_fn, {"meta": meta_params, "learning_rate": lr}),
                  "Optim4RL (init)": (optimizer_fn, {"meta": init_meta_params(config, jax.random.PRNGKey(config.seed)),
                                                     "learning_rate": lr})}
    for label, fn in (("Adam", hand_designed("adam")), ("RMSprop", hand_designed("rmsprop"))):
        for baseline_lr in config.eval_baseline_lrs or (agent_cfg.learning_rate,):
            name = f"{label} (lr {baseline_lr:g})" if config.eval_baseline_lrs else label
            optimizers[name] = (fn, hyperparameters(replace(agent_cfg, learning_rate=baseline_lr)))
    trains = {fn: ppo.make_run(agent_cfg, fn, agent_fn=agent.make_agent) for fn, _ in optimizers.values()}
    return runs.compare({name: (trains[fn], params) for name, (fn, params) in optimizers.items()},
                        jax.vmap(jax.random.PRNGKey)(jnp.arange(config.seed, config.seed + config.eval_seeds)),
                        agent.steps_per_update(agent_cfg), os.path.join(out_dir, f"eval_{agent_cfg.env_name}"),
                        f"{agent_cfg.env_name}: {algorithm.upper()}, {agent_cfg.total_timesteps:,} env steps, lr "
                        f"{agent_cfg.learning_rate} (Adam, RMSprop: {config.eval_baseline_lrs or 'the same'})",
                        t_level=0.90)


def main(config):
    validate(config)
    if config.eval:
        trained, _ = read_checkpoint(config.eval)
        config = replace(trained, **{n: getattr(config, n) for n in EVAL_FIELDS})
        validate(config)
        state = load_state(config.eval, trained)
        out_dir = os.path.dirname(checkpoint_path(config.eval))
    else:
        start = time.time()
        state = meta_train(config)
        print(f"meta-training: {config.num_meta_steps} meta-steps in {time.time() - start:.0f} s "
              f"(compile included), {int(state.skipped)} skipped")
        out_dir = config.run_dir
    return evaluate(config, state.meta_params, out_dir)


if __name__ == "__main__":
    main(runs.parse_config(Optim4RLConfig, PRESETS))
