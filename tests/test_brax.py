"""Brax PPO as each paper ran it (wrappers.py's Brax env and normalisation, ppo.py's heads and Brax presets): the
presets against the authors' configs, Brax
envs that build and train, the running normalisation against numpy, the policy heads against hand computations, and
Brax's unroll advantages against Brax's own compute_gae."""
from dataclasses import replace

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.wrappers import LogWrapper

import optim4rl_metagrad as om
import ppo
from wrappers import NormalizedEnvs, RunningStats
from wrappers import HEADS


# ----------------------------------------------------------------------------------------------- presets
def test_ant_preset_is_open_configs_ant():
    """AlexGoldie/rl-learned-optimization: rl_optimizer/configs.py "ant", and train.py's Brax path (utils.py's
    BraxGymnaxWrapper on the positional backend, ClipAction, NormalizeObservation, NormalizeReward(GAMMA); done, a
    time limit included, ends the return; Actor with a log_std parameter)."""
    c = ppo.preset("ant")
    assert (c.env_name, c.brax_backend, c.episode_length, c.num_envs, c.num_steps, c.total_timesteps) == (
        "ant", "positional", 1000, 2048, 10, 50_000_000)
    assert (c.update_epochs, c.num_minibatches, c.gamma, c.gae_lambda, c.clip_eps, c.ent_coef, c.vf_coef) == (
        4, 32, 0.99, 0.95, 0.2, 0.0, 0.5)
    assert (c.max_grad_norm, c.grad_clip_mode, c.activation, c.width, c.depth, c.critic_depth) == (
        0.5, "global_norm", "tanh", 64, 2, None)
    assert (c.policy_head, c.normalize_obs, c.normalize_reward, c.time_limit, c.clip_value_loss, c.unroll_length) == (
        "gaussian", True, True, "terminal", True, 0)
    assert not (c.minibatch_gae or c.normalize_per_rollout)  # PureJaxRL's PPO: GAE once, statistics every step


def test_optim4rl_presets_are_braxs_ppo_as_the_authors_ran_it():
    """sail-sg/optim4rl: configs/lopt_rl_grid_{ant,humanoid}.json and ppo_*.json with agents/PPO.py (evaluation),
    meta_rl_{ant,humanoid}.json with agents/MetaPPO.py (meta-training); Brax 0.9.4's make_ppo_networks defaults.
    Brax's PPO rolls out batch_size * num_minibatches / num_envs unrolls of rollout_steps per env per update."""
    for name, envs, unroll, batch, minibatches, epochs, entropy, scale in (
            ("ant_optim4rl", 4096, 5, 2048, 32, 4, 1e-2, 10.0),
            ("humanoid_optim4rl", 2048, 10, 1024, 32, 8, 1e-3, 0.1),
            ("ant_optim4rl_meta", 2048, 5, 1024, 8, 4, 1e-2, 10.0),
            ("humanoid_optim4rl_meta", 2048, 5, 1024, 8, 4, 1e-3, 0.1)):
        c = ppo.preset(name)
        assert (c.num_envs, c.unroll_length, c.num_steps, c.num_minibatches, c.update_epochs, c.ent_coef,
                c.reward_scale) == (envs, unroll, batch * minibatches // envs * unroll, minibatches, epochs, entropy,
                                    scale), name
        assert (c.brax_backend, c.policy_head, c.normalize_obs, c.normalize_reward, c.gamma, c.gae_lambda,
                c.clip_eps, c.clip_value_loss, c.vf_coef, c.total_timesteps, c.eval_episodes) == (
            "spring", "tanh_gaussian", True, False, 0.97, 0.95, 0.3, False, 0.5, 100_000_000, 128), name
        assert (c.width, c.depth, c.critic_width, c.critic_depth, c.activation, c.kernel_init) == (
            32, 4, 64 if name.endswith("_meta") else 256, 5, "swish", "lecun_uniform"), name
        assert (c.grad_clip_mode, c.max_grad_norm, c.learning_rate, c.anneal_lr) == (
            "elementwise", 1.0, 3e-4, False)
        assert (c.minibatch_gae, c.time_limit, c.normalize_per_rollout) == (True, "exclude", True)  # brax's PPO
    for env in ("ant", "humanoid"):  # optim4rl_metagrad.py meta-trains with the _meta presets, evaluates with the rest
        config = replace(om.Optim4RLConfig(), **om.PRESETS[env])
        unit, evaluation = om.unit_agent_config(config), om.eval_agent_config(config)
        assert (unit.num_envs, unit.num_steps, unit.num_minibatches, unit.critic_width) == (128, 20, 8, 64)
        assert (evaluation.num_minibatches, evaluation.critic_width, evaluation.total_timesteps) == (
            32, 256, 100_000_000)


@pytest.mark.parametrize("field, value", [("policy_head", "beta"), ("kernel_init", "he"),
                                          ("grad_clip_mode", "norm"), ("activation", "gelu")])
def test_bad_choices_are_refused_with_the_value_and_the_valid_choices(field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; valid: {', '.join(ppo.CHOICES[field])}"):
        ppo.validate(replace(ppo.PPOConfig(), **{field: value}))
    with pytest.raises(ValueError, match="unroll_length = 3 must be 0 or divide num_steps = 128"):
        ppo.validate(replace(ppo.PPOConfig(), unroll_length=3))
    with pytest.raises(ValueError, match=r"minibatch_gae needs unroll_length > 0 \(got 0\)"):
        ppo.validate(replace(ppo.PPOConfig(), minibatch_gae=True))
    with pytest.raises(ValueError, match="unroll_length = 48, to divide into num_minibatches = 128"):
        ppo.validate(replace(ppo.PPOConfig(), minibatch_gae=True, unroll_length=8, num_minibatches=128, num_envs=3))


def test_brax_presets_build_at_full_size():
    """The networks of each preset, traced (not compiled) on Ant's 27 observations and 8 actions."""
    shapes = {}
    for name in ("ant", "ant_optim4rl", "ant_optim4rl_meta"):
        agent = ppo.make_agent(ppo.preset(name))
        params, _, obs = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
        shapes[name] = {net: {k: v["kernel"].shape if isinstance(v, dict) else v.shape
                              for k, v in params[net]["params"].items()} for net in params}
        assert obs.shape == (ppo.preset(name).num_envs, 27)
    assert shapes["ant"]["actor"] == {"hidden_0": (27, 64), "hidden_1": (64, 64), "output": (64, 8), "log_std": (8,)}
    assert shapes["ant"]["critic"] == {"hidden_0": (27, 64), "hidden_1": (64, 64), "output": (64, 1)}
    assert shapes["ant_optim4rl"]["actor"] == {"hidden_0": (27, 32), **{f"hidden_{i}": (32, 32) for i in (1, 2, 3)},
                                               "output": (32, 16)}  # loc and softplus scale of 8 actions
    assert shapes["ant_optim4rl"]["critic"] == {"hidden_0": (27, 256), **{f"hidden_{i}": (256, 256) for i in
                                                                          (1, 2, 3, 4)}, "output": (256, 1)}
    assert shapes["ant_optim4rl_meta"]["critic"]["hidden_4"] == (64, 64)


# ----------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["ant", "ant_optim4rl"])
def test_brax_presets_train_a_few_updates(name):
    """Each paper's Brax PPO (backend, normalisation, policy head, advantages, clipping) shrunk to 8 envs x 10 steps,
    3 updates, two seeds vmapped in one program, on inverted_pendulum, the cheapest Brax env to compile (Ant's physics
    alone takes about a minute to compile on a laptop CPU). Nothing is learned in 3 updates: this checks that every
    piece runs, stays finite and changes the policy."""
    config = ppo.preset(name, env_name="inverted_pendulum", num_envs=8, num_steps=10, total_timesteps=240,
                    num_minibatches=2, update_epochs=2, eval_episodes=4, eval_max_steps=50, log_every=0)
    train = jax.jit(jax.vmap(ppo.make_train(config, ppo.hand_designed("adam")), in_axes=(0, None)))
    out = train(jax.random.split(jax.random.PRNGKey(0), 2), ppo.hyperparameters(config))
    assert out["metrics"]["loss"].shape == (2, 3)
    assert np.isfinite(out["metrics"]["loss"]).all() and np.isfinite(out["final_return"]).all()
    assert (out["final_return"] > 0).all()  # inverted_pendulum pays 1 a step while upright
    assert (np.abs(out["params"]["actor"]["params"]["output"]["bias"]) > 0).all()  # initially 0


# ----------------------------------------------------------------------------------------------- normalisation
def numpy_welford(values):
    """Per-sample Welford over the rows of `values` (float64): (mean, population variance, count)."""
    mean, m2 = np.zeros(values.shape[1:]), np.zeros(values.shape[1:])
    for n, x in enumerate(values, 1):
        delta = x - mean
        mean = mean + delta / n
        m2 = m2 + delta * (x - mean)
    return mean, m2 / len(values), len(values)


def test_running_stats_equal_numpy_welford():
    """Batches of unequal sizes merged by RunningStats equal per-sample Welford over the same stream. RunningStats
    starts from a prior of weight 1e-4 (mean 0, variance 1, as OPEN's wrappers), which moves these values by about
    1e-4 / 150 of their size: rtol 1e-5 leaves room for that and float32, far below any merging error."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 30, 2, 64, 50)]
    stats = RunningStats(jnp.zeros(4), jnp.ones(4), jnp.float32(1e-4))
    for batch in batches:
        stats = stats.update(jnp.asarray(batch, jnp.float32))
    mean, var, count = numpy_welford(np.concatenate(batches))
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(stats.var, var, rtol=1e-5)
    np.testing.assert_allclose(stats.count, count + 1e-4, rtol=1e-7)


def test_normalized_envs_match_numpy_on_the_same_stream():
    """NormalizedEnvs (observations and rewards) on 4 Pendulum envs with 6-step episodes, against the raw stream of
    the same envs (same keys and actions) normalised in numpy: each observation by the Welford statistics of all
    observations up to and including it; each reward by the standard deviation of all discounted returns so far,
    R_t = gamma (1 - done_t) R_{t-1} + r_t (OPEN's NormalizeReward)."""
    gym_env, env_params = gymnax.make("Pendulum-v1")
    env_params, env, gamma, steps = env_params.replace(max_steps_in_episode=6), LogWrapper(gym_env), 0.9, 15
    actions = jax.random.uniform(jax.random.PRNGKey(1), (steps, 4, 1), minval=-2, maxval=2)

    def run(envs):
        obs, state = envs.reset(jax.random.PRNGKey(0), env_params)

        def step(state, inputs):
            key, action = inputs
            obs, state, reward, terminated, truncated, _ = envs.step(key, state, action, env_params)
            return state, (obs, reward, terminated | truncated)
        state, stream = jax.lax.scan(step, state, (jax.random.split(jax.random.PRNGKey(2), steps), actions))
        return obs, stream, state

    raw_first, (raw_obs, raw_rewards, dones), _ = jax.jit(lambda: run(NormalizedEnvs(env, 4)))()
    first, (obs, rewards, _), state = jax.jit(lambda: run(NormalizedEnvs(env, 4, True, gamma)))()
    raw_obs, obs = np.concatenate([raw_first[None], raw_obs]).astype(np.float64), np.concatenate([first[None], obs])
    raw_rewards, dones = np.asarray(raw_rewards, np.float64), np.asarray(dones)
    assert dones.any()  # the stream crosses episode ends
    for t in range(steps + 1):
        mean, var, _ = numpy_welford(raw_obs[:t + 1].reshape(-1, 3))
        np.testing.assert_allclose(obs[t], (raw_obs[t] - mean) / np.sqrt(var + 1e-8), rtol=1e-3, atol=1e-4)
    returns = [np.zeros(4)]
    for t in range(steps):
        returns.append(gamma * (1 - dones[t]) * returns[-1] + raw_rewards[t])
        _, return_var, _ = numpy_welford(np.concatenate(returns[1:]))
        np.testing.assert_allclose(rewards[t], raw_rewards[t] / np.sqrt(return_var + 1e-8), rtol=1e-4)
    np.testing.assert_allclose(state.obs_stats.count, 4 * (steps + 1) + 1e-4, rtol=1e-7)
    np.testing.assert_allclose(NormalizedEnvs(env, 4, True).observe(state, raw_first), (raw_obs[0] - mean) / np.sqrt(
        var + 1e-8), rtol=1e-3, atol=1e-4)  # observe: the final statistics, frozen (the final-policy evaluation)


def test_per_rollout_statistics_are_braxs_running_statistics():
    """NormalizedEnvs with per_rollout (normalize_per_rollout, Brax's PPO): reset and step return raw observations
    and leave the statistics alone; the rollouts' observations merged after each rollout normalise as
    brax.training.acme.running_statistics (the pinned brax: init_state, update, normalize) does on the same stream.
    Brax divides by max(std, 1e-6) from count 0, this repo by sqrt(var + 1e-8) from a prior of weight 1e-4: rtol
    1e-3 leaves room for those, far below a missed or doubled merge."""
    from brax.training.acme import running_statistics, specs

    gym_env, env_params = gymnax.make("Pendulum-v1")
    env_params, env = env_params.replace(max_steps_in_episode=6), LogWrapper(gym_env)
    actions = jax.random.uniform(jax.random.PRNGKey(1), (3, 5, 4, 1), minval=-2, maxval=2)  # 3 rollouts of 5 steps

    def run(envs):
        obs, state = envs.reset(jax.random.PRNGKey(0), env_params)

        def rollout(carry, inputs):
            def step(carry, inputs):
                obs, state = carry
                key, action = inputs
                next_obs, state, *_ = envs.step(key, state, action, env_params)
                return (next_obs, state), obs
            (obs, state), seen = jax.lax.scan(step, carry, inputs)
            before = state.obs_stats
            state = envs.merge(state, seen)
            return (obs, state), (seen, before, state.obs_stats)
        keys = jax.random.split(jax.random.PRNGKey(2), 15).reshape(3, 5, 2)
        return jax.lax.scan(rollout, (obs, state), (keys, actions))[1]

    raw, _, _ = jax.jit(lambda: run(NormalizedEnvs(env, 4)))()
    envs = NormalizedEnvs(env, 4, True, per_rollout=True)
    seen, before, after = jax.jit(lambda: run(envs))()
    np.testing.assert_allclose(seen, raw, rtol=1e-6)  # raw observations from reset and step
    np.testing.assert_allclose(before.count, [1e-4, 1e-4 + 20, 1e-4 + 40], rtol=1e-6)  # untouched in a rollout
    brax_state = running_statistics.init_state(specs.Array((3,), jnp.float32))
    for k in range(3):
        brax_state = running_statistics.update(brax_state, raw[k])
        stats = jax.tree.map(lambda x, k=k: x[k], after)
        probe = raw[(k + 1) % 3]
        np.testing.assert_allclose(envs.observe(envs.State(None, stats, None, None), probe),
                                   running_statistics.normalize(probe, brax_state), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------- policy heads
def test_action_clipping_and_log_probs_match_hand_computation():
    """OPEN's Gaussian: the env gets the sample clipped to the action space, the log-prob is of the unclipped sample,
    and log_std is a parameter, not a function of the state. Brax's tanh-squashed Gaussian: the env gets tanh(u), and
    log_prob(u) = log N(u; loc, scale) - sum log(1 - tanh(u)^2), scale = softplus(s) + 0.001; its entropy estimate is
    H[N] + sum log(1 - tanh(loc + scale noise)^2). All in float64 numpy; u = 8 is where tanh is within 1e-6 of 1."""
    u = np.array([[-2.5, 0.3, 0.99, 8.0], [1.5, -1.0, 0.0, -0.2]])
    u32 = u.astype(np.float32)
    np.testing.assert_array_equal(HEADS["gaussian"].env_action(jnp.asarray(u32), -1.0, 1.0), np.clip(u32, -1, 1))
    np.testing.assert_array_equal(HEADS["gaussian"].env_action(jnp.asarray(u32), -0.5, 2.0), np.clip(u32, -0.5, 2.0))
    np.testing.assert_allclose(HEADS["tanh_gaussian"].env_action(jnp.asarray(u32), -1.0, 1.0), np.tanh(u), rtol=1e-6)
    np.testing.assert_array_equal(HEADS["categorical"].env_action(jnp.arange(3), -1.0, 1.0), np.arange(3))

    loc, s = np.array([[0.1, -0.4, 0.8, 1.5], [0.0, 0.2, -0.3, 0.5]]), np.array([[-0.5, 0.2, 1.0, -1.2]] * 2)
    normal = -0.5 * ((u - loc) / np.exp(s)) ** 2 - s - 0.5 * np.log(2 * np.pi)
    gaussian = HEADS["gaussian"].policy(jnp.asarray(np.concatenate([loc, s], -1), jnp.float32))
    np.testing.assert_allclose(gaussian.log_prob(jnp.asarray(u, jnp.float32)), normal.sum(-1), rtol=1e-5)

    s = np.array([[-0.5, 0.2, 1.0, -1.2], [2.0, -3.0, 0.0, 0.7]])
    scale = np.log1p(np.exp(s)) + 1e-3
    squashed = (-0.5 * ((u - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)
                - np.log(1 - np.tanh(u) ** 2)).sum(-1)
    pi = HEADS["tanh_gaussian"].policy(jnp.asarray(np.concatenate([loc, s], -1), jnp.float32))
    np.testing.assert_allclose(pi.log_prob(jnp.asarray(u, jnp.float32)), squashed, rtol=1e-5)
    noise = np.random.default_rng(0).normal(size=u.shape)
    entropy = (0.5 + 0.5 * np.log(2 * np.pi) + np.log(scale) + np.log(1 - np.tanh(loc + scale * noise) ** 2)).sum(-1)
    np.testing.assert_allclose(pi.entropy_estimate(jnp.asarray(noise, jnp.float32)), entropy, rtol=1e-5)

    actor = ppo.MLP(width=8, depth=2, out=4, activation="tanh", out_scale=0.01, log_std=True)
    params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    params["params"]["log_std"] = jnp.asarray([-0.5, 0.2, 1.0, -1.2])
    out = actor.apply(params, jax.random.normal(jax.random.PRNGKey(1), (5, 3)))[0]
    np.testing.assert_array_equal(out[:, 4:], np.tile([-0.5, 0.2, 1.0, -1.2], (5, 1)).astype(np.float32))


def test_tanh_gaussian_equals_braxs_own_distribution():
    """The same numbers from brax.training.distribution.NormalTanhDistribution (the pinned brax), its entropy with
    the same noise (Brax draws it from the key it is given)."""
    from brax.training.distribution import NormalTanhDistribution

    params = jax.random.normal(jax.random.PRNGKey(0), (6, 8))
    u = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    brax_dist, pi = NormalTanhDistribution(event_size=4), HEADS["tanh_gaussian"].policy(params)
    np.testing.assert_allclose(pi.log_prob(u), brax_dist.log_prob(params, u), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pi.entropy_estimate(jax.random.normal(jax.random.PRNGKey(2), (6, 4))),
                               brax_dist.entropy(params, jax.random.PRNGKey(2)), rtol=1e-5, atol=1e-5)


def test_unroll_advantages_equal_braxs_compute_gae():
    """gae with unroll_length n cuts a 15-step rollout into 5-step unrolls: each is what Brax's PPO computes
    (brax.training.agents.ppo.losses.compute_gae, the pinned brax) on that unroll, bootstrapped from the value after
    it, with dones as terminations."""
    from brax.training.agents.ppo.losses import compute_gae

    rng = np.random.default_rng(0)
    steps, envs, gamma, lam = 15, 3, 0.97, 0.95
    rewards, values = rng.normal(size=(steps, envs)), rng.normal(size=(steps, envs))
    dones = np.zeros((steps, envs))
    dones[[2, 4, 9, 13], [0, 1, 2, 0]] = 1.0
    last_value = rng.normal(size=envs)
    advantages, targets = ppo.gae(*map(jnp.asarray, (rewards, values, dones, last_value)), gamma, lam, 5)
    next_values = np.concatenate([values[1:], last_value[None]])
    for start in range(0, steps, 5):
        piece = slice(start, start + 5)
        vs, brax_advantages = compute_gae(jnp.zeros((5, envs)), jnp.asarray(dones[piece]), jnp.asarray(rewards[piece]),
                                          jnp.asarray(values[piece]), jnp.asarray(next_values[start + 4]), lam, gamma)
        np.testing.assert_allclose(targets[piece], vs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(advantages[piece], brax_advantages, rtol=1e-5, atol=1e-5)


def test_minibatch_gae_is_braxs_ppo_loss_on_whole_unrolls():
    """minibatch_gae and time_limit "exclude" (the Brax presets): the rollout's unrolls are each env's consecutive
    steps with the observation after them, the same steps a flat rollout gives; and the loss of a minibatch of them,
    after the parameters have moved, equals brax.training.agents.ppo.losses.compute_ppo_loss (the pinned brax) on
    the same data and networks: GAE recomputed with the current critic, a truncated step masked out. On
    inverted_pendulum cut at 12 steps, so that the unrolls hold both terminations and truncations."""
    from types import SimpleNamespace

    from brax.training import types
    from brax.training.agents.ppo.losses import PPONetworkParams, compute_ppo_loss
    from brax.training.distribution import NormalTanhDistribution

    steps, envs, n = 40, 4, 5
    config = ppo.preset("ant_optim4rl", env_name="inverted_pendulum", num_envs=envs, num_steps=steps, unroll_length=n,
                    num_minibatches=2, episode_length=12, ent_coef=0.0)
    agent = ppo.make_agent(config)
    params, env_state, obs = agent.init(jax.random.PRNGKey(0))
    batch, merged, last_obs = jax.jit(agent.rollout)(params, env_state, obs, jax.random.PRNGKey(1))
    flat, _, _ = jax.jit(ppo.make_agent(replace(config, minibatch_gae=False)).rollout)(
        params, env_state, obs, jax.random.PRNGKey(1))
    flat_obs = np.concatenate([np.asarray(flat["obs"]).reshape(steps, envs, -1),
                               np.asarray(agent.envs.seen(merged, last_obs))[None]])  # last_obs: raw, as envs gave it
    for k in range(steps // n):
        for e in range(envs):
            np.testing.assert_allclose(batch["obs"][k * envs + e], flat_obs[k * n:(k + 1) * n, e], rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(batch["bootstrap_obs"][k * envs + e], flat_obs[(k + 1) * n, e], rtol=1e-5,
                                       atol=1e-6)
    terminated = np.asarray(batch["done"] - batch["truncated"])
    assert batch["truncated"].any() and terminated.any()

    moved = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    mb = batch  # a minibatch of all 32 unrolls
    ours, _ = agent.loss(moved, mb)

    def network(name):  # brax's apply(normalizer_params, params, obs) on [..., obs]
        module = agent.networks[name]
        return SimpleNamespace(apply=lambda _, p, o: module.apply(p, o.reshape(-1, o.shape[-1]))[0].reshape(
            o.shape[:-1] + (-1,))[..., slice(None) if name == "actor" else 0])
    brax_ppo = SimpleNamespace(policy_network=network("actor"), value_network=network("critic"),
                               parametric_action_distribution=NormalTanhDistribution(event_size=1))
    old_logits = agent.networks["actor"].apply(params["actor"], mb["obs"].reshape(-1, mb["obs"].shape[-1]))[0]
    data = types.Transition(
        observation=mb["obs"], action=jnp.tanh(mb["action"]), reward=mb["reward"],
        discount=1.0 - jnp.asarray(terminated),
        next_observation=jnp.concatenate([mb["obs"][:, 1:], mb["bootstrap_obs"][:, None]], 1),
        extras={"state_extras": {"truncation": mb["truncated"]},
                "policy_extras": {"raw_action": mb["action"], "log_prob": mb["log_prob"],
                                  "distribution_params": old_logits.reshape(32, n, -1)}})
    theirs, _ = compute_ppo_loss(PPONetworkParams(policy=moved["actor"], value=moved["critic"]), None, data,
                                 jax.random.PRNGKey(3), brax_ppo, entropy_cost=0.0, discounting=config.gamma,
                                 reward_scaling=1.0, gae_lambda=config.gae_lambda, clipping_epsilon=config.clip_eps,
                                 normalize_advantage=True, vf_coefficient=config.vf_coef)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_open_context_counts_log_std_as_the_actors_last_layer():
    """OPEN's inputs for its continuous actor (rl_optimizer/train.py): layer proportions i / 3 over Dense_0, Dense_1,
    Dense_2 and log_std; log_std's "activation" is mean(exp(log_std)), one value, so its dormancy is 1; it is actor."""
    actor = ppo.MLP(width=8, depth=2, out=4, activation="tanh", out_scale=0.01, log_std=True)
    params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    _, activations = actor.apply(params, jax.random.normal(jax.random.PRNGKey(1), (5, 3)))
    context = ppo.network_context(params, activations, actor.layer_proportions, params["params"])
    layers = {name: np.unique(np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)]))
              for name, tree in context["layer_proportion"]["params"].items()}
    assert all(len(values) == 1 for values in layers.values())  # one value over each layer's parameters
    assert {name: float(values[0]) for name, values in layers.items()} == pytest.approx(
        {"hidden_0": 0.0, "hidden_1": 1 / 3, "output": 2 / 3, "log_std": 1.0})
    np.testing.assert_allclose(context["dormancy"]["params"]["log_std"], np.ones(4), rtol=1e-6)
    np.testing.assert_array_equal(context["actor_mask"]["params"]["log_std"], np.ones(4))
