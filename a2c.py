"""A2C (Mnih et al., 2016) as used by Optim4RL (Lan et al., 2023, App. C), with a pluggable optax-shaped optimizer.

    python a2c.py                             # Catch, Adam lr 1e-3, 5e5 steps, 4 seeds (the authors' a2c_catch.json)
    python a2c.py --preset big_dense_long     # an Optim4RL gridworld (Table 2) with its network and learning rate

Settings from Optim4RL App. C and the authors' configs/a2c_*.json: rollouts of 20 steps, discount 0.995, GAE lambda
0.95, critic weight 0.5, entropy weight 0.01, ReLU; a shared feature net with linear actor and critic heads, all
updated by one optimizer. The feature nets are the authors' select_feature_net (components/network.py): Dense 256 for
Catch, Dense 32 for the small gridworlds, Conv(16, kernel 2) + Dense 32 for the big ones.

`make_agent(config)` exposes the pieces (ppo.Agent: network, rollout, loss, one update) so that `optim4rl_metagrad.py`
can differentiate through inner updates; `make_train(config, optimizer_fn)` runs them in ppo.py's training loop, one
jitted program.
The optimizer receives the same context as in `ppo.py` (training proportion, dormancy, layer proportion, actor mask,
key; batch proportion is 0: A2C makes one update per batch).
"""
import runs  # first: its XLA and OpenBLAS settings must come before jax starts
from dataclasses import dataclass, replace

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

import wrappers
from ppo import Agent, dormancy_scores, gae, hand_designed, hyperparameters, network_context, optimizer_step
from ppo import make_train as ppo_make_train


@dataclass(frozen=True)
class A2CConfig:
    env_name: str = "Catch-bsuite"  # a gymnax id or a gridworld.LEVELS name (discrete actions)
    num_envs: int = 64  # parallel environments
    rollout_length: int = 20  # steps per env per update (App. C)
    total_timesteps: int = 500_000  # environment steps of the whole run (a2c_catch.json: 5e5)
    gamma: float = 0.995  # discount (App. C)
    gae_lambda: float = 0.95  # lambda of the TD(lambda) / GAE targets (App. C)
    critic_coef: float = 0.5  # critic loss weight (App. C)
    entropy_coef: float = 0.01  # entropy bonus weight (App. C)
    torso: str = "mlp"  # feature net: "mlp" (one dense layer) or "conv" (Conv 16, kernel 2, then the dense layer)
    width: int = 256  # units of the feature net's dense layer (Catch: D256; gridworlds: 32; components/network.py)
    grad_clip: float = 0.0  # element-wise clip of agent gradients to +-grad_clip (1.0 in gridworlds; 0: off)
    optimizer: str = "adam"  # a hand-designed optimizer (ppo.OPTIMIZERS), used when running this file
    learning_rate: float = 1e-3  # agent learning rate (Catch: 1e-3, a2c_catch.json; big_dense_long: 3e-3, App. C.3)
    b1: float = 0.9  # beta1 of adam and lion
    b2: float = 0.999  # beta2 of adam and lion
    decay: float = 0.9  # decay of rmsprop
    anneal_lr: bool = False  # anneal the learning rate linearly to 0 over training
    eval_episodes: int = 64  # episodes of the final-policy evaluation ("final return")
    eval_max_steps: int | None = None  # step cap of that evaluation (None: the env's time limit)
    num_seeds: int = 4  # seeds trained in parallel (vmapped)
    seed: int = 0  # first seed
    log_every: int = 50  # print a progress line every this many updates (0: silent)
    run_dir: str = "runs/a2c"  # where running this file writes metrics.jsonl (the printed lines as JSON)
    wandb: bool = False  # also log those records to Weights & Biases (the `wandb` extra)


# Optim4RL's six gridworlds (Table 2; a2c_grid.json): 512 envs, 3e7 steps, agent gradients clipped to +-1; small ones
# use Dense 32, big ones the conv net. a2c_grid.json sweeps the learning rate over {3e-2, 1e-2, ..., 1e-4}; the one
# here is App. C.3's (optim4rl_metagrad.py's eval_baseline_lrs runs the sweep).
GRIDWORLD = dict(grad_clip=1.0, total_timesteps=30_000_000, num_envs=512, width=32)
PRESETS = {
    "default": {},
    "catch": dict(env_name="Catch-bsuite", learning_rate=1e-3, total_timesteps=500_000),  # a2c_catch.json
    **{name: dict(GRIDWORLD, env_name=name, torso="mlp") for name in ("small_dense_short", "small_dense_long")},
    **{name: dict(GRIDWORLD, env_name=name, torso="conv", learning_rate=3e-3)
       for name in ("big_sparse_short", "big_sparse_long", "big_dense_short", "big_dense_long")},
}


def preset(name, **overrides):
    """The A2CConfig of PRESETS[name], with `overrides`."""
    return replace(A2CConfig(), **{**PRESETS[name], **overrides})


def steps_per_update(config):
    """Env steps of one update: one rollout of every env."""
    return config.num_envs * config.rollout_length


def validate(config):
    """Refuse bad settings with a message naming the value and the valid choices, before anything compiles."""
    discrete = tuple(n for n in wrappers.ENV_NAMES if n not in wrappers.BRAX_ENVS)
    if config.env_name not in discrete:
        raise ValueError(f"unknown env_name {config.env_name!r} for A2C (discrete actions); valid: "
                         f"{', '.join(discrete)}")
    runs.require_choice("torso", config.torso, ("mlp", "conv"))
    runs.check_wandb(config.wandb)
    runs.require_positive(config, "num_envs", "rollout_length", "total_timesteps", "width", "eval_episodes",
                          "num_seeds")
    if config.total_timesteps < steps_per_update(config):
        raise ValueError(f"total_timesteps = {config.total_timesteps} is less than one rollout "
                         f"({steps_per_update(config)} steps)")


class ActorCritic(nn.Module):
    """Shared feature net with actor (logits) and critic (value) heads, ReLU (Optim4RL App. C). Returns logits,
    value and {layer name: activation} for dormancy. Gridworld observations are (C, H, W); the conv is channels-last."""
    num_actions: int
    torso: str
    width: int

    @nn.compact
    def __call__(self, obs):
        activations = {}
        x = obs
        if self.torso == "conv":
            x = activations["conv"] = nn.relu(nn.Conv(16, (2, 2), name="conv")(jnp.moveaxis(obs, -3, -1)))
        x = x.reshape((obs.shape[0], -1))
        x = activations["dense"] = nn.relu(nn.Dense(self.width, name="dense")(x))
        logits = activations["actor"] = nn.Dense(self.num_actions, name="actor")(x)
        value = activations["critic"] = nn.Dense(1, name="critic")(x)
        return logits, value[:, 0], activations

    @property
    def layer_proportions(self):
        """h / H for each layer (both heads are last)."""
        torso = ("conv", "dense") if self.torso == "conv" else ("dense",)
        layers = len(torso) + 1
        return {**{name: (i + 1) / layers for i, name in enumerate(torso)}, "actor": 1.0, "critic": 1.0}


def make_agent(config, env_params=None):
    """A2C's pieces (ppo.Agent): the rollout, its loss and one update, so that optim4rl_metagrad.py can differentiate
    through inner updates; ppo.make_train chains the updates (make_train below)."""
    validate(config)
    env, default_env_params = wrappers.make_env(config.env_name)
    env_params = default_env_params if env_params is None else env_params
    network = ActorCritic(env.action_space(env_params).n, config.torso, config.width)
    envs = wrappers.NormalizedEnvs(env, config.num_envs)  # the envs stepped as one (no normalisation)

    def init(rng):
        network_key, reset_key = jax.random.split(rng)
        obs, env_state = envs.reset(reset_key, env_params)
        return network.init(network_key, obs), env_state, obs

    def rollout(params, env_state, obs, rng):
        """`rollout_length` steps of every env. The trajectory carries no gradient: `loss` recomputes the network."""
        def step(carry, key):
            env_state, obs = carry
            action_key, env_key = jax.random.split(key)
            logits, _, _ = network.apply(params, obs)
            action = distrax.Categorical(logits=logits).sample(seed=action_key)
            next_obs, env_state, reward, terminated, truncated, info = envs.step(env_key, env_state, action,
                                                                                 env_params)
            bootstrap = truncated & ~terminated  # a time limit (Brax; gridworld horizon="truncation") is not an end
            reward = reward + config.gamma * network.apply(params, info["final_observation"])[1] * bootstrap
            return (env_state, next_obs), dict(obs=obs, action=action, reward=reward,
                                               done=(terminated | truncated).astype(jnp.float32))

        (env_state, obs), trajectory = jax.lax.scan(step, (env_state, obs),
                                                    jax.random.split(rng, config.rollout_length))
        return jax.lax.stop_gradient(dict(trajectory, last_obs=obs)), env_state, obs

    def loss(params, trajectory):
        """A2C loss: policy gradient with GAE advantages, squared error to the lambda-returns, entropy bonus."""
        steps, num_envs = trajectory["action"].shape
        last_obs = trajectory["last_obs"]
        logits, values, activations = network.apply(params, trajectory["obs"].reshape((steps * num_envs,)
                                                                                       + last_obs.shape[1:]))
        logits, values = logits.reshape((steps, num_envs, -1)), values.reshape((steps, num_envs))
        last_value = network.apply(params, last_obs)[1]
        advantage, target = gae(trajectory["reward"], jax.lax.stop_gradient(values), trajectory["done"],
                                jax.lax.stop_gradient(last_value), config.gamma, config.gae_lambda)
        pi = distrax.Categorical(logits=logits)
        actor_loss = -(pi.log_prob(trajectory["action"]) * advantage).mean()
        critic_loss = ((values - target) ** 2).mean()
        return actor_loss + config.critic_coef * critic_loss - config.entropy_coef * pi.entropy().mean(), activations

    def update(params, opt_state, env_state, obs, rng, optimizer, training_proportion):
        """One A2C update: a fresh rollout, its loss gradient (clipped element-wise), one optimizer step."""
        rollout_key, optimizer_key = jax.random.split(rng)
        trajectory, env_state, obs = rollout(params, env_state, obs, rollout_key)
        (value, activations), grads = jax.value_and_grad(loss, has_aux=True)(params, trajectory)
        if config.grad_clip:
            grads = jax.tree.map(lambda g: jnp.clip(g, -config.grad_clip, config.grad_clip), grads)
        context = network_context(params, activations, network.layer_proportions, ("actor",))
        params, opt_state, reported = optimizer_step(optimizer, params, opt_state, grads, context, optimizer_key,
                                                     training_proportion)
        metrics = {"episode_return": wrappers.last_episode_return(env_state.env), "loss": value,
                   "dormant_fraction": jnp.mean(dormancy_scores(activations["dense"]) == 0.0)}
        return params, opt_state, env_state, obs, dict(metrics, **({"optimizer": reported} if reported else {}))

    def act(params, obs, rng):
        return distrax.Categorical(logits=network.apply(params, obs)[0]).sample(seed=rng)

    return Agent({"actor_critic": network}, init, rollout, loss, update, act, env, env_params, envs,
                 steps_per_update(config))


def make_train(config, optimizer_fn):
    """`train(rng, optimizer_params, env_params=None)`: ppo.make_train's training loop with A2C's agent."""
    return ppo_make_train(config, optimizer_fn, make_agent)


def main(config):
    validate(config)
    anneal = config.total_timesteps // steps_per_update(config) if config.anneal_lr else None
    return runs.train_and_report("A2C", config, make_train(config, hand_designed(config.optimizer, anneal)),
                                 hyperparameters(config))


if __name__ == "__main__":
    main(runs.parse_config(A2CConfig, PRESETS))
