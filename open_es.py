"""OPEN (Goldie et al., 2024): a learned optimizer for RL, meta-trained with OpenAI-ES on the final return of PPO.

    python open_es.py                        # meta-train on Catch on a laptop CPU (~5 min), then OPEN vs tuned Adam
    python open_es.py --preset breakout      # OPEN's MinAtar setting (Tables 3, 4, 7): for GPUs
    python open_es.py --eval trained/authors/breakout_OPEN.npy --preset breakout   # the authors' released optimizer
    python open_es.py --preset multitask     # the four MinAtar games at once (Sec. 6.3); --preset gridworld (App. D)
    python open_es.py --ablate dormancy      # an ablation (Sec. 7.1); the learned baselines: baselines.py

The optimizer (Section 5.1, Appendix B; every input and the update as in the authors' rl_optimizer/network.py and
train.py): per parameter, 19 inputs (parameter value, six momenta and the gradient as sign and log(|.| + 1e-13), all
normalised per tensor; training proportion, layer proportion, batch proportion, dormancy) go through a GRU(8) and
Dense 16 + LayerNorm + ReLU twice to three outputs (m, e, delta). The update is
    u_hat = a1 * m * exp(a2 * e)               (eq. 7)
    u_hat += a3 * delta * eps, eps ~ N(0, 1)   (eq. 8, actor only)
    u = u_hat - mean(u_hat);  p <- p - u       (eq. 9, one mean over actor and critic together)
An optax transformation, `open_optimizer(config)(meta_params)`, for ppo.py or any optax loop; `learned_optimizer(path)`
also loads the authors' seven released optimizers (trained/authors/*.npy).

Meta-training (Section 5.2, Table 7): evosax's OpenAI-ES, antithetic sampling, centred ranks, exponentially decaying
sigma and learning rate (Adam on the ES mean). One generation, every member training PPO over `num_rollouts` seeds
shared by all members and evaluating the final policy, is one jitted program; fitness is -(final return).
Breadth (Sections 6-7, App. B.5, D, I), a flag each: `--tasks` (multi-task), `--task-sampling` (gridworld levels per
antithetic pair), `--separated`, `--ablate`, `--optimizer no_features`; `meta_train(config, learned)` evolves any
other learned optimizer (baselines.py). The population is split over all devices (`jax.shard_map`) and hosts.
"""
import sys

import runs  # first: its XLA and OpenBLAS settings must come before jax starts

if __name__ == "__main__":
    sys.argv[1:] = runs.start_distributed(sys.argv[1:])  # before gymnax starts XLA
import json
import os
import time
from dataclasses import asdict, dataclass, replace

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from evosax.algorithms import Open_ES
from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn, identity_fitness_shaping_fn
from flax import serialization
from jax.sharding import PartitionSpec

import gridworld
import ppo
from ppo import PPOConfig

# The default inner task, small enough for a laptop CPU: PPO on Catch for 4,096 steps (8 updates), short enough that
# tuned Adam stays well below the ceiling. Its Adam is baselines.py's tuned one (trained/tuned.json; a test checks).
# Catch episodes last 9 steps, so 256 evaluation episodes of at most 10 steps are cheap and keep the fitness noise low.
CATCH = replace(ppo.PPOConfig(), env_name="Catch-bsuite", num_envs=32, num_steps=16, total_timesteps=4096,
                num_minibatches=2, update_epochs=2, width=32, activation="relu", learning_rate=0.031622775, b1=0.9,
                b2=0.999, anneal_lr=False, eval_episodes=256, eval_max_steps=10, log_every=0)


@dataclass(frozen=True)
class OpenConfig:
    ppo: PPOConfig = CATCH  # the inner task: PPO settings (OPEN Table 3) and the Adam it is compared with
    gru_size: int = 8  # GRU hidden size (Table 1; 16 for multi-task, Table 2)
    hidden_size: int = 16  # width of the two LayerNorm MLP layers (Table 1; 32 for multi-task)
    alpha1: float = 1e-3  # update scale (eq. 7; App. B.4)
    alpha2: float = 1e-3  # exponent scale (eq. 7)
    alpha3: float = 1e-3  # noise scale (eq. 8)
    population_size: int = 16  # ES population (Table 7: 64; Ant 32); even, for antithetic sampling
    num_rollouts: int = 1  # PPO seeds per member and generation (Table 7: 1)
    member_batch: int = 0  # members vmapped at once per device, in turn (same returns); 0: 16 on a CPU, else all
    sigma_init: float = 0.1  # ES noise std (Table 7: MinAtar 0.03, Ant, gridworld 0.01); larger for 16 CPU members
    sigma_decay: float = 0.999  # per-generation decay of sigma (Table 7)
    es_learning_rate: float = 0.05  # Adam step size on the ES mean (Table 7: MinAtar 0.03, Ant 0.01, grid 0.005)
    es_learning_rate_decay: float = 0.999  # per-generation decay of that step size (Table 7)
    es_init: str = "random"  # ES_INITS: the ES mean starts at flax's init or zeros (the authors' train.py, presets)
    es_b1: float = 0.9  # beta1 of the ES's Adam (the authors' and presets': 0.99)
    generations: int = 150  # generations of meta-training
    eval_every: int = 25  # evaluate the ES mean on held-out seeds every this many generations (Table 7: 24)
    checkpoint_every: int = 5  # save the meta-training state every this many generations
    eval_seeds: int = 16  # held-out seeds of those evaluations and of the final report
    seed: int = 0  # meta-training seed
    out_dir: str = "runs/open_catch"  # checkpoint, learned optimizer, plots and summary
    eval: str = ""  # a learned optimizer's file: skip meta-training, evaluate it vs Adam on `tasks` or `ppo.env_name`
    wandb: bool = False  # log the progress records (out_dir/metrics.jsonl) to Weights & Biases too (`wandb` extra)
    optimizer: str = "open"  # OPTIMIZERS: OPEN or 'No Features' (14 inputs, no noise; Sec. 6.1, App. B.4)
    ablate: tuple[str, ...] = ()  # ABLATIONS removed from OPEN (Sec. 7.1, App. I.1)
    separated: bool = False  # distinct meta-parameters for actor and critic (Sec. 7.2, Deep Sea)
    tasks: tuple[str, ...] = ()  # multi-task envs (Sec. 6.3), each trained with `ppo` (its env_name replaced)
    adam_returns: tuple[float, ...] = ()  # Adam's return per task; empty: read from tuned_path (baselines.py)
    tuned_path: str = "trained/tuned.json"  # baselines.py's tuned settings, for Adam's returns and learning rate
    optim4rl_learning_rate: float = 0.0  # Optim4RL trained by this ES (baselines.py): its fixed lr (0.1 x Adam's)
    task_sampling: bool = False  # gridworld levels of `ppo.env_name` drawn per antithetic pair (App. D)


OPTIMIZERS = ("open", "no_features")
LABELS = {"open": "OPEN", "no_features": "No Features", "optim4rl": "Optim4RL"}
ES_INITS = ("random", "zeros")
ABLATIONS = ("training_proportion", "batch_proportion", "dormancy", "layer_proportion", "stochasticity")
# The four games of Sec. 6.3; SpaceInvaders as gymnax 0.0.6 had it, as the authors ran it (wrappers.py).
MINATAR_ENVS = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar@gymnax-0.0.6")
AUTHORS_ES = dict(es_init="zeros", es_b1=0.99)  # the ES mean starts at zero; Adam b1 0.99 (authors' train.py)
MINATAR_ES = dict(AUTHORS_ES, population_size=64, sigma_init=0.03, sigma_decay=0.999, es_learning_rate=0.03,
                  es_learning_rate_decay=0.999, generations=700, eval_every=24)
PRESETS = {
    "default": {},
    **{name: dict(MINATAR_ES, out_dir=f"runs/open_{name}", ppo=ppo.preset(name, log_every=0))
       for name in ("asterix", "breakout", "freeway", "spaceinvaders")},
    "ant": dict(MINATAR_ES, population_size=32, sigma_init=0.01, es_learning_rate=0.01, out_dir="runs/open_ant",
                ppo=ppo.preset("ant", log_every=0)),
    # Sec. 6.3, App. B.5 (GRU 16, hidden 32), Table 7 (multi-task); Adam's returns: the authors' configs.py (PPO_TEMP).
    "multitask": dict(MINATAR_ES, gru_size=16, hidden_size=32, sigma_decay=0.998, es_learning_rate_decay=0.998,
                      generations=300, eval_every=9, tasks=MINATAR_ENVS, adam_returns=(15.04, 50.08, 61.84, 167.09),
                      out_dir="runs/open_multitask", ppo=ppo.preset("breakout", log_every=0)),
    # App. D, Table 7 (gridworld): 'all' levels, antithetic task sampling, width 16; episodes last up to 750 steps.
    "gridworld": dict(MINATAR_ES, sigma_init=0.01, es_learning_rate=0.005, es_learning_rate_decay=0.990,
                      generations=350, eval_every=9, task_sampling=True, out_dir="runs/open_gridworld",
                      ppo=ppo.preset("gridworld", eval_max_steps=750, log_every=0)),
    # Sec. 7.2 at CPU scale (sizes 4, 6, 8; the paper: 4-26) with Deep Sea as gymnax 0.0.6 had it (action 1 is
    # right in every cell): separated actor and critic meta-parameters; add --ablate stochasticity for the control.
    "deepsea": dict(separated=True, tasks=tuple(f"DeepSea-bsuite-{n}@gymnax-0.0.6" for n in (4, 6, 8)),
                    adam_returns=(1.0,) * 3, generations=20, eval_every=5, eval_seeds=8, out_dir="runs/open_deepsea",
                    ppo=replace(CATCH, env_name="DeepSea-bsuite-8@gymnax-0.0.6", total_timesteps=32_768,
                                learning_rate=3e-3, b1=0.9, b2=0.999, anneal_lr=False, eval_max_steps=30,
                                eval_episodes=64)),
    # App. I.1: the ablations' shortened Breakout (2e5 steps, 250 generations); add --ablate NAME.
    "breakout_short": dict(MINATAR_ES, generations=250, out_dir="runs/open_breakout_short",
                           ppo=ppo.preset("breakout", total_timesteps=200_000, log_every=0)),
}


def validate(config, learned=False):
    """Refuse bad settings with a message naming the value, before anything compiles. `learned`: meta_train is given
    another learned optimizer, named by config.optimizer."""
    ppo.validate(config.ppo)
    runs.check_wandb(config.wandb)
    if config.population_size < 2 or config.population_size % 2 or config.population_size % jax.device_count():
        raise ValueError(f"population_size must be even and at least 2 for antithetic sampling, and split over "
                         f"{jax.device_count()} devices, got {config.population_size}")
    runs.require_positive(config, "gru_size", "hidden_size", "num_rollouts", "generations", "eval_every",
                          "checkpoint_every", "eval_seeds")
    if config.member_batch < 0:
        raise ValueError(f"member_batch must be 0 (automatic) or positive, got {config.member_batch}")
    if config.eval and not os.path.isfile(config.eval):
        raise ValueError(f"no learned optimizer at eval path {config.eval!r}")
    if not learned:
        runs.require_choice("optimizer", config.optimizer, OPTIMIZERS)
    runs.require_choice("es_init", config.es_init, ES_INITS)
    if not 0 <= config.es_b1 < 1:
        raise ValueError(f"es_b1 must be in [0, 1), got {config.es_b1}")
    for name in config.ablate:
        runs.require_choice("ablation", name, ABLATIONS)
    if config.optimizer != "open" and (config.ablate or config.separated):
        raise ValueError(f"ablate and separated apply to optimizer 'open', not {config.optimizer!r}")
    for task in config.tasks:
        ppo.validate(replace(config.ppo, env_name=task))
    if config.tasks:
        adam_references(config)
    for task in config.tasks or (config.ppo.env_name,):
        if config.task_sampling and task not in gridworld.DISTRIBUTIONS:
            raise ValueError(f"task_sampling needs a gridworld distribution, got {task!r}; valid: "
                             f"{', '.join(gridworld.DISTRIBUTIONS)}")


def adam_references(config):
    """Adam's final return on each task (multi-task normalisation, Sec. 6.3): `adam_returns`, else tuned_path's."""
    return runs.reference_returns(config.tasks, config.adam_returns, config.tuned_path)


# ----------------------------------------------------------------------------------------------- the optimizer
MOMENTUM_BETAS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)  # App. B.2
# The 19 input channels in the order of the authors' rl_optimizer/network.py (and of their released weights): the
# parameter, six momenta as sign then six as log|.|, the gradient as sign and log|.| (these 15 normalised per tensor),
# then the context.
INPUTS = ("parameter", *(f"momentum_sign_{b}" for b in MOMENTUM_BETAS), *(f"momentum_log_{b}" for b in MOMENTUM_BETAS),
          "gradient_sign", "gradient_log", "training_proportion", "layer_proportion", "batch_proportion", "dormancy")
NUM_INPUTS = len(INPUTS)
LOG_EPS = 1e-13  # eps of log(|x| + eps) for the gradient and momenta (authors' network.py)
AUTHORS_SIZES = {1211: (8, 16), 3571: (16, 32)}  # floats of a released OPEN optimizer: (GRU size, hidden size)


def input_columns(config):
    """Indices in INPUTS of the inputs the optimizer sees: 'No Features' keeps gradient and momenta (App. B.4), an
    ablation drops its input (Sec. 7.1)."""
    if config.optimizer == "no_features":
        return [i for i, name in enumerate(INPUTS) if name.startswith(("gradient", "momentum"))]
    return [i for i, name in enumerate(INPUTS) if name not in config.ablate]


def num_outputs(config):
    """(m, e, delta); no delta (no learned stochasticity) for 'No Features' and that ablation."""
    return 2 if config.optimizer == "no_features" or "stochasticity" in config.ablate else 3


class OpenNetwork(nn.Module):
    """GRU, then Dense + LayerNorm + ReLU twice, then Dense 3 (Table 1), applied to each parameter independently."""
    gru_size: int
    hidden_size: int
    num_outputs: int = 3

    @nn.compact
    def __call__(self, hidden, inputs):
        hidden, x = nn.GRUCell(self.gru_size)(hidden, inputs)
        for _ in range(2):
            x = nn.relu(nn.LayerNorm()(nn.Dense(self.hidden_size)(x)))
        return hidden, nn.Dense(self.num_outputs)(x)


def sign_log(x):
    """x -> (sign x, log(|x| + 1e-13)): magnifies differences between small values (App. B.2, after Lan et al.)."""
    return [jnp.sign(x), jnp.log(jnp.abs(x) + LOG_EPS)]


def per_tensor_unit_second_moment(features, sizes):
    """Scale each feature channel to second moment 1 within each parameter tensor (App. B.2, after Metz et al.):
    x / sqrt(1e-5 + mean(x^2)). features: (N, C) for N parameters, the tensors' entries one after another."""
    bounds = np.cumsum([0] + list(sizes))
    return jnp.concatenate([x * jax.lax.rsqrt(1e-5 + jnp.mean(x ** 2, axis=0))
                            for x in (features[a:b] for a, b in zip(bounds[:-1], bounds[1:]))])


def optimizer_inputs(grad, momenta, param, sizes, training_proportion, batch_proportion, dormancy,
                     layer_proportion):
    """The 19 inputs (INPUTS) of each of N parameters, shape (N, 19); arguments are flat (N,) vectors, momenta (6, N)
    (authors' network.py)."""
    momentum_sign, momentum_log = zip(*(sign_log(m) for m in momenta))
    tensor_features = jnp.stack([param, *momentum_sign, *momentum_log, *sign_log(grad)], -1)
    tensor_features = per_tensor_unit_second_moment(tensor_features, sizes)
    context = jnp.broadcast_to(jnp.stack([training_proportion, batch_proportion]), (grad.shape[0], 2))
    return jnp.concatenate([tensor_features, context[:, :1], layer_proportion[:, None], context[:, 1:],
                            dormancy[:, None]], -1)


def update_from_outputs(outputs, noise, config):
    """Eqs. 7-9: u for network outputs (N, 3) = (m, e, delta) and noise (N,), eps ~ N(0, 1) on actor parameters and
    0 elsewhere. The mean is one scalar over all N parameters given (PPO: actor and critic together, Algorithm 1 and
    the authors' network.py). Without delta (outputs (N, 2)) the update is deterministic."""
    m, e = outputs[:, 0], outputs[:, 1]
    u_hat = config.alpha1 * m * jnp.exp(config.alpha2 * e)
    if outputs.shape[1] == 3:
        u_hat = u_hat + config.alpha3 * outputs[:, 2] * noise
    return u_hat - u_hat.mean()


def open_optimizer(config):
    """`optimizer_fn(meta_params)` -> the OPEN optax transformation (Algorithm 1): `tx.update(grads, state, params,
    **context)`, `params` required but for 'No Features'. All parameters as one flat vector of N entries; the state
    holds six momenta m = b m + (1 - b) g (6, N) and a GRU hidden state (N, gru_size). The context (ppo.py's
    docstring) defaults to proportions 0, dormancy and layer_proportion 1, and no noise without actor_mask and key;
    the noise of leaf i is jax.random.normal(keys[i], its shape), keys = jax.random.split(key, number of leaves) (the
    authors' network.py). Separated (Sec. 7.2): meta_params = {"actor": ..., "critic": ...}, each network's own."""
    network = OpenNetwork(config.gru_size, config.hidden_size, num_outputs(config))
    betas = jnp.asarray(MOMENTUM_BETAS)[:, None]
    columns = np.asarray(input_columns(config))
    needs_params = INPUTS.index("parameter") in columns

    def optimizer_fn(meta_params):
        def init(params):
            size = jax.flatten_util.ravel_pytree(params)[0].size
            return {"momenta": jnp.zeros((len(MOMENTUM_BETAS), size)), "hidden": jnp.zeros((size, config.gru_size))}

        def update(grads, state, params=None, training_proportion=0.0, batch_proportion=0.0, dormancy=None,
                   layer_proportion=None, actor_mask=None, key=None, **_):
            if params is None and needs_params:
                raise ValueError("OPEN reads the parameters' values: call update(grads, state, params, ...); "
                                 "params=None works only for optimizer 'no_features'")
            grad, unravel = jax.flatten_util.ravel_pytree(grads)

            def flat(tree, default):
                return default if tree is None else jax.flatten_util.ravel_pytree(tree)[0]

            leaves = jax.tree.leaves(grads)
            momenta = betas * state["momenta"] + (1 - betas) * grad
            inputs = optimizer_inputs(grad, momenta, flat(params, jnp.zeros_like(grad)), [g.size for g in leaves],
                                      jnp.float32(training_proportion), jnp.float32(batch_proportion),
                                      flat(dormancy, jnp.ones_like(grad)), flat(layer_proportion, jnp.ones_like(grad)))
            if len(columns) < NUM_INPUTS:  # ablations only: the gather cost 4% of a PPO + OPEN run
                inputs = inputs[:, columns]
            actor = flat(actor_mask, jnp.zeros_like(grad))
            if config.separated:
                (actor_hidden, actor_out), (critic_hidden, critic_out) = (
                    network.apply(meta_params[name], state["hidden"], inputs) for name in ("actor", "critic"))
                is_actor = actor[:, None] > 0
                hidden = jnp.where(is_actor, actor_hidden, critic_hidden)
                outputs = jnp.where(is_actor, actor_out, critic_out)
            else:
                hidden, outputs = network.apply(meta_params, state["hidden"], inputs)
            if actor_mask is None or key is None:  # no noise: critics, and plain optax use outside RL
                noise = jnp.zeros_like(grad)
            else:
                noise = jnp.concatenate([jax.random.normal(k, g.shape).ravel()
                                         for k, g in zip(jax.random.split(key, len(leaves)), leaves)]) * actor
            u = update_from_outputs(outputs, noise, config)
            return unravel(-u), {"momenta": momenta, "hidden": hidden}  # optax adds updates: p <- p - u

        return optax.GradientTransformationExtraArgs(init, update)

    return optimizer_fn


def init_meta_params(config, rng):
    network = OpenNetwork(config.gru_size, config.hidden_size, num_outputs(config))
    init = lambda key: network.init(key, jnp.zeros((1, config.gru_size)),  # noqa: E731
                                    jnp.zeros((1, len(input_columns(config)))))
    return {"actor": init(rng), "critic": init(jax.random.fold_in(rng, 1))} if config.separated else init(rng)


# ----------------------------------------------------------------------------------------------- meta-training
def initial_mean(config, meta_params):
    """Where the ES mean starts: `meta_params` (flax's random initialisation), or all zeros (es_init "zeros",
    authors' train.py)."""
    return jax.tree.map(jnp.zeros_like, meta_params) if config.es_init == "zeros" else meta_params


def make_es(config, meta_params):
    """OpenAI-ES (Salimans et al., 2017) from evosax with OPEN's Table 7 settings and Adam(b1 = es_b1) on its mean;
    with task sampling the fitness is already a within-pair ranking, so it is not reshaped."""
    return Open_ES(
        population_size=config.population_size, solution=meta_params, use_antithetic_sampling=True,
        optimizer=optax.adam(optax.exponential_decay(config.es_learning_rate, 1, config.es_learning_rate_decay),
                             b1=config.es_b1),
        std_schedule=optax.exponential_decay(config.sigma_init, 1, config.sigma_decay),
        fitness_shaping_fn=identity_fitness_shaping_fn if config.task_sampling else centered_rank_fitness_shaping_fn)


def es_fitness(returns):
    """evosax minimises: fitness is -return, and a NaN or infinite return gets +inf, so it ranks last."""
    return jnp.where(jnp.isfinite(returns), -returns, jnp.inf)


def pair_fitness(returns):
    """Within-pair ranking (antithetic task sampling, App. D): evosax pairs member i with i + P/2 (mean +- sigma z).
    The pair's winner gets -0.5 (evosax minimises), the loser +0.5, a tie 0; a non-finite return loses."""
    clean = jnp.where(jnp.isfinite(returns), returns, -jnp.inf)
    first, second = jnp.split(clean, 2)
    win = jnp.nan_to_num(jnp.sign(first - second))  # both non-finite: a tie
    return -0.5 * jnp.concatenate([win, -win])


def member_keys(key, population_size, paired):
    """Each member's evaluation key: the same for all (common random numbers) or, with task sampling, one per
    antithetic pair (member i and i + P/2 train on the same levels with the same seeds)."""
    if not paired:
        return jnp.broadcast_to(key, (population_size,) + key.shape)
    return jnp.tile(jax.random.split(key, population_size // 2), (2, 1))


def make_generation(es, member_returns, paired=False, devices=None):
    """One ES generation as one jitted program: ask, evaluate every member, tell. `member_returns(population, keys)`
    gives each member's return, shape (population_size,). The population axis is split over `devices` (default: all,
    every host's under jax.distributed); ask and tell run replicated on each."""
    mesh = jax.sharding.Mesh(np.asarray(devices or jax.devices()), ("population",))
    sharded_returns = jax.shard_map(member_returns, mesh=mesh, in_specs=PartitionSpec("population"),
                                    out_specs=PartitionSpec("population"), check_vma=False)
    replicated = jax.sharding.NamedSharding(mesh, PartitionSpec())

    @jax.jit
    def generation(state, key):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, es.default_params)
        returns = sharded_returns(population, member_keys(eval_key, es.population_size, paired))
        returns = jax.lax.with_sharding_constraint(returns, replicated)
        fitness = pair_fitness(returns) if paired else es_fitness(returns)
        state, _ = es.tell(tell_key, population, fitness, state, es.default_params)
        finite = jnp.isfinite(returns)
        return state, {"mean_return": jnp.sum(jnp.where(finite, returns, 0)) / jnp.maximum(finite.sum(), 1),
                       "best_return": jnp.max(jnp.where(finite, returns, -jnp.inf)),
                       "non_finite": jnp.sum(~finite), "sigma": state.std}

    def replicate(tree):  # the same host values on every process (no equality check: the ES state holds NaNs)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), tree)
    return lambda state, key: generation(replicate(state), replicate(key))


def normalised_score(returns, references):
    """Multi-task fitness (Sec. 6.3): each task's return (last axis) divided by Adam's there, averaged over tasks."""
    return (returns / references).mean(-1)


def capped(ppo_config):
    """On a gridworld distribution, the evaluation capped at its longest episode (unless eval_max_steps is set)."""
    if ppo_config.env_name not in gridworld.DISTRIBUTIONS:
        return ppo_config
    return replace(ppo_config, eval_max_steps=ppo_config.eval_max_steps or gridworld.max_horizon(ppo_config.env_name))


def final_returns(ppo_config, optimizer_fn):
    """`returns(optimizer_params, keys)`: PPO's final return for each seed key (vmapped). On a gridworld distribution
    each key trains on its own level (ppo.on_levels; App. D), capped at the distribution's longest episode."""
    run = ppo.make_run(capped(ppo_config), optimizer_fn)
    return jax.vmap(lambda optimizer_params, key: run(key, optimizer_params)["final_return"], in_axes=(None, 0))


def make_scores(config, optimizer_fn):
    """`scores(meta_params, keys)`: for each seed key, PPO trained with `optimizer_fn(meta_params)` on every task; its
    final return over Adam's, averaged over tasks (one task: the plain return). One vmapped PPO program per task."""
    returns = [final_returns(replace(config.ppo, env_name=task), optimizer_fn)
               for task in config.tasks or (config.ppo.env_name,)]
    references = adam_references(config) if config.tasks else np.ones(1)
    return lambda meta_params, keys: normalised_score(jnp.stack([task(meta_params, keys) for task in returns], -1),
                                                      references)


def make_member_returns(config, optimizer_fn):
    """Each member's mean score over `num_rollouts` PPO seeds drawn from its key, `member_batch` members at once."""
    scores = make_scores(config, optimizer_fn)

    def member_returns(population, keys):
        batch = config.member_batch or (16 if jax.default_backend() == "cpu" else keys.shape[0])
        return jax.lax.map(lambda member: scores(member[0], jax.random.split(member[1], config.num_rollouts)).mean(),
                           (population, keys), batch_size=batch)
    return member_returns


# ----------------------------------------------------------------------------------------------- files
def architecture(config):
    """The settings a checkpoint must share with a run that resumes it."""
    return {name: list(v) if isinstance(v := getattr(config, name), tuple) else v
            for name in ("gru_size", "hidden_size", "population_size", "optimizer", "ablate", "separated")}


# The authors' meta-parameter tree (rl_optimizer/network.py): {"gru_params": GRUCell params, "params": Sequential
# params, its layers named by position}; the Sequential's layers in OpenNetwork's names.
AUTHORS_LAYERS = {"layers_0": "Dense_0", "layers_1": "LayerNorm_0", "layers_3": "Dense_1", "layers_4": "LayerNorm_1",
                  "layers_6": "Dense_2"}


def load_authors_optimizer(path):
    """(config, meta_params) of an OPEN optimizer as its authors released it (rl_optimizer/pretrained/*.npy): one
    float32 vector, ravel_pytree of their meta-parameter tree (input-kernel rows in INPUTS order); length gives size."""
    flat = runs.read_vector(path, {n: f"GRU {g}, hidden {h}" for n, (g, h) in AUTHORS_SIZES.items()},
                            "a released OPEN optimizer")
    gru_size, hidden_size = AUTHORS_SIZES[flat.size]
    config = replace(OpenConfig(), gru_size=gru_size, hidden_size=hidden_size)
    ours = init_meta_params(config, jax.random.PRNGKey(0))["params"]
    template = {"gru_params": {"params": ours["GRUCell_0"]},
                "params": {"params": {k: ours[name] for k, name in AUTHORS_LAYERS.items()}}}
    theirs = jax.flatten_util.ravel_pytree(template)[1](jnp.asarray(flat))
    return config, {"params": {"GRUCell_0": theirs["gru_params"]["params"],
                               **{name: theirs["params"]["params"][k] for k, name in AUTHORS_LAYERS.items()}}}


def check_inputs(path, payload):
    """Refuse a file that does not hold the authors' input order (INPUTS), as this repo's files before it did not."""
    if json.loads(payload.get("inputs", "[]")) != list(INPUTS):
        raise ValueError(f"{path} was written before this repo followed the authors' input order; meta-train anew "
                         f"(in a new out_dir)")


LEARNED_FILE = "a learned optimizer (open_es.py's optimizer.msgpack, or a .npy of the OPEN authors)"


def load_optimizer(path):
    """(config, meta_params) of an OPEN optimizer: a file saved by `meta_train` or a released .npy of the authors.
    A file must hold its input order ("inputs"), the authors' (INPUTS); any other is refused."""
    if path.endswith(".npy"):
        return load_authors_optimizer(path)
    payload = runs.read_input(path, LEARNED_FILE, ("config", "meta_params"))
    config = runs.config_from_dict(OpenConfig, json.loads(payload["config"]), ppo=PPOConfig)
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"{path} holds {LABELS.get(config.optimizer, config.optimizer)} trained by ES, not an OPEN "
                         f"optimizer: baselines.py evaluates it (--learned {path})")
    check_inputs(path, payload)
    template = init_meta_params(config, jax.random.PRNGKey(0))
    return config, serialization.from_state_dict(template, payload["meta_params"])


def learned_optimizer(path):
    """(optimizer_fn, optimizer_params) of an OPEN optimizer file (`meta_train`'s, any ablation, No Features, or the
    authors' .npy), for `ppo.make_train(ppo_config, optimizer_fn)` and `train(rng, optimizer_params)`."""
    config, meta_params = load_optimizer(path)
    return open_optimizer(config), meta_params


def learned_transformation(path):
    """The optax transformation of a learned optimizer file (as `learned_optimizer`), for anyone's optax loop."""
    optimizer_fn, meta_params = learned_optimizer(path)
    return optimizer_fn(meta_params)


# ----------------------------------------------------------------------------------------------- the main job
def meta_train(config, learned=None):
    """Meta-train OPEN, or the learned optimizer `learned` = (optimizer_fn, initial meta_params); returns the
    meta-parameters with the best held-out return and the history. Resumes from out_dir's checkpoint."""
    validate(config, learned=learned is not None)
    optimizer_fn, meta_params = learned or (open_optimizer(config), init_meta_params(config,
                                                                                      jax.random.PRNGKey(config.seed)))
    meta_params = initial_mean(config, meta_params)
    checkpoint_path = os.path.join(config.out_dir, "checkpoint.msgpack")
    es = make_es(config, meta_params)
    unravel = jax.flatten_util.ravel_pytree(meta_params)[1]
    state = es.init(jax.random.PRNGKey(config.seed), meta_params, es.default_params)
    generation = make_generation(es, make_member_returns(config, optimizer_fn), paired=config.task_sampling)
    keys = runs.held_out_keys(config.eval_seeds)
    held_out = jax.jit(lambda params: make_scores(config, optimizer_fn)(params, keys).mean())
    history = {k: [] for k in ("mean_return", "best_return", "non_finite", "sigma", "eval_generation", "eval_return")}
    best = {"return": -np.inf, "generation": 0, "meta_params": meta_params}
    start = 0
    saved = runs.load_checkpoint(checkpoint_path)
    if saved is not None:
        stored = {**architecture(OpenConfig()), **json.loads(saved["config"])}
        runs.refuse_other(checkpoint_path, "another optimizer or population", stored, architecture(config))
        if learned is None:
            check_inputs(checkpoint_path, saved)
        state = serialization.from_state_dict(state, saved["es_state"])
        history = {k: list(np.asarray(v).tolist()) for k, v in saved["history"].items()}
        best = {"return": float(saved["best"]["return"]), "generation": int(saved["best"]["generation"]),
                "meta_params": serialization.from_state_dict(meta_params, saved["best"]["meta_params"])}
        start = int(saved["generation"])
        print(f"resumed from {checkpoint_path} at generation {start}")

    def evaluate_mean(g):
        value = float(held_out(unravel(state.mean)))
        history["eval_generation"].append(g)
        history["eval_return"].append(value)
        if value > best["return"]:
            best.update({"return": value, "generation": g, "meta_params": unravel(state.mean)})
        print(f"  held-out return of the ES mean after {g} generations: {value:.3f} (best {best['return']:.3f} "
              f"at generation {best['generation']})", flush=True)
        runs.record(config.out_dir, {"generation": g, "held_out_return": value, "best_held_out_return": best["return"],
                                     "best_generation": best["generation"]}, config.wandb)

    if start == 0:
        evaluate_mean(0)
    pace = runs.Pace(config.generations, config.population_size * config.num_rollouts * (len(config.tasks) or 1)
                     * config.ppo.total_timesteps)  # env steps of a generation's training runs
    for g in range(start, config.generations):
        tic = time.time()
        state, metrics = jax.block_until_ready(
            generation(state, jax.random.fold_in(jax.random.PRNGKey(config.seed), g)))
        line = {"generation": g + 1, **{k: float(metrics[k]) for k in ("mean_return", "best_return", "sigma")},
                "non_finite": int(metrics["non_finite"]), "seconds": round(time.time() - tic, 2)}
        for k in ("mean_return", "best_return", "non_finite", "sigma"):
            history[k].append(line[k])
        print(f"generation {g + 1}/{config.generations}  mean {line['mean_return']:.3f}  "
              f"best {line['best_return']:.3f}  sigma {line['sigma']:.4f}  non-finite {line['non_finite']}  "
              f"{line['seconds']:.1f} s, {pace(g + 1, line['seconds'])}", flush=True)
        runs.record(config.out_dir, line, config.wandb)
        if (g + 1) % config.eval_every == 0 or g + 1 == config.generations:
            evaluate_mean(g + 1)
        if (g + 1) % config.checkpoint_every == 0 or g + 1 == config.generations:
            runs.save_checkpoint(checkpoint_path, {
                "config": json.dumps(asdict(config)), "inputs": json.dumps(INPUTS), "generation": g + 1,
                "es_state": serialization.to_state_dict(state),
                "history": {k: np.asarray(v, np.float64) for k, v in history.items()},
                "best": {"return": best["return"], "generation": best["generation"],
                         "meta_params": serialization.to_state_dict(best["meta_params"])}})
    runs.write_atomic(os.path.join(config.out_dir, "optimizer.msgpack"), serialization.msgpack_serialize({
        "config": json.dumps(asdict(config)), "inputs": json.dumps(INPUTS),
        "meta_params": serialization.to_state_dict(best["meta_params"]), "generation": best["generation"],
        "held_out_return": best["return"]}))
    if jax.process_index() == 0:
        runs.plot_fitness(history, os.path.join(config.out_dir, "fitness.png"), "OPEN meta-training")
    return jax.tree.map(np.asarray, best["meta_params"]), history  # host values: not tied to other processes


def task_ppo(config, task):
    """`config.ppo` on `task`, with Adam as tuned there by ppo.py's preset for that env (if any): the multi-task
    report compares against each game's own Table 4 Adam, not the first game's. The agent's PPO is unchanged."""
    tuned = next((preset for preset in ppo.PRESETS.values() if preset.get("env_name") == task), {})
    return replace(config.ppo, env_name=task, **{k: tuned[k] for k in ("learning_rate", "b1", "b2") if k in tuned})


def versus_adam(config, optimizer_fn, meta_params, ppo_config, out_path):
    """The learned optimizer and Adam (ppo_config's) on `eval_seeds` held-out seeds of ppo_config's env (runs.compare:
    one program; <out_path>.md, .json, .png), and in words which is ahead; a gridworld distribution gives each seed
    its own level."""
    ppo_config = capped(ppo_config)
    updates = ppo_config.total_timesteps // ppo.steps_per_update(ppo_config)
    if updates >= 100:  # a long evaluation (a paper budget) shows its progress every 5% of its updates
        ppo_config = replace(ppo_config, log_every=updates // 20, run_dir=os.path.dirname(out_path) or ".")
    adam = ppo.hand_designed("adam", ppo.optimizer_steps(ppo_config) if ppo_config.anneal_lr else None)
    optimizers = {LABELS.get(config.optimizer, config.optimizer): (optimizer_fn, meta_params),
                  "Adam": (adam, ppo.hyperparameters(ppo_config))}
    results = runs.compare({name: (ppo.make_run(ppo_config, fn, name), params)
                            for name, (fn, params) in optimizers.items()},
                           runs.held_out_keys(config.eval_seeds), ppo.steps_per_update(ppo_config), out_path,
                           f"{' vs '.join(optimizers)} on {ppo_config.env_name}: PPO, "
                           f"{ppo_config.total_timesteps:,} steps (time limit: {ppo_config.time_limit})")
    print(runs.verdict(results, *optimizers), flush=True)
    return results


def main(config):
    validate(config)
    out_dir = config.out_dir  # this run's (--out-dir or the preset's), not the one an --eval file was trained with
    if config.eval:
        trained_config, meta_params = load_optimizer(config.eval)
        config = replace(trained_config, ppo=config.ppo, tasks=config.tasks, eval_seeds=config.eval_seeds)
    else:
        start = time.time()
        meta_params, _ = meta_train(config)
        print(f"meta-training took {time.time() - start:.0f} s; learned optimizer: "
              f"{os.path.join(config.out_dir, 'optimizer.msgpack')}")
    for task in (config.tasks or (config.ppo.env_name,)) if jax.process_index() == 0 else ():
        versus_adam(config, open_optimizer(config), meta_params, task_ppo(config, task) if config.tasks else config.ppo,
                    os.path.join(out_dir, task if config.tasks else "", "summary"))


if __name__ == "__main__":
    main(runs.parse_config(OpenConfig, PRESETS))
