"""Continuous actions (Brax) for ppo.py, as each paper ran them: a Brax env behind gymnax's API, the normalisation of
observations and rewards (NormalizedEnvs, whose statistics live in the env state), and the two Gaussian policy heads
(action_distribution): OPEN's (rl_optimizer/train.py, utils.py) and Brax's PPO's, which Optim4RL uses."""
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
from gymnax.environments import spaces
from gymnax.environments.environment import EnvParams


class BraxEnv:
    """A Brax env behind gymnax's API, stepped as Brax's training wrappers (EpisodeWrapper, AutoResetWrapper), which
    both papers' code and Brax's PPO use: `episode_length` steps end an episode as a truncation, and an env whose
    episode ends restarts from its first state."""

    def __init__(self, name, backend, episode_length):
        from brax import envs  # imported here: brax is slow to import and only these envs need it
        self.env, self.episode_length = envs.get_environment(name, backend=backend), episode_length
        self.default_params = EnvParams(max_steps_in_episode=episode_length)

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
    Brax's PPO (so Optim4RL) merges each rollout's observations once, after it, and normalises in its networks by
    max(std, 1e-6) from count 0: nearly the same statistics, but it acts on those of the rollouts before."""

    class State(NamedTuple):
        env: object  # the envs' states
        obs_stats: RunningStats
        return_stats: RunningStats
        returns: jax.Array  # each env's discounted return R

    def __init__(self, env, num_envs, normalize_obs=False, reward_gamma=None):
        self.env, self.num_envs, self.normalize_obs, self.reward_gamma = env, num_envs, normalize_obs, reward_gamma

    def reset(self, key, params):
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(key, self.num_envs), params)
        stats = RunningStats(jnp.zeros(obs.shape[1:]), jnp.ones(obs.shape[1:]), jnp.float32(1e-4))
        state = self.State(env_state, stats.update(obs) if self.normalize_obs else stats,
                           RunningStats(jnp.float32(0), jnp.float32(1), jnp.float32(1e-4)), jnp.zeros(self.num_envs))
        return self.observe(state, obs), state

    def step(self, key, state, action, params):
        obs, env_state, reward, terminated, truncated, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(key, self.num_envs), state.env, action, params)
        state = state._replace(env=env_state)
        if self.normalize_obs:
            state = state._replace(obs_stats=state.obs_stats.update(obs))
            info = dict(info, final_observation=self.observe(state, info["final_observation"]))
        if self.reward_gamma is not None:
            returns = state.returns * self.reward_gamma * (1 - (terminated | truncated)) + reward
            state = state._replace(return_stats=state.return_stats.update(returns), returns=returns)
            reward = reward / jnp.sqrt(state.return_stats.var + 1e-8)
        return self.observe(state, obs), state, reward, terminated, truncated, info

    def observe(self, state, obs):
        """`obs` as the agent sees it, normalised by the statistics in `state` (or as it is)."""
        return (obs - state.obs_stats.mean) / jnp.sqrt(state.obs_stats.var + 1e-8) if self.normalize_obs else obs


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


def action_distribution(actor_out, head):
    """The policy at the actor's output. "categorical": logits. Continuous actions, actor_out = [loc, s]: "gaussian"
    (OPEN's Actor, rl_optimizer/train.py): Gaussian of std exp(s), s the state-independent log_std; "tanh_gaussian"
    (Brax's PPO, Optim4RL): TanhGaussian of std softplus(s) + 0.001, s from the network."""
    if head == "categorical":
        return distrax.Categorical(logits=actor_out)
    loc, s = jnp.split(actor_out, 2, axis=-1)
    return distrax.MultivariateNormalDiag(loc, jnp.exp(s)) if head == "gaussian" else \
        TanhGaussian(loc, jax.nn.softplus(s) + 1e-3)


def env_action(sample, head, low=-1.0, high=1.0):
    """The env's action: the sample clipped to the action space (OPEN's ClipAction, rl_optimizer/utils.py), tanh(u)
    (Brax), or as it is (categorical)."""
    if head == "gaussian":
        return jnp.clip(sample, low, high)
    return jnp.tanh(sample) if head == "tanh_gaussian" else sample
