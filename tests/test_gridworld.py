"""Tests of gridworld.py: the papers' tables, and every transition of random rollouts re-computed with numpy."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.wrappers import FlattenObservationWrapper, LogWrapper

import gridworld
from gridworld import LEVELS, REWARD_SCALES, make, sample_level

MAZES_TXT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mazes.txt"
NUM_ENVS, NUM_STEPS = 16, 200

# Optim4RL Table 2: (H, W), objects [reward, p_terminate, p_respawn], horizon; Table 3: reward scales.
POS_D, NEG_D, POS_S, NEG_S = [1.0, 0.0, 0.5], [-1.0, 0.5, 0.5], [1.0, 0.0, 0.05], [-1.0, 0.5, 0.05]
TABLE_2 = {
    "small_dense_short": ((4, 6), [POS_D, NEG_D], 50),
    "small_dense_long": ((6, 4), [POS_D, NEG_D], 500),
    "big_sparse_short": ((10, 12), [POS_S, POS_S, NEG_S, NEG_S], 50),
    "big_sparse_long": ((12, 10), [POS_S, POS_S, NEG_S, NEG_S], 500),
    "big_dense_short": ((9, 13), [POS_D, POS_D, NEG_D, NEG_D], 50),
    "big_dense_long": ((13, 9), [POS_D, POS_D, NEG_D, NEG_D], 500),
}
TABLE_3 = {"small_dense_long": 1000, "small_dense_short": 100, "big_sparse_short": 100, "big_dense_short": 10,
           "big_sparse_long": 10, "big_dense_long": 1}
# OPEN Table 9: (side, rewards, p_terminate, p_respawn, horizon), per object.
TABLE_9 = {
    "rand_dense": (11, [1, 1, -1, -1], [0, 0, 0.5, 0], [0.05, 0.05, 0.1, 0.5], 500),
    "rand_sparse": (13, [-1, 1], [1, 1], [0, 0], 50),
    "rand_long": (11, [1, 1, -1, -1], [0, 0, 0.5, 0.5], [0.01, 0.01, 1, 1], 1000),
}


def rollout(env, params, key, num_envs=NUM_ENVS, num_steps=NUM_STEPS):
    """Random actions in vmapped envs; `params` shared, or stacked per env. Returns (steps, envs, ...) arrays."""
    return jax.tree.map(np.asarray, _rollout(env, params, key, num_envs, num_steps))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _rollout(env, params, key, num_envs, num_steps):
    axis = None if params.max_steps_in_episode.ndim == 0 else 0
    key_reset, key_run = jax.random.split(key)
    _, state = jax.vmap(env.reset, (0, axis))(jax.random.split(key_reset, num_envs), params)

    def body(state, key):
        key_action, key_step = jax.random.split(key)
        action = jax.random.randint(key_action, (num_envs,), 0, env.num_actions)
        obs, next_state, reward, terminated, truncated, info = jax.vmap(env.step, (0, 0, 0, axis))(
            jax.random.split(key_step, num_envs), state, action, params)
        return next_state, dict(prev=state, action=action, obs=obs, state=next_state, reward=reward,
                                terminated=terminated, truncated=truncated, final_obs=info["final_observation"])

    return jax.lax.scan(body, state, jax.random.split(key_run, num_steps))[1]


@functools.partial(jax.jit, static_argnums=(0, 2))
def sample_levels(env, key, num_levels=NUM_ENVS):
    return jax.vmap(lambda key: sample_level(key, env))(jax.random.split(key, num_levels))


def per_env(params, num_envs):
    """Level parameters as numpy arrays with a leading env axis."""
    batched = np.ndim(params.max_steps_in_episode) > 0
    return jax.tree.map(lambda x: np.asarray(x) if batched else np.broadcast_to(x, (num_envs, *np.shape(x))), params)


def expected_obs(env, state):
    """Observation built independently from a (batch of) state(s)."""
    cells = env.shape[0] * env.shape[1]
    agent = state.agent[..., None] == np.arange(cells)
    objects = (state.obj_pos[..., None] == np.arange(cells)) & state.obj_present[..., None]
    if env.observation == "binary":
        return np.concatenate([objects, agent[..., None, :]], -2).reshape(*agent.shape[:-1], -1, *env.shape)
    types = np.eye(env.num_types, dtype=bool)[env.obj_type]
    maps = np.einsum("...kc,kt->...tc", objects, types).reshape(*agent.shape[:-1], -1)
    return np.concatenate([agent, maps, 0.001 * state.time[..., None]], -1)


def assert_frequency(events, probs, mask):
    """Per object slot: count of events within 4 standard deviations of the sum of their probabilities."""
    for k in range(events.shape[-1]):
        x, p = events[..., k][mask[..., k]], probs[..., k][mask[..., k]].astype(np.float64)
        assert abs(x.sum() - p.sum()) <= 4 * np.sqrt((p * (1 - p)).sum()) + 1e-6, (k, x.sum(), p.sum(), x.size)


def check_rollout(env, params, tr):
    """Re-compute every transition of a rollout with numpy; return the collection and respawn events."""
    (steps, n), (height, width), k = tr["action"].shape, env.shape, env.max_objects
    p = per_env(params, n)
    rows, cols = np.indices(env.shape)
    outside = (rows >= p.height[:, None, None]) | (cols >= p.width[:, None, None])
    blocked = (p.walls | outside).reshape(n, -1)
    env_idx = np.arange(n)
    prev, nxt, done = tr["prev"], tr["state"], tr["terminated"] | tr["truncated"]
    # Every state: agent inside the grid and off walls; present objects on distinct free cells, never on the agent.
    for s in (prev, nxt):
        assert (s.agent // width < p.height).all() and (s.agent % width < p.width).all()
        assert not blocked[env_idx, s.agent].any()
        pos = np.where(s.obj_present, s.obj_pos, -1 - np.arange(k))
        assert not (s.obj_present & blocked[env_idx[:, None], s.obj_pos]).any()
        assert not (s.obj_present & (s.obj_pos == s.agent[..., None])).any()
        assert (np.sort(pos, -1)[..., 1:] != np.sort(pos, -1)[..., :-1]).all()
        assert not (s.obj_present & (np.arange(k) >= p.num_objects[:, None])).any()
    # Moves: clipped to the grid, walls block.
    move = env.moves[tr["action"]]
    row = np.clip(prev.agent // width + move[..., 0], 0, height - 1)
    col = np.clip(prev.agent % width + move[..., 1], 0, width - 1)
    agent = np.where(blocked[env_idx, row * width + col], prev.agent, row * width + col)
    assert (nxt.agent == agent)[~done].all()
    # Collection pays reward x scale; termination only through a collection; the horizon truncates.
    collected = prev.obj_present & (prev.obj_pos == agent[..., None])
    np.testing.assert_allclose(tr["reward"], p.reward_scale * (collected * p.obj_reward).sum(-1), rtol=1e-6)
    assert not (tr["terminated"] & ~collected.any(-1)).any()
    assert (tr["truncated"] == (prev.time + 1 >= p.max_steps_in_episode)).all()
    assert (nxt.time == np.where(done, 0, prev.time + 1)).all()
    # Objects: collected ones vanish, the others stay put.
    alive = ~done[..., None]
    stay = prev.obj_present & ~collected & alive
    assert not (nxt.obj_present & collected & alive).any()
    assert nxt.obj_present[stay].all() and (nxt.obj_pos == prev.obj_pos)[stay].all()
    # Observations: exactly one agent cell; everything equals the independent rendering.
    agent_maps = tr["obs"][..., -1, :, :] if env.observation == "binary" else tr["obs"][..., : height * width]
    assert (agent_maps.reshape(steps, n, -1).sum(-1) == 1).all()
    np.testing.assert_allclose(tr["obs"], expected_obs(env, nxt), atol=1e-6)
    np.testing.assert_array_equal(tr["final_obs"][~done], tr["obs"][~done])
    # Frequencies: termination given a collection, respawn of an absent object.
    assert_frequency(tr["terminated"][..., None] & collected, np.broadcast_to(p.obj_p_terminate, collected.shape),
                     collected)
    candidates = ~prev.obj_present & (np.arange(k) < p.num_objects[:, None]) & alive
    assert_frequency(nxt.obj_present, np.broadcast_to(p.obj_p_respawn, candidates.shape), candidates)
    return collected, candidates


def test_unknown_level_is_refused_with_the_valid_names():
    with pytest.raises(ValueError) as error:
        make("big_dense_longer")
    assert "big_dense_longer" in str(error.value) and all(name in str(error.value) for name in LEVELS)
    with pytest.raises(ValueError):
        make("all", observation="pixels")


def test_level_names():
    assert LEVELS == ("small_dense_short", "small_dense_long", "big_sparse_short", "big_sparse_long",
                      "big_dense_short", "big_dense_long", "all", "rand_dense", "rand_sparse", "rand_long",
                      "standard_maze", "sixteen_rooms", "labyrinth")


@pytest.mark.parametrize("name", TABLE_2)
def test_optim4rl_levels_follow_table_2(name):
    (height, width), objects, horizon = TABLE_2[name]
    env, params = make(name)
    assert env.num_actions == 9 and env.action_space(params).n == 9
    assert {tuple(m) for m in env.moves} == {(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    assert env.observation_space(params).shape == (len(objects) + 1, height, width)
    assert (int(params.height), int(params.width), int(params.max_steps_in_episode)) == (height, width, horizon)
    assert not params.walls.any() and int(params.num_objects) == len(objects)
    np.testing.assert_allclose(np.stack([params.obj_reward, params.obj_p_terminate, params.obj_p_respawn], 1),
                               objects)
    assert float(params.reward_scale) == 1.0 and REWARD_SCALES[name] == TABLE_3[name]
    assert float(make(name, reward_scale=REWARD_SCALES[name])[1].reward_scale) == TABLE_3[name]


@pytest.mark.parametrize("name", TABLE_9)
def test_out_of_support_levels_follow_table_9(name):
    side, reward, p_terminate, p_respawn, horizon = TABLE_9[name]
    env, params = make(name)
    assert [tuple(m) for m in env.moves] == [(-1, 0), (1, 0), (0, -1), (0, 1), (0, 0)]  # up down left right stay
    assert env.observation_space(params).shape == ((env.num_types + 1) * side * side + 1,)
    assert (int(params.height), int(params.width), int(params.max_steps_in_episode)) == (side, side, horizon)
    assert not params.walls.any() and int(params.num_objects) == len(reward)
    for got, want in [(params.obj_reward, reward), (params.obj_p_terminate, p_terminate),
                      (params.obj_p_respawn, p_respawn)]:
        np.testing.assert_allclose(got, want)


def read_mazes():
    if not MAZES_TXT.exists():
        pytest.skip(f"{MAZES_TXT} not found")
    mazes, name = {}, None
    for line in MAZES_TXT.read_text().splitlines():
        if line.startswith("["):
            name = line.strip("[]")
            mazes[name] = []
        elif name and line.strip():
            mazes[name].append([c == "#" for c in line.strip()])
    return {name: np.array(rows) for name, rows in mazes.items()}


def test_maze_walls_equal_the_shared_layouts_and_table_10():
    mazes = read_mazes()
    assert set(mazes) == {"standard_maze", "sixteen_rooms", "labyrinth"}
    for name, walls in mazes.items():
        env, _ = make(name)
        levels = sample_levels(env, jax.random.PRNGKey(1))
        assert walls.shape == (13, 13) and (np.asarray(levels.walls) == walls).all()
        assert (levels.height == 13).all() and (levels.width == 13).all() and (levels.num_objects == 3).all()
        assert (levels.max_steps_in_episode >= 25).all() and (levels.max_steps_in_episode <= 50).all()
        assert (levels.obj_reward >= 0).all() and (levels.obj_reward <= 1).all()
        assert (levels.obj_p_terminate >= 0.01).all() and (levels.obj_p_terminate <= 1).all()
        assert (levels.obj_p_respawn >= 0.001).all() and (levels.obj_p_respawn <= 0.1).all()


def test_all_sampler_respects_table_8():
    env, _ = make("all")
    levels = jax.tree.map(np.asarray, sample_levels(env, jax.random.PRNGKey(2), 4096))
    horizon, n = levels.max_steps_in_episode, len(levels.max_steps_in_episode)
    assert horizon.min() >= 20 and horizon.max() <= 750
    assert set(levels.num_objects) == {1, 2, 3, 4, 5}
    assert set(levels.height) == set(range(4, 11)) and (levels.height == levels.width).all()
    assert (levels.walls.reshape(n, -1).sum(1) == 15).all()
    reward, p_terminate, p_respawn = levels.obj_reward, levels.obj_p_terminate, levels.obj_p_respawn
    assert reward.shape == (n, 5) and (np.abs(reward) <= 1).all() and (reward[:, 0] >= 0).all()
    assert (reward[:, 1:] < 0).any() and (p_terminate >= 0.01).all() and (p_terminate <= 1).all()
    assert (p_respawn >= 0.001).all() and (p_respawn <= 0.1).all()
    # Log-uniform: half the mass below the geometric midpoint, within 4 standard deviations.
    for x, low, high in [(horizon, 20, 750), (p_terminate, 0.01, 1), (p_respawn, 0.001, 0.1)]:
        below = (x < np.sqrt(low * high)).mean()
        assert abs(below - 0.5) < 4 * 0.5 / np.sqrt(x.size), below


@pytest.mark.parametrize("name", LEVELS)
def test_every_level_steps_under_jit_and_vmap(name):
    env, params = make(name)
    if name in gridworld.DISTRIBUTIONS:  # a different sampled level in every env
        params = sample_levels(env, jax.random.PRNGKey(3))
    tr = rollout(env, params, jax.random.PRNGKey(4))
    assert tr["obs"].shape == (NUM_STEPS, NUM_ENVS, *env.observation_space(params).shape)
    assert tr["obs"].dtype == np.float32
    check_rollout(env, params, tr)


@pytest.mark.parametrize("name, options", [("big_dense_short", dict(actions="open", observation="flat")),
                                           ("all", dict(actions="optim4rl", observation="binary"))])
def test_other_action_set_and_observation(name, options):
    env, params = make(name, **options)
    assert env.num_actions == {"open": 5, "optim4rl": 9}[options["actions"]]
    check_rollout(env, params, rollout(env, params, jax.random.PRNGKey(5)))


def test_termination_and_respawn_frequencies_match_probabilities():
    env, params = make("small_dense_short")
    params = params.replace(max_steps_in_episode=jnp.int32(10_000), obj_p_terminate=jnp.array([0.25, 0.75]),
                            obj_p_respawn=jnp.array([0.1, 0.6]))
    runs = [rollout(env, params, key) for key in jax.random.split(jax.random.PRNGKey(6), 8)]  # reuses one compile
    tr = jax.tree.map(lambda *x: np.concatenate(x, 1), *runs)
    collected, candidates = check_rollout(env, params, tr)
    assert (collected.sum((0, 1)) > 400).all() and (candidates.sum((0, 1)) > 200).all()  # enough events


def test_reward_scale_multiplies_rewards():
    env, params = make("small_dense_short")
    key = jax.random.PRNGKey(7)
    base = rollout(env, params, key)
    scaled = rollout(env, params.replace(reward_scale=jnp.float32(REWARD_SCALES["small_dense_long"])), key)
    assert (base["reward"] != 0).sum() > 20
    np.testing.assert_allclose(scaled["reward"], 1000 * base["reward"])
    np.testing.assert_array_equal(scaled["state"].agent, base["state"].agent)


def test_truncation_at_the_horizon():
    env, params = make("small_dense_short")
    params = params.replace(max_steps_in_episode=jnp.int32(7), obj_p_terminate=jnp.zeros(2))
    tr = rollout(env, params, jax.random.PRNGKey(8))
    assert not tr["terminated"].any()
    assert (tr["truncated"] == ((np.arange(NUM_STEPS) + 1) % 7 == 0)[:, None]).all()
    assert (tr["state"].time[6::7] == 0).all() and (tr["state"].time[5::7] == 6).all()


def test_reset_positions_are_uniform_over_free_cells():
    env, params = make("standard_maze")
    keys = jax.random.split(jax.random.PRNGKey(9), 20_000)
    _, state = jax.jit(jax.vmap(env.reset, (0, None)))(keys, params)
    free = np.flatnonzero(~np.asarray(params.walls).ravel())
    for cells in (np.asarray(state.agent), np.asarray(state.obj_pos[:, 2])):
        counts = np.bincount(cells, minlength=169)
        assert counts.sum() == counts[free].sum()
        chi2, dof = ((counts[free] - counts[free].mean()) ** 2 / counts[free].mean()).sum(), free.size - 1
        assert chi2 < dof + 4 * np.sqrt(2 * dof), chi2


def test_gymnax_wrappers():
    env, params = make("big_sparse_long")
    env = LogWrapper(FlattenObservationWrapper(env))
    obs, state = env.reset(jax.random.PRNGKey(10), params)
    obs, state, reward, terminated, truncated, info = env.step(jax.random.PRNGKey(11), state, 0, params)
    assert obs.shape == (5 * 12 * 10,) and info["final_observation"].shape == obs.shape
