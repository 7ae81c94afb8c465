"""Everything between an environment and an agent: `make_env` builds every env the agents (ppo.py, a2c.py) train on,
behind gymnax's API, and the wrappers stacked on it: Brax's episode handling (`BraxEnv`), OPEN's observation and
reward normalisation (`NormalizedEnvs`), the episode-return logger (gymnax's LogWrapper), and the policy heads
(`HEADS`): how an actor's output becomes a distribution and the env's action, for each kind of action space.

    env, env_params = make_env("Breakout-MinAtar")            # a gymnax id, a gridworld.LEVELS name, a Brax env
    env, env_params = make_env("DeepSea-bsuite-12")           # bsuite's Deep Sea at any size N >= 2
    env, env_params = make_env("SpaceInvaders-MinAtar@gymnax-0.0.6")   # as the OPEN authors ran it

The papers ran older packages (OPEN pins gymnax 0.0.6, Optim4RL brax 0.9.4), and four envs have changed since. A
plain name gives today's env; the name + "@gymnax-0.0.6" or "@brax-0.9.4" gives the env as that version had it,
which the paper presets use (the differences below were found by stepping both versions with the same keys):

- SpaceInvaders-MinAtar@gymnax-0.0.6: the first wave has 4 x 7 aliens (columns 2-8; later waves, and every wave
  today, 4 x 6), and an enemy bullet hits the player if it reaches the cell the player was in before moving (today:
  the cell after the move). Otherwise step for step today's env.
- DeepSea-bsuite-N@gymnax-0.0.6: action 1 moves right in every cell and the horizon is 2000 steps (today: a fixed
  per-cell action map drawn from key 0, horizon N). An episode ends after N steps in both.
- humanoid@brax-0.9.4: the action goes to the actuators raw; they clip it to their ctrl range (+-0.4) and the
  control cost 0.1 sum(a^2) is charged on the raw action. Today the action in [-1, 1] is rescaled to the ctrl range
  first: today's env given u equals this one given 0.4 u.
- inverted_double_pendulum@brax-0.9.4: the tip is pole 2's origin + (0, 0, 0.6) in world axes, without pole 2's
  rotation (in effect only pole 1 is balanced), and the alive bonus is paid on the terminal step too.
"""
from typing import Callable, NamedTuple

import distrax
import gymnax
import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces
from gymnax.environments.minatar.space_invaders import MinSpaceInvaders
from gymnax.wrappers import LogWrapper

from gridworld import LEVELS, make

OLD_GYMNAX, OLD_BRAX = "@gymnax-0.0.6", "@brax-0.9.4"  # the envs as the papers' pinned packages had them
BRAX_ENVS = ("ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "inverted_pendulum",
             "inverted_double_pendulum", "pusher", "reacher", "swimmer", "walker2d",
             "humanoid" + OLD_BRAX, "inverted_double_pendulum" + OLD_BRAX)
ENV_NAMES = (tuple(gymnax.registered_envs) + ("SpaceInvaders-MinAtar" + OLD_GYMNAX,) + tuple(LEVELS)
             + BRAX_ENVS)
DEEP_SEA = "DeepSea-bsuite-"  # + a size N >= 2 (+ "@gymnax-0.0.6"): Deep Sea on an N x N grid (OPEN Sec. 7.2: 4-26)


def deep_sea_size(name):
    """N of 'DeepSea-bsuite-N' or 'DeepSea-bsuite-N@gymnax-0.0.6', else None."""
    suffix = name[len(DEEP_SEA):].removesuffix(OLD_GYMNAX) if name.startswith(DEEP_SEA) else ""
    return int(suffix) if suffix.isdigit() and int(suffix) >= 2 else None


class SpaceInvaders006(MinSpaceInvaders):
    """SpaceInvaders-MinAtar as gymnax 0.0.6 had it (module docstring): a first wave of 4 x 7 aliens, and the enemy
    bullet's hit tested at the player's cell before the move. Today's step is run with the bullets that would reach
    the bottom row held back, then they are put back and tested at the old cell."""

    def reset_env(self, key, params):
        _, state = super().reset_env(key, params)
        state = state.replace(alien_map=state.alien_map.at[0:4, 2:9].set(1))
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        arriving = state.e_bullet_map[8]  # the row the bullets move down from, into the player's row 9
        _, stepped, reward, done, info = super().step_env(
            key, state.replace(e_bullet_map=state.e_bullet_map.at[8].set(0)), action, params)
        hit = arriving[state.pos] > 0
        stepped = stepped.replace(e_bullet_map=stepped.e_bullet_map.at[9].max(arriving),
                                  terminal=stepped.terminal | hit)
        done = done | hit
        return (jax.lax.stop_gradient(self.get_obs(stepped)), jax.lax.stop_gradient(stepped), reward, done,
                dict(info, discount=self.discount(stepped, params)))


class BraxVariant:
    """Today's Brax env `env` with another `step`; everything else is the env's own."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):
        return getattr(self.env, name)


class Humanoid094(BraxVariant):
    """brax's humanoid as brax 0.9.4 had it (module docstring): raw action, clipped by the actuators, cost on the raw
    action. Today's step is given the action that its rescaling maps to the clipped one; the cost is corrected."""

    def step(self, state, action):
        low, high = self.env.sys.actuator.ctrl_range.T
        ctrl = jnp.clip(action, low, high)
        state = self.env.step(state, (ctrl - low) / (high - low) * 2 - 1)
        extra_cost = self.env._ctrl_cost_weight * (jnp.sum(action ** 2) - jnp.sum(ctrl ** 2))
        return state.replace(reward=state.reward - extra_cost)


class InvertedDoublePendulum094(BraxVariant):
    """brax's inverted_double_pendulum as brax 0.9.4 had it (module docstring): the tip without pole 2's rotation,
    reward 10 - 0.01 x^2 - (y - 2)^2 - 1e-3 v1^2 - 5e-3 v2^2 on every step, done when the tip's y <= 1."""

    def step(self, state, action):
        pipeline_state = self.env.pipeline_step(state.pipeline_state, action)
        x, _, y = pipeline_state.x.pos[2] + jnp.array([0.0, 0.0, 0.6])
        v1, v2 = pipeline_state.qd[1:]
        reward = 10.0 - (0.01 * x ** 2 + (y - 2) ** 2) - (1e-3 * v1 ** 2 + 5e-3 * v2 ** 2)
        return state.replace(pipeline_state=pipeline_state, obs=self.env._get_obs(pipeline_state), reward=reward,
                             done=jnp.where(y <= 1, 1.0, 0.0))


BRAX_0_9_4 = {"humanoid": Humanoid094, "inverted_double_pendulum": InvertedDoublePendulum094}


class BraxEnv:
    """A Brax env behind gymnax's API, stepped as Brax's training wrappers (EpisodeWrapper, AutoResetWrapper), which
    both papers' code and Brax's PPO use: `episode_length` steps end an episode as a truncation, and an env whose
    episode ends restarts from its first state."""

    def __init__(self, name, backend, episode_length):
        from brax import envs  # imported here: brax is slow to import and only these envs need it
        base, _, version = name.partition("@")
        self.env, self.episode_length = envs.get_environment(base, backend=backend), episode_length
        if version:  # as brax 0.9.4 had it
            self.env = BRAX_0_9_4[base](self.env)
        self.default_params = environment.EnvParams(max_steps_in_episode=episode_length)

    def observation_space(self, params):
        return spaces.Box(-jnp.inf, jnp.inf, (self.env.observation_size,))

    def action_space(self, params):
        return spaces.Box(-1.0, 1.0, (self.env.action_size,))

    def reset(self, key, params=None):
        state = self.env.reset(key)
        return state.obs, (state, jnp.int32(0), state)

    def step(self, key, state, action, params=None):
        brax_state, t, first = state
        stepped, t = self.env.step(brax_state, action), t + 1
        terminated, truncated = stepped.done.astype(bool), t >= self.episode_length
        brax_state, t = jax.tree.map(lambda a, b: jnp.where(terminated | truncated, a, b), (first, 0), (stepped, t))
        return (brax_state.obs, (brax_state, t, first), stepped.reward, terminated, truncated,
                {"final_observation": stepped.obs})


class RunningStats(NamedTuple):
    """Mean and variance of all batches so far, merged batch by batch (Chan et al.'s parallel formula) from mean 0,
    variance 1, count 1e-4: PureJaxRL's, in OPEN's NormalizeObservation and NormalizeReward (rl_optimizer/utils.py)."""
    mean: jax.Array
    var: jax.Array
    count: jax.Array

    def update(self, batch):
        n, delta = batch.shape[0], batch.mean(0) - self.mean
        count = self.count + n
        m2 = self.var * self.count + batch.var(0) * n + delta ** 2 * self.count * n / count
        return RunningStats(self.mean + delta * n / count, m2 / count, count)


class NormalizedEnvs:
    """`num_envs` copies of `env` stepped as one. Optionally, as OPEN's NormalizeObservation and NormalizeReward(gamma)
    (rl_optimizer/utils.py): observations become (o - mean) / sqrt(var + 1e-8) by the RunningStats of all observations
    returned so far, and rewards are divided by sqrt(var + 1e-8) of the RunningStats of each env's discounted return
    R = r + gamma (1 - done) R (done of the same step, as there). The statistics are in the state: one program a run.
    With `per_rollout`, as Brax's PPO (so Optim4RL's, brax/training/agents/ppo/train.py): reset and step leave the
    statistics alone and return raw observations; the agent acts on `seen(state, obs)`, normalised by the statistics
    of the rollouts before, and merges each rollout's observations after it (`merge`). Brax divides by max(std, 1e-6)
    from count 0, a difference of the prior's 1e-4 weight and the 1e-8 here, far below any effect on learning."""

    class State(NamedTuple):
        env: object  # the envs' states
        obs_stats: RunningStats
        return_stats: RunningStats
        returns: jax.Array  # each env's discounted return R

    def __init__(self, env, num_envs, normalize_obs=False, reward_gamma=None, per_rollout=False):
        self.env, self.num_envs, self.normalize_obs, self.reward_gamma = env, num_envs, normalize_obs, reward_gamma
        self.per_rollout = normalize_obs and per_rollout  # merge the statistics once a rollout (`merge`)

    def reset(self, key, params):
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(key, self.num_envs), params)
        stats = RunningStats(jnp.zeros(obs.shape[1:]), jnp.ones(obs.shape[1:]), jnp.float32(1e-4))
        state = self.State(env_state, stats.update(obs) if self.normalize_obs and not self.per_rollout else stats,
                           RunningStats(jnp.float32(0), jnp.float32(1), jnp.float32(1e-4)), jnp.zeros(self.num_envs))
        return obs if self.per_rollout else self.observe(state, obs), state

    def step(self, key, state, action, params):
        obs, env_state, reward, terminated, truncated, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(key, self.num_envs), state.env, action, params)
        state = state._replace(env=env_state)
        if self.normalize_obs and not self.per_rollout:
            state = state._replace(obs_stats=state.obs_stats.update(obs))
            info = dict(info, final_observation=self.observe(state, info["final_observation"]))
        if self.reward_gamma is not None:
            returns = state.returns * self.reward_gamma * (1 - (terminated | truncated)) + reward
            state = state._replace(return_stats=state.return_stats.update(returns), returns=returns)
            reward = reward / jnp.sqrt(state.return_stats.var + 1e-8)
        return obs if self.per_rollout else self.observe(state, obs), state, reward, terminated, truncated, info

    def observe(self, state, obs):
        """`obs` as the agent sees it, normalised by the statistics in `state` (or as it is)."""
        return (obs - state.obs_stats.mean) / jnp.sqrt(state.obs_stats.var + 1e-8) if self.normalize_obs else obs

    def seen(self, state, obs):
        """What the agent acts on, given an observation as reset or step returned it: normalised now with
        `per_rollout`, already normalised (or not normalised at all) otherwise."""
        return self.observe(state, obs) if self.per_rollout else obs

    def merge(self, state, observations):
        """With `per_rollout`: the statistics with `observations` (raw, any leading axes) merged; otherwise `state`."""
        if not self.per_rollout:
            return state
        return state._replace(obs_stats=state.obs_stats.update(observations.reshape(-1, observations.shape[-1])))


def last_episode_return(log_state):
    """Mean over envs of each env's most recent completed episode return (NaN until one has completed)."""
    valid = log_state.returned_episode_valid
    return jnp.where(valid.any(), (log_state.returned_episode_returns * valid).sum() / jnp.maximum(valid.sum(), 1),
                     jnp.nan)


# ----------------------------------------------------------------------------------------------- policy heads
class TanhGaussian(distrax.MultivariateNormalDiag):
    """Brax's tanh-squashed Gaussian (brax/training/distribution.py NormalTanhDistribution, so Optim4RL's): samples
    and log-probs are of the pre-tanh action u; the env gets tanh(u). log_prob(u) = log N(u; loc, scale) - sum_i
    log(1 - tanh(u_i)^2), the density of tanh(u), with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) (distrax.Tanh;
    finite where tanh saturates). entropy_estimate(noise) is Brax's one-sample estimate of the squashed entropy,
    H[N(loc, scale)] + sum_i log(1 - tanh(u_i)^2) at u = loc + scale * noise, noise ~ N(0, I)."""

    def log_prob(self, value):
        return super().log_prob(value) - distrax.Tanh().forward_log_det_jacobian(value).sum(-1)

    def entropy_estimate(self, noise):
        return self.entropy() + distrax.Tanh().forward_log_det_jacobian(self.loc + self.scale_diag * noise).sum(-1)


class Head(NamedTuple):
    """A policy head: how the actor's output becomes the policy, the env's action and the entropy bonus."""
    policy: Callable  # actor output -> distrax distribution
    env_action: Callable  # (sample, low, high) -> the env's action
    outputs: int  # actor outputs per action dimension (categorical: one per action)
    log_std: bool  # a state-independent log std parameter after the actor's output (MLP's log_std)
    noise: bool  # the entropy is Brax's one-sample estimate, whose noise the rollout draws (TanhGaussian)


def gaussian(actor_out):
    """OPEN's Actor (rl_optimizer/train.py): actor_out = [loc, s], s the state-independent log_std; std exp(s)."""
    loc, s = jnp.split(actor_out, 2, axis=-1)
    return distrax.MultivariateNormalDiag(loc, jnp.exp(s))


def tanh_gaussian(actor_out):
    """Brax's PPO (so Optim4RL's): actor_out = [loc, s] from the network; TanhGaussian of std softplus(s) + 0.001."""
    loc, s = jnp.split(actor_out, 2, axis=-1)
    return TanhGaussian(loc, jax.nn.softplus(s) + 1e-3)


# "categorical" for discrete actions (logits); for continuous ones PPOConfig.policy_head: "gaussian", the sample
# clipped to the action space (OPEN's ClipAction, rl_optimizer/utils.py), or "tanh_gaussian", the env getting tanh(u).
HEADS = {"categorical": Head(lambda out: distrax.Categorical(logits=out), lambda a, low, high: a, 1, False, False),
         "gaussian": Head(gaussian, lambda a, low, high: jnp.clip(a, low, high), 1, True, False),
         "tanh_gaussian": Head(tanh_gaussian, lambda a, low, high: jnp.tanh(a), 2, False, True)}


def make_env(name, brax_backend="spring", episode_length=1000):
    """(env, env_params) for any name in ENV_NAMES or 'DeepSea-bsuite-N[@gymnax-0.0.6]', wrapped to log episode
    returns; a name ending in "@gymnax-0.0.6" or "@brax-0.9.4" is the env as that version had it (module docstring)."""
    if name in BRAX_ENVS:
        env = BraxEnv(name, brax_backend, episode_length)
        return LogWrapper(env), env.default_params
    if deep_sea_size(name):
        env, env_params = gymnax.make("DeepSea-bsuite", size=deep_sea_size(name))
        if name.endswith(OLD_GYMNAX):
            env_params = env_params.replace(randomize_actions=False, max_steps_in_episode=2000)
        return LogWrapper(env), env_params
    if name == "SpaceInvaders-MinAtar" + OLD_GYMNAX:
        env = SpaceInvaders006()
        return LogWrapper(env), env.default_params
    env, env_params = make(name) if name in LEVELS else gymnax.make(name)
    return LogWrapper(env), env_params
