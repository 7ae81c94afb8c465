"""PPO (Schulman et al., 2017) with a pluggable, optax-shaped optimizer, in the PureJaxRL style.

    python ppo.py                          # CartPole-v1, Adam, 4 seeds, about a minute on a laptop CPU
    python ppo.py --preset breakout        # OPEN Table 3 (MinAtar) with Table 4's tuned Adam: for GPUs
    python ppo.py --env-name Catch-bsuite --optimizer rmsprop --learning-rate 1e-3
    python ppo.py --preset ant             # OPEN's Brax PPO on Ant; ant_optim4rl: Optim4RL's, Brax's own PPO

`make_train(config, optimizer_fn)` returns `train(rng, optimizer_params)`: one whole training run as one XLA program,
vmappable over seeds and over `optimizer_params` (hand-designed hyperparameters or a learned optimizer's
meta-parameters). `optimizer_fn(optimizer_params)` builds an `optax.GradientTransformationExtraArgs`, called once per
minibatch on the whole agent, {"actor": ..., "critic": ...} (each network's gradient clipped first, see grad_clip_mode),
with the context a learned optimizer conditions on as keyword arguments (OPEN, Goldie et al. 2024, App. B.2; each
defined as in the authors' rl_optimizer/train.py):

    training_proportion  scalar: u / (N_updates - 1) in update u = 0 ... N_updates - 1, constant within it
    batch_proportion     scalar: l / (L - 1) in epoch l = 0 ... L - 1 over one batch
    dormancy             tree like params: (E|h_i| + 1e-11) / mean_k (E|h_k| + 1e-11) of the neuron downstream
    layer_proportion     tree like params: i / (n_layers - 1) for the i-th layer of its network (0, 0.5, 1; OPEN's
                         Gaussian actor: 0, 1/3, 2/3, and 1 for log_std)
    actor_mask           tree like params: 1 for actor parameters, 0 for critic parameters
    key                  PRNG key, for learned stochastic updates

(A single update or epoch gives proportion 0, where the authors' code divides by zero.) Hand-designed optax
optimizers ignore the context and act element-wise, so one call on both networks equals one per network.

The papers' PPO variants are PPOConfig fields set by the presets, each chosen once: `time_limit` (OPEN's MinAtar
"terminal", Brax's "exclude"), `minibatch_gae` (BATCHINGS), `policy_head` (wrappers.HEADS), `normalize_per_rollout`.
`train` reports both this repo's evaluation of the final policy ("final_return") and the authors' metric
("training_return": the mean over envs of each env's last completed training episode return, 0 for an env without
one, at the end of training; rl_optimizer/train.py and eval.py).
"""
import runs  # first: its XLA and OpenBLAS settings must come before jax starts
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from gymnax.environments import spaces

import gridworld
import wrappers


@dataclass(frozen=True)
class PPOConfig:
    env_name: str = "CartPole-v1"  # a gymnax id, a gridworld.LEVELS name, or a Brax env (wrappers.BRAX_ENVS)
    num_envs: int = 4  # N_envs: parallel environments
    num_steps: int = 128  # N_steps: rollout length per env per update
    total_timesteps: int = 500_000  # T: environment steps of the whole run
    num_minibatches: int = 4  # N_minibatch per epoch
    update_epochs: int = 4  # L: epochs over each batch
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # PPO clip, for the surrogate and the value loss
    vf_coef: float = 0.5  # c1: value-loss weight
    ent_coef: float = 0.01  # c2: entropy bonus weight
    max_grad_norm: float = 0.5  # gradient clip: global norm per network, or each element's magnitude (grad_clip_mode)
    width: int = 64  # W: hidden units per layer
    depth: int = 2  # H: hidden layers of the actor
    critic_width: Optional[int] = None  # hidden units of the critic (None: width)
    critic_depth: Optional[int] = None  # hidden layers of the critic (None: same as the actor)
    activation: str = "tanh"  # "tanh", "relu", or Brax's "swish" (valid choices of this and others: CHOICES)
    kernel_init: str = "orthogonal"  # PureJaxRL's "orthogonal" or Brax's "lecun_uniform" (networks.py)
    policy_head: str = "gaussian"  # continuous actions: OPEN's "gaussian" or Brax's "tanh_gaussian" (TanhGaussian)
    normalize_obs: bool = False  # observations by running statistics (wrappers.NormalizedEnvs; both papers' Brax)
    normalize_reward: bool = False  # rewards / running std of the discounted return (NormalizedEnvs; OPEN's Brax)
    normalize_per_rollout: bool = False  # Brax's PPO: obs statistics merged after each rollout (else: as they arrive)
    grad_clip_mode: str = "global_norm"  # "global_norm" per network (OPEN) or "elementwise" (Optim4RL)
    clip_value_loss: bool = True  # PureJaxRL's and OPEN's clipped value loss; Brax's PPO does not clip it
    unroll_length: int = 0  # 0: GAE over the whole rollout; n: Brax's PPO's advantages over n-step unrolls (gae)
    minibatch_gae: bool = False  # Brax's PPO: minibatches of whole unrolls, GAE recomputed in the loss (BATCHINGS)
    reward_scale: float = 1.0  # rewards are multiplied by this for learning (returns are reported unscaled)
    optimizer: str = "adam"  # a hand-designed optimizer (OPTIMIZERS), used when running this file
    learning_rate: float = 2.5e-4  # its learning rate
    b1: float = 0.9  # beta1 of adam and lion
    b2: float = 0.999  # beta2 of adam and lion
    decay: float = 0.9  # decay of rmsprop
    anneal_lr: bool = True  # anneal the learning rate linearly to 0 over training
    eval_episodes: int = 16  # episodes of the final-policy evaluation ("final return")
    eval_max_steps: Optional[int] = None  # step cap of that evaluation (None: the env's time limit)
    time_limit: str = "bootstrap"  # at a truncation: add gamma V(final obs), end the return ("terminal", OPEN's), or
    # leave the step out (advantage 0, target V(s): "exclude", Brax's PPO, so Optim4RL's)
    brax_backend: str = "spring"  # Brax physics backend: OPEN's positional, Optim4RL's spring (agents/PPO.py)
    episode_length: int = 1000  # Brax time limit (a truncation)
    num_seeds: int = 4  # seeds trained in parallel (vmapped)
    seed: int = 0  # first seed
    log_every: int = 25  # print a progress line every this many updates (0: silent)
    run_dir: str = "runs/ppo"  # where running this file writes metrics.jsonl (the printed lines as JSON)
    wandb: bool = False  # also log those records to Weights & Biases (the `wandb` extra)


# Paper settings. OPEN Table 3 (PPO) with the tuned Adam of Tables 4-6; MinAtar and ant from the OPEN authors'
# rl_optimizer/configs.py. MinAtar runs PPO as their train.py does: a time limit is terminal.
MINATAR = dict(num_envs=64, num_steps=128, total_timesteps=10_000_000, num_minibatches=8, update_epochs=4,
               ent_coef=0.01, width=64, activation="relu", b1=0.9, anneal_lr=True, time_limit="terminal")
# Optim4RL's Brax PPO is Brax's own (agents/PPO.py, brax 0.9.4): tanh-squashed policy (32,)*4 and value net (256,)*5,
# swish, lecun_uniform; spring backend; unclipped value loss; Adam 3e-4 after an element-wise clip of 1 (configs/
# ppo_*.json "grad_clip"); 128 evaluation episodes. An update is batch_size x num_minibatches / num_envs unrolls per
# env (num_steps below), minibatches of whole unrolls (losses.py), statistics merged after each rollout (train.py).
BRAX_PPO = dict(brax_backend="spring", policy_head="tanh_gaussian", width=32, depth=4, critic_width=256,
                critic_depth=5, activation="swish", kernel_init="lecun_uniform", normalize_obs=True,
                normalize_per_rollout=True, gamma=0.97, gae_lambda=0.95, clip_eps=0.3, clip_value_loss=False,
                vf_coef=0.5, minibatch_gae=True, time_limit="exclude", grad_clip_mode="elementwise", max_grad_norm=1.0,
                learning_rate=3e-4, anneal_lr=False, total_timesteps=100_000_000, eval_episodes=128)
PRESETS = {
    "default": {},
    "asterix": dict(MINATAR, env_name="Asterix-MinAtar", learning_rate=0.003, b2=0.999),
    "breakout": dict(MINATAR, env_name="Breakout-MinAtar", learning_rate=0.01, b2=0.99),
    "freeway": dict(MINATAR, env_name="Freeway-MinAtar", learning_rate=0.001, b2=0.99),
    "spaceinvaders": dict(MINATAR, env_name="SpaceInvaders-MinAtar@gymnax-0.0.6", learning_rate=0.007, b2=0.99),
    # configs.py "ant" with train.py's Brax path: positional backend, 1000-step episodes whose end is terminal,
    # ClipAction, NormalizeObservation, NormalizeReward(gamma), a state-independent log std (utils.py, train.py)
    "ant": dict(env_name="ant", brax_backend="positional", num_envs=2048, num_steps=10, total_timesteps=50_000_000,
                update_epochs=4, num_minibatches=32, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.0,
                vf_coef=0.5, max_grad_norm=0.5, activation="tanh", width=64, policy_head="gaussian",
                normalize_obs=True, normalize_reward=True, time_limit="terminal", learning_rate=3e-4, b1=0.99,
                b2=0.99, anneal_lr=True),
    "gridworld": dict(env_name="all", num_envs=1024, num_steps=20, total_timesteps=30_000_000, num_minibatches=16,
                      update_epochs=2, ent_coef=0.01, width=16, activation="tanh", learning_rate=1e-4, b1=0.99,
                      b2=0.99, anneal_lr=True),
    # Optim4RL's evaluation (lopt_rl_grid_{ant,humanoid}.json): batch 2048 (1024) x 32 minibatches over 4096 (2048)
    # envs, "train_steps" 1e8, reward_scaling 10 (0.1); and meta-training (agents/MetaPPO.py, meta_rl_*.json):
    # batch 1024 x 8 minibatches over 2048 envs, 5-step unrolls, 4 epochs, value net (64,)*5 (optim4rl_metagrad.py).
    "ant_optim4rl": dict(BRAX_PPO, env_name="ant", num_envs=4096, num_steps=80, unroll_length=5, num_minibatches=32,
                         update_epochs=4, ent_coef=1e-2, reward_scale=10.0),
    "humanoid_optim4rl": dict(BRAX_PPO, env_name="humanoid@brax-0.9.4", num_envs=2048, num_steps=160, unroll_length=10,
                              num_minibatches=32, update_epochs=8, ent_coef=1e-3, reward_scale=0.1),
}
PRESETS.update({f"{name}_meta": dict(PRESETS[name], num_envs=2048, num_steps=20, unroll_length=5, num_minibatches=8,
                                      update_epochs=4, critic_width=64)
                 for name in ("ant_optim4rl", "humanoid_optim4rl")})
OPTIMIZERS = ("adam", "rmsprop", "lion", "sgd")
CHOICES = dict(time_limit=("bootstrap", "terminal", "exclude"), activation=("tanh", "relu", "swish"),
               kernel_init=("orthogonal", "lecun_uniform"), policy_head=("gaussian", "tanh_gaussian"),
               grad_clip_mode=("global_norm", "elementwise"))


def preset(name, **overrides):
    """The PPOConfig of PRESETS[name], with `overrides`."""
    return replace(PPOConfig(), **{**PRESETS[name], **overrides})


def validate(config):
    """Refuse bad settings with a message naming the value and the valid choices, before anything compiles."""
    if config.env_name not in wrappers.ENV_NAMES and wrappers.deep_sea_size(config.env_name) is None:
        raise ValueError(f"unknown env_name {config.env_name!r}; valid: {', '.join(wrappers.ENV_NAMES)}, "
                         f"{wrappers.DEEP_SEA}N or {wrappers.DEEP_SEA}N{wrappers.OLD_GYMNAX} (N >= 2)")
    for field, valid in CHOICES.items():
        runs.require_choice(field, getattr(config, field), valid)
    runs.check_wandb(config.wandb)
    runs.require_positive(config, "num_envs", "num_steps", "total_timesteps", "num_minibatches", "update_epochs",
                          "width", "eval_episodes", "num_seeds", "episode_length")
    batch = steps_per_update(config)
    if batch % config.num_minibatches:
        raise ValueError(f"batch num_envs * num_steps = {batch} does not divide into "
                         f"num_minibatches = {config.num_minibatches}")
    if config.total_timesteps < batch:
        raise ValueError(f"total_timesteps = {config.total_timesteps} is less than one batch ({batch} steps)")
    if config.unroll_length < 0 or config.unroll_length and config.num_steps % config.unroll_length:
        raise ValueError(f"unroll_length = {config.unroll_length} must be 0 or divide num_steps = {config.num_steps}")
    if config.minibatch_gae and (not config.unroll_length or batch // config.unroll_length % config.num_minibatches):
        raise ValueError(f"minibatch_gae needs unroll_length > 0 (got {config.unroll_length}) and the unrolls, "
                         f"num_envs * num_steps / unroll_length = {batch // max(config.unroll_length, 1)}, to divide "
                         f"into num_minibatches = {config.num_minibatches}")


# ----------------------------------------------------------------------------------------------- networks
class MLP(nn.Module):
    """Dense layers, orthogonally initialised (PureJaxRL) or lecun_uniform (Brax's networks.py). Returns the output and
    {layer name: activation}, the latter for the dormancy of each layer's neurons (OPEN eq. 6). With `log_std` (OPEN's
    continuous actor, rl_optimizer/train.py), a state-independent log std parameter, initially 0, follows the output."""
    width: int
    depth: int
    out: int
    activation: str
    out_scale: float
    kernel_init: str = "orthogonal"
    log_std: bool = False

    @nn.compact
    def __call__(self, x):
        act = {"tanh": nn.tanh, "relu": nn.relu, "swish": nn.swish}[self.activation]
        lecun = self.kernel_init == "lecun_uniform"
        init = (lambda _: nn.initializers.lecun_uniform()) if lecun else nn.initializers.orthogonal
        x, activations = x.reshape((x.shape[0], -1)), {}
        for i in range(self.depth):
            x = act(nn.Dense(self.width, kernel_init=init(np.sqrt(2)), name=f"hidden_{i}")(x))
            activations[f"hidden_{i}"] = x
        x = nn.Dense(self.out, kernel_init=init(self.out_scale), name="output")(x)
        activations["output"] = x
        if self.log_std:
            log_std = self.param("log_std", nn.initializers.zeros, (self.out,))
            activations["log_std"] = jnp.exp(log_std).mean(keepdims=True)  # its dormancy input in the authors' Actor
            x = jnp.concatenate([x, jnp.broadcast_to(log_std, x.shape)], -1)
        return x, activations

    @property
    def layer_proportions(self):
        """i / (n_layers - 1) for the i-th layer: the Dense layers, the output layer, then log_std (OPEN App. B.2;
        the authors' train.py counts each entry of the network's parameters as a layer)."""
        n = self.depth + 1 + self.log_std
        return {**{f"hidden_{i}": proportion(i, n) for i in range(self.depth)}, "output": proportion(self.depth, n),
                **({"log_std": 1.0} if self.log_std else {})}


# ----------------------------------------------------------------------------------------------- optimizers
def hand_designed(name, anneal_steps=None):
    """optax's adam / rmsprop / lion / sgd as `optimizer_fn(hyperparameters)`, the hyperparameters traced, so a sweep
    over them is one vmapped program. Hyperparameters: dict with learning_rate, b1, b2, decay (unused ones ignored).
    With `anneal_steps`, the learning rate decays linearly to 0 over that many updates; an optional traced
    hyperparameter `anneal` (1: anneal, 0: constant) lets one sweep cover both."""
    runs.require_choice("optimizer", name, OPTIMIZERS)

    def optimizer_fn(hp):
        lr = hp["learning_rate"]
        if anneal_steps:
            lr = optax.linear_schedule(lr, lr * (1 - hp.get("anneal", 1.0)), anneal_steps)
        tx = {"adam": lambda: optax.adam(lr, b1=hp["b1"], b2=hp["b2"]),
              "rmsprop": lambda: optax.rmsprop(lr, decay=hp["decay"]),
              "lion": lambda: optax.lion(lr, b1=hp["b1"], b2=hp["b2"]),
              "sgd": lambda: optax.sgd(lr)}[name]()
        return optax.with_extra_args_support(tx)
    return optimizer_fn


def hyperparameters(config):
    return {k: jnp.float32(getattr(config, k)) for k in ("learning_rate", "b1", "b2", "decay")}


def steps_per_update(config):
    """Env steps of one update: one rollout of every env."""
    return config.num_envs * config.num_steps


def optimizer_steps(config):
    """Number of optimizer updates in a run: updates x epochs x minibatches."""
    return config.total_timesteps // steps_per_update(config) * config.update_epochs * config.num_minibatches


# ------------------------------------------------------------------------------------------ learned-optimizer context
def proportion(index, count):
    """index / (count - 1): 0 at the first of `count` steps, 1 at the last (OPEN's training, batch and layer
    proportions, authors' train.py); 0 when count is 1, where their code divides by zero."""
    return index / max(count - 1, 1)


def dormancy_scores(activation, eps=0.0):
    """OPEN eq. 6: E|h_i| over the batch divided by its mean over the layer's neurons; tau-dormant if <= tau. The
    optimizer's input uses eps = 1e-11, added to every E|h_i| (authors' network.py, calc_dormancy)."""
    mean_abs = jnp.abs(activation).reshape(-1, activation.shape[-1]).mean(0) + eps
    return mean_abs / jnp.maximum(mean_abs.mean(), 1e-12)


def per_parameter(layer_values, params):
    """Tile one value per layer, or per output neuron of a layer, over every parameter feeding that neuron."""
    return {"params": {name: jax.tree.map(lambda p, v=layer_values[name]: jnp.broadcast_to(v, p.shape), layer)
                       for name, layer in params["params"].items()}}


def network_context(params, activations, layer_proportions, actor_layers):
    """The context trees of one network (see the module docstring): dormancy, layer_proportion and actor_mask, each
    like its params; `actor_layers` names the layers that belong to the actor."""
    return dict(
        dormancy=per_parameter({n: dormancy_scores(a, 1e-11) for n, a in activations.items()}, params),
        layer_proportion=per_parameter(layer_proportions, params),
        actor_mask=per_parameter({n: float(n in actor_layers) for n in params["params"]}, params),
    )


# ----------------------------------------------------------------------------------------------- training
def gae(rewards, values, dones, last_value, gamma, lam, unroll_length=0, truncated=None):
    """Generalised advantage estimation over time (axis 0) -> (advantages, value targets). `dones` (terminated or
    truncated) cuts the trace; with time_limit "bootstrap", truncated steps were already bootstrapped into their
    reward, r + gamma V(final obs). With `unroll_length` n, as Brax's PPO (losses.py compute_gae): the trace restarts
    every n steps too, each unroll bootstrapping from the value after it, and the advantage is r_t + gamma v_{t+1} -
    V(s_t), v_{t+1} the next target (the lambda-return), V(s_{t+1}) after an unroll. With `truncated` (time_limit
    "exclude", Brax's truncation mask), a truncated step's delta is 0: its advantage is 0 and its target its value."""
    def backward(carry, step):
        next_advantage, next_value = carry
        reward, value, done, cut, kept = step
        delta = (reward + gamma * next_value * (1 - done) - value) * kept
        trace = (1 - done) * (1 - cut) * next_advantage
        return (delta + gamma * lam * trace, value), (delta + gamma * lam * trace, delta + gamma * trace)

    cuts = (jnp.arange(1, rewards.shape[0] + 1) % max(unroll_length, 1) == 0) * jnp.float32(unroll_length > 0)
    kept = 1.0 if truncated is None else 1.0 - truncated
    _, (advantages, brax_advantages) = jax.lax.scan(backward, (jnp.zeros_like(last_value), last_value),
                                                    (rewards, values, dones, cuts, jnp.broadcast_to(kept, dones.shape)),
                                                    reverse=True)
    return brax_advantages if unroll_length else advantages, advantages + values


class Agent(NamedTuple):
    """An agent's pieces (PPO's here, A2C's in a2c.py), each a pure function of its arguments (env, networks and config
    bound in), for `make_train` and for meta-gradients through updates (optim4rl_metagrad.py)."""
    networks: dict  # PPO: {"actor": MLP, "critic": MLP}
    init: Callable  # rng -> (params, env_state, obs)
    rollout: Callable  # (params, env_state, obs, rng) -> (batch, env_state, obs)
    loss: Callable  # (params, batch) -> (loss, activations)
    update: Callable  # (params, opt_state, env_state, obs, rng, optimizer, training_proportion) -> (..., metrics)
    act: Callable  # (params, obs, rng) -> the env's actions
    env: object  # one env (the final-policy evaluation's)
    env_params: object
    envs: wrappers.NormalizedEnvs  # the training envs; envs.observe(env_state, obs): obs normalised as in training
    steps_per_update: int  # env steps of one update (one rollout of every env)


def optimizer_step(optimizer, params, opt_state, grads, context, key, training_proportion, batch_proportion=0.0):
    """Where every agent meets its optimizer: one call on the whole agent with the context (module docstring). Returns
    (params, opt_state, the optimizer state's "metrics" entry if it has one)."""
    updates, opt_state = optimizer.update(grads, opt_state, params, training_proportion=training_proportion,
                                          batch_proportion=batch_proportion, key=key, **context)
    reported = opt_state["metrics"] if isinstance(opt_state, dict) and "metrics" in opt_state else {}
    return optax.apply_updates(params, updates), opt_state, reported


class Batching(NamedTuple):
    """How a rollout becomes minibatches, chosen once (BATCHINGS[config.minibatch_gae]). Rows of `unit` steps;
    `make(params, steps, final_obs, value_of)` the batch from the rollout's steps (time, envs, ...);
    `as_steps(batch)` a minibatch's rows as steps; `with_advantages(params, steps, value, value_of)` them with their
    advantages and targets, `value` the critic's on their observations."""
    unit: int  # steps per row
    make: Callable
    as_steps: Callable
    with_advantages: Callable


def steps_batch(config):
    """PureJaxRL's PPO: GAE once per rollout, a batch of single steps."""
    def make(params, steps, final_obs, value_of):
        advantage, target = gae(steps["reward"], steps["value"], steps["done"], value_of(params, final_obs),
                                config.gamma, config.gae_lambda, config.unroll_length, steps.get("truncated"))
        batch = {k: v for k, v in steps.items() if k not in ("reward", "done", "truncated")}
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), dict(batch, advantage=advantage, target=target))
    return Batching(1, make, lambda batch: batch, lambda params, batch, value, value_of: batch)


def unrolls_batch(config):
    """Brax's PPO (minibatch_gae; losses.py compute_ppo_loss): a batch of n-step unrolls, each with the observation
    after it to bootstrap from; GAE over each unroll recomputed in the loss with the current critic."""
    n = config.unroll_length

    def make(params, steps, final_obs, value_of):
        def unrolls(x):  # (num_steps, num_envs, ...) -> (num_steps / n * num_envs, n, ...)
            x = x.reshape((config.num_steps // n, n) + x.shape[1:])
            return jnp.swapaxes(x, 1, 2).reshape((-1, n) + x.shape[3:])
        after = jnp.concatenate([steps["obs"][n::n], final_obs[None]])
        return dict(jax.tree.map(unrolls, steps), bootstrap_obs=after.reshape((-1,) + after.shape[2:]))

    def as_steps(batch):  # unroll by unroll
        return {k: v if k == "bootstrap_obs" else v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}

    def with_advantages(params, batch, value, value_of):
        over_time = lambda x: x.reshape(-1, n).T  # time on axis 0
        advantage, target = gae(over_time(batch["reward"]), over_time(value), over_time(batch["done"]),
                                value_of(params, batch["bootstrap_obs"]), config.gamma, config.gae_lambda, n,
                                over_time(batch["truncated"]) if "truncated" in batch else None)
        return dict(batch, **jax.lax.stop_gradient(dict(advantage=advantage.T.reshape(-1),
                                                         target=target.T.reshape(-1))))
    return Batching(n, make, as_steps, with_advantages)


BATCHINGS = {False: steps_batch, True: unrolls_batch}  # PPOConfig.minibatch_gae


def make_networks(config, action_space):
    """({"actor": MLP, "critic": MLP}, the policy head (HEADS), the action bounds) for the env's action space."""
    continuous = isinstance(action_space, spaces.Box)
    head = wrappers.HEADS[config.policy_head if continuous else "categorical"]
    bounds = (action_space.low, action_space.high) if continuous else (None, None)
    out = action_space.shape[0] * head.outputs if continuous else action_space.n
    actor = MLP(config.width, config.depth, out, config.activation, 0.01, config.kernel_init, head.log_std)
    critic = MLP(config.critic_width or config.width, config.critic_depth or config.depth, 1, config.activation, 1.0,
                 config.kernel_init)
    return {"actor": actor, "critic": critic}, head, bounds


def make_agent(config, env_params=None):
    """PPO's pieces (Agent), in PureJaxRL's order: networks, collect trajectories (rollout), calculate advantage
    (Batching), update network (loss, update). The optimizer acts on the whole agent, {"actor": ..., "critic": ...}:
    its state is optimizer.init(params)."""
    validate(config)
    env, default_env_params = wrappers.make_env(config.env_name, config.brax_backend, config.episode_length)
    env_params = default_env_params if env_params is None else env_params
    networks, head, bounds = make_networks(config, env.action_space(default_env_params))
    actor, critic = networks["actor"], networks["critic"]
    envs = wrappers.NormalizedEnvs(env, config.num_envs, config.normalize_obs,
                                    config.gamma if config.normalize_reward else None, config.normalize_per_rollout)
    batching = BATCHINGS[config.minibatch_gae](config)

    def value_of(params, obs):
        return critic.apply(params["critic"], obs)[0][:, 0]

    def init(rng):
        actor_key, critic_key, reset_key = jax.random.split(rng, 3)
        obs, env_state = envs.reset(reset_key, env_params)
        return {"actor": actor.init(actor_key, obs), "critic": critic.init(critic_key, obs)}, env_state, obs

    def act(params, obs, rng):
        return head.env_action(head.policy(actor.apply(params["actor"], obs)[0]).sample(seed=rng), *bounds)

    rollout = make_rollout(config, envs, env_params, actor, head, bounds, value_of, batching)
    loss = make_loss(config, networks, head, value_of, batching)
    update = make_update(config, networks, rollout, loss, batching.unit)
    return Agent(networks, init, rollout, loss, update, act, env, env_params, envs, steps_per_update(config))


# ---------------------------------------------------------------------------------------- collect trajectories
def make_rollout(config, envs, env_params, actor, head, bounds, value_of, batching):
    """`rollout(params, env_state, obs, rng)`: `num_steps` steps of every env, made into a batch (Batching). With
    normalize_per_rollout, the rollout's observations are merged into the statistics, and the batch holds them
    normalised by the result (Brax's PPO). No gradient."""
    def env_step(carry, key):
        params, env_state, obs = carry  # obs as envs returned it: raw with normalize_per_rollout
        action_key, env_key = jax.random.split(key)
        seen = envs.seen(env_state, obs)
        pi = head.policy(actor.apply(params["actor"], seen)[0])
        action = pi.sample(seed=action_key)
        next_obs, env_state, reward, terminated, truncated, info = envs.step(
            env_key, env_state, head.env_action(action, *bounds), env_params)
        reward = reward * config.reward_scale
        if config.time_limit == "bootstrap":  # a time limit is not an end: keep the value of where it stopped
            final = envs.seen(env_state, info["final_observation"])
            reward = reward + config.gamma * value_of(params, final) * (truncated & ~terminated)
        step = dict(obs=obs, action=action, log_prob=pi.log_prob(action), value=value_of(params, seen),
                    reward=reward, done=(terminated | truncated).astype(jnp.float32))
        if config.time_limit == "exclude":  # Brax's truncation mask (gae)
            step["truncated"] = (truncated & ~terminated).astype(jnp.float32)
        if head.noise:  # the entropy estimate's noise (TanhGaussian), drawn afresh for each minibatch
            step["noise"] = jax.random.normal(jax.random.fold_in(key, 1), action.shape)
        return (params, env_state, next_obs), step

    def rollout(params, env_state, obs, rng):
        (_, env_state, last_obs), steps = jax.lax.scan(env_step, (params, env_state, obs),
                                                       jax.random.split(rng, config.num_steps))
        env_state = envs.merge(env_state, steps["obs"])
        steps, final = dict(steps, obs=envs.seen(env_state, steps["obs"])), envs.seen(env_state, last_obs)
        return jax.lax.stop_gradient(batching.make(params, steps, final, value_of)), env_state, last_obs
    return rollout


# ----------------------------------------------------------------------------------------------- update network
def make_loss(config, networks, head, value_of, batching):
    """`loss(params, minibatch)` -> (loss, activations): PPO's clipped surrogate, (clipped) value loss and entropy
    bonus (PureJaxRL's ppo.py; Brax's losses.py without value clipping), advantages normalised per minibatch."""
    def loss(params, batch):
        batch = batching.as_steps(batch)
        actor_out, actor_activations = networks["actor"].apply(params["actor"], batch["obs"])
        value, critic_activations = networks["critic"].apply(params["critic"], batch["obs"])
        value = value[:, 0]
        batch = batching.with_advantages(params, batch, value, value_of)
        pi = head.policy(actor_out)
        ratio = jnp.exp(pi.log_prob(batch["action"]) - batch["log_prob"])
        advantage = (batch["advantage"] - batch["advantage"].mean()) / (batch["advantage"].std() + 1e-8)
        actor_loss = -jnp.minimum(ratio * advantage,
                                  jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps) * advantage).mean()
        value_loss = (value - batch["target"]) ** 2
        if config.clip_value_loss:
            value_clipped = batch["value"] + jnp.clip(value - batch["value"], -config.clip_eps, config.clip_eps)
            value_loss = jnp.maximum(value_loss, (value_clipped - batch["target"]) ** 2)
        entropy = pi.entropy_estimate(batch["noise"]) if head.noise else pi.entropy()
        loss = actor_loss + config.vf_coef * 0.5 * value_loss.mean() - config.ent_coef * entropy.mean()
        return loss, {"actor": actor_activations, "critic": critic_activations}
    return loss


def learn(config, networks, optimizer, params, opt_state, grads, activations, key, training_proportion,
          batch_proportion):
    """The optimizer's side of a minibatch: each network's gradient clipped, the context (module docstring) from the
    minibatch's activations, optimizer_step, and the fraction of dormant actor neurons (OPEN eq. 6)."""
    clip = (optax.clip if config.grad_clip_mode == "elementwise" else optax.clip_by_global_norm)(config.max_grad_norm)
    grads = {name: clip.update(g, clip.init(g))[0] for name, g in grads.items()}
    trees = {name: network_context(params[name], activations[name], networks[name].layer_proportions,
                                   params[name]["params"] if name == "actor" else ()) for name in networks}
    context = {k: {name: tree[k] for name, tree in trees.items()} for k in trees["actor"]}
    params, opt_state, reported = optimizer_step(optimizer, params, opt_state, grads, context, key,
                                                 training_proportion, batch_proportion)
    dormant = jnp.mean(jnp.stack([jnp.mean(dormancy_scores(a) == 0.0)
                                  for n, a in activations["actor"].items() if n.startswith("hidden")]))
    return params, opt_state, {"dormant_fraction": dormant, "optimizer": reported}


def make_update(config, networks, rollout, loss, unit):
    """`update(params, opt_state, env_state, obs, rng, optimizer, training_proportion)`: one PPO update, a fresh
    rollout, then `update_epochs` epochs of `num_minibatches` optimizer steps on shuffled rows (of `unit` steps)."""
    rows = steps_per_update(config) // unit

    def minibatch(carry, inputs, optimizer, training_proportion, batch_proportion):
        params, opt_state = carry
        mb, key = inputs
        if "noise" in mb:  # TanhGaussian's entropy estimate: fresh noise for each minibatch
            mb = dict(mb, noise=jax.random.normal(jax.random.fold_in(key, 1), mb["noise"].shape))
        (value, activations), grads = jax.value_and_grad(loss, has_aux=True)(params, mb)
        params, opt_state, stats = learn(config, networks, optimizer, params, opt_state, grads, activations, key,
                                         training_proportion, batch_proportion)
        return (params, opt_state), dict(stats, loss=value)

    def update(params, opt_state, env_state, obs, rng, optimizer, training_proportion):
        rollout_key, epoch_key = jax.random.split(rng)
        batch, env_state, obs = rollout(params, env_state, obs, rollout_key)

        def epoch(carry, inputs):
            epoch_index, key = inputs
            permutation_key, minibatch_key = jax.random.split(key)
            order = jax.random.permutation(permutation_key, rows)  # one sort for all fields
            shuffled = jax.tree.map(lambda x: x[order].reshape((config.num_minibatches, -1) + x.shape[1:]), batch)
            step = lambda carry, inputs: minibatch(carry, inputs, optimizer, training_proportion,
                                                   proportion(epoch_index, config.update_epochs))
            return jax.lax.scan(step, carry, (shuffled, jax.random.split(minibatch_key, config.num_minibatches)))

        (params, opt_state), stats = jax.lax.scan(
            epoch, (params, opt_state),
            (jnp.arange(config.update_epochs), jax.random.split(epoch_key, config.update_epochs)))
        metrics = {"episode_return": wrappers.last_episode_return(env_state.env), "loss": stats["loss"].mean(),
                   "dormant_fraction": stats["dormant_fraction"][-1, -1]}
        if stats["optimizer"]:
            metrics["optimizer"] = jax.tree.map(lambda x: x.mean((0, 1)), stats["optimizer"])
        return params, opt_state, env_state, obs, metrics
    return update


def make_train(config, optimizer_fn, agent_fn=None, label=""):
    """`train(rng, optimizer_params, env_params=None)` -> {"metrics": per-update means, "final_return" (evaluation of
    the final policy), "training_return" (the OPEN authors' metric, see the module docstring), "params"}: the training
    loop of every agent, `agent_fn(config, env_params)` (PPO's make_agent by default; a2c.py passes A2C's). An
    optimizer whose state is a dict with a "metrics" entry (a pytree of arrays it sets in every update) gets their
    per-update means (over epochs and minibatches) reported as metrics["optimizer"]. Every `log_every` updates a
    progress line for all its vmapped seeds (runs.SeedProgress), named `label`."""
    agent_fn = agent_fn or make_agent
    probe = agent_fn(config)  # validates the config and builds the env before anything is traced
    num_updates = config.total_timesteps // probe.steps_per_update
    eval_max_steps = config.eval_max_steps or int(probe.env_params.max_steps_in_episode)
    progress = runs.SeedProgress(num_updates, probe.steps_per_update, config.run_dir, config.wandb, label)

    def train(rng, optimizer_params, env_params=None):
        agent = agent_fn(config, env_params)
        optimizer = optimizer_fn(optimizer_params)
        seed_tag = rng[-1]
        rng, init_key = jax.random.split(rng)
        params, env_state, obs = agent.init(init_key)
        opt_state = optimizer.init(params)

        def update(carry, update_index):
            params, opt_state, env_state, obs, rng = carry
            rng, key = jax.random.split(rng)
            params, opt_state, env_state, obs, metrics = agent.update(params, opt_state, env_state, obs, key,
                                                                      optimizer, proportion(update_index, num_updates))
            if config.log_every:
                runs.log_progress(progress, seed_tag, update_index, num_updates, config.log_every, metrics)
            return (params, opt_state, env_state, obs, rng), metrics

        (params, _, env_state, _, rng), metrics = jax.lax.scan(update, (params, opt_state, env_state, obs, rng),
                                                               jnp.arange(num_updates))
        final_return = runs.evaluate(agent.env, agent.env_params,  # with the training's final statistics, frozen
                                     lambda obs, key: agent.act(params, agent.envs.observe(env_state, obs), key), rng,
                                     config.eval_episodes, eval_max_steps)
        return {"metrics": metrics, "final_return": final_return,
                "training_return": env_state.env.returned_episode_returns.mean(), "params": params}

    return train


# ----------------------------------------------------------------------------------------------- comparisons
def make_run(config, optimizer_fn, label="", agent_fn=None):
    """`run(key, optimizer_params)` -> make_train's output (PPO's, or `agent_fn`'s agent); on a gridworld
    distribution each key draws its level. `label` names the run in its progress lines."""
    return gridworld.on_levels(make_train(config, optimizer_fn, agent_fn, label), config.env_name)


def main(config):
    validate(config)
    anneal = optimizer_steps(config) if config.anneal_lr else None
    return runs.train_and_report("PPO", config, make_train(config, hand_designed(config.optimizer, anneal)),
                                 hyperparameters(config))


if __name__ == "__main__":
    main(runs.parse_config(PPOConfig, PRESETS))
