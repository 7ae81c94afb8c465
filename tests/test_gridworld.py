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
    cells, k = env.shape[0] * env.shape[1], env.max_objects
    if env.observation == "tabular":  # groove: index = agent cell + cells * (bit pattern of the present objects)
        index = state.agent + cells * (state.obj_present * 2 ** np.arange(k)).sum(-1)
        return np.concatenate([index[..., None] == np.arange(cells * 2 ** k), 0.001 * state.time[..., None]], -1)
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
    """Re-compute every transition of a rollout with numpy under the env's rules; return the collection and respawn
    events."""
    (_, n), (height, width), k = tr["action"].shape, env.shape, env.max_objects
    p = per_env(params, n)
    rows, cols = np.indices(env.shape)
    outside = (rows >= p.height[:, None, None]) | (cols >= p.width[:, None, None])
    blocked = (p.walls | outside).reshape(n, -1)
    env_idx = np.arange(n)
    prev, nxt, done = tr["prev"], tr["state"], tr["terminated"] | tr["truncated"]
    free_respawn, static = env.respawn_cells == "free", env.objects == "static"
    # Every state: agent inside the grid and off walls; present objects off walls, on distinct cells (free or
    # static cells) and never on the agent (random objects on free cells); unused slots empty.
    for s in (prev, nxt):
        assert (s.agent // width < p.height).all() and (s.agent % width < p.width).all()
        assert not blocked[env_idx, s.agent].any()
        assert not (s.obj_present & blocked[env_idx[:, None], s.obj_pos]).any()
        assert not (s.obj_present & (np.arange(k) >= p.num_objects[:, None])).any()
        pos = np.sort(np.where(s.obj_present, s.obj_pos, -1 - np.arange(k)), -1)
        if free_respawn or static:
            assert (pos[..., 1:] != pos[..., :-1]).all()
        if free_respawn and not static:
            assert not (s.obj_present & (s.obj_pos == s.agent[..., None])).any()
        if static:
            assert (s.obj_pos == p.obj_start).all()
    if env.start == "fixed":  # every episode, the first included, starts on the level's start cell
        assert (prev.agent[0] == p.start).all() and (nxt.agent == p.start)[done].all()
    # Moves: clipped to the grid, walls block.
    move = env.moves[tr["action"]]
    row = np.clip(prev.agent // width + move[..., 0], 0, height - 1)
    col = np.clip(prev.agent % width + move[..., 1], 0, width - 1)
    agent = np.where(blocked[env_idx, row * width + col], prev.agent, row * width + col)
    assert (nxt.agent == agent)[~done].all()
    # Collection pays reward x scale; termination through a collection or, with a terminal horizon, at the horizon.
    collected = prev.obj_present & (prev.obj_pos == agent[..., None])
    np.testing.assert_allclose(tr["reward"], p.reward_scale * (collected * p.obj_reward).sum(-1), rtol=1e-6)
    horizon = prev.time + 1 >= p.max_steps_in_episode
    terminal_horizon = env.horizon == "terminal"
    assert not (tr["terminated"] & ~collected.any(-1) & ~(horizon & terminal_horizon)).any()
    assert (tr["truncated"] == (horizon & (not terminal_horizon))).all()
    if terminal_horizon:
        assert tr["terminated"][horizon].all()
    assert (nxt.time == np.where(done, 0, prev.time + 1)).all()
    # Objects: those not collected stay put; collected ones vanish unless they respawn in the same step.
    alive = ~done[..., None]
    stay = prev.obj_present & ~collected & alive
    assert nxt.obj_present[stay].all() and (nxt.obj_pos == prev.obj_pos)[stay].all()
    absent = ~prev.obj_present | (collected if env.respawn == "same_step" else False)
    assert not (nxt.obj_present & ~absent & collected & alive).any()
    # Observations: everything equals the independent rendering.
    np.testing.assert_allclose(tr["obs"], expected_obs(env, nxt), atol=1e-6)
    np.testing.assert_array_equal(tr["final_obs"][~done], tr["obs"][~done])
    # Frequencies: termination given one collection before the horizon, respawn of an absent object.
    single = collected & (collected.sum(-1, keepdims=True) == 1) & ~horizon[..., None]
    assert_frequency(tr["terminated"][..., None] & single, np.broadcast_to(p.obj_p_terminate, single.shape), single)
    candidates = absent & (np.arange(k) < p.num_objects[:, None]) & alive
    assert_frequency(nxt.obj_present, np.broadcast_to(p.obj_p_respawn, candidates.shape), candidates)
    return collected, candidates


def test_unknown_level_is_refused_with_the_valid_names():
    with pytest.raises(ValueError) as error:
        make("big_dense_longer")
    assert "big_dense_longer" in str(error.value) and all(name in str(error.value) for name in LEVELS)
    with pytest.raises(ValueError, match="observation = 'pixels'; valid: binary, flat, tabular"):
        make("all", observation="pixels")
    with pytest.raises(ValueError, match="unknown gridworld option 'respawn_at'; valid: actions, observation"):
        make("all", respawn_at="free")
    with pytest.raises(ValueError, match="border = True is for the Optim4RL levels"):
        make("standard_maze", border=True)
    with pytest.raises(ValueError, match="observation = 'tabular' needs objects = 'static'"):
        make("standard_maze", objects="random")


def test_level_names():
    assert LEVELS == ("small_dense_short", "small_dense_long", "big_sparse_short", "big_sparse_long",
                      "big_dense_short", "big_dense_long", "all", "rand_dense", "rand_sparse", "rand_long",
                      "standard_maze", "sixteen_rooms", "labyrinth")


@pytest.mark.parametrize("name", TABLE_2)
def test_optim4rl_levels_follow_table_2_inside_the_authors_wall_border(name):
    (height, width), objects, horizon = TABLE_2[name]
    env, params = make(name)
    assert env.num_actions == 9 and env.action_space(params).n == 9
    assert [tuple(m) for m in env.moves] == [(0, 0), (-1, 0), (0, 1), (1, 0), (0, -1), (1, -1), (1, 1), (-1, 1),
                                             (-1, -1)]  # the authors' move_delta
    assert env.observation_space(params).shape == (len(objects) + 1, height + 2, width + 2)
    assert (int(params.height), int(params.width), int(params.max_steps_in_episode)) == (height + 2, width + 2,
                                                                                         horizon)
    ring = np.ones((height + 2, width + 2), bool)
    ring[1:-1, 1:-1] = False
    assert (np.asarray(params.walls) == ring).all() and int(params.num_objects) == len(objects)
    np.testing.assert_allclose(np.stack([params.obj_reward, params.obj_p_terminate, params.obj_p_respawn], 1),
                               objects)
    assert float(params.reward_scale) == 1.0 and REWARD_SCALES[name] == TABLE_3[name]
    assert float(make(name, reward_scale=REWARD_SCALES[name])[1].reward_scale) == TABLE_3[name]
    env, params = make(name, border=False)  # the paper's H x W alone
    assert env.observation_space(params).shape == (len(objects) + 1, height, width) and not params.walls.any()


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


# The previous rules of this repository, each a named option now.
OLD_RULES = dict(respawn="next_step", respawn_cells="free", horizon="truncation")


@pytest.mark.parametrize("name, options", [
    ("big_dense_short", dict(actions="open", observation="flat")),
    ("small_dense_long", dict(OLD_RULES, border=False)),
    ("all", dict(OLD_RULES, actions="optim4rl", observation="binary", start="random")),
    ("rand_dense", dict(respawn="same_step", respawn_cells="non_wall", start="random")),
    ("labyrinth", dict(OLD_RULES, observation="flat", objects="random", start="random")),
])
def test_other_rules(name, options):
    env, params = make(name, **options)
    assert env.num_actions == {"open": 5, "optim4rl": 9}[env.actions]
    if name in gridworld.DISTRIBUTIONS:
        params = sample_levels(env, jax.random.PRNGKey(3))
    check_rollout(env, params, rollout(env, params, jax.random.PRNGKey(5)))


@pytest.mark.parametrize("respawn", ["same_step", "next_step"])
def test_termination_and_respawn_frequencies_match_probabilities(respawn):
    env, params = make("small_dense_short", respawn=respawn)
    params = params.replace(max_steps_in_episode=jnp.int32(10_000), obj_p_terminate=jnp.array([0.25, 0.75]),
                            obj_p_respawn=jnp.array([0.1, 0.6]))
    runs = [rollout(env, params, key) for key in jax.random.split(jax.random.PRNGKey(6), 8)]  # reuses one compile
    tr = jax.tree.map(lambda *x: np.concatenate(x, 1), *runs)
    collected, candidates = check_rollout(env, params, tr)
    assert (collected.sum((0, 1)) > 400).all() and (candidates.sum((0, 1)) > 100).all()  # enough events


def step_many(env, params, state, action, num=20_000, seed=0):
    """`num` independent draws of one transition from `state`."""
    keys = jax.random.split(jax.random.PRNGKey(seed), num)
    out = jax.jit(jax.vmap(env.step_env, (0, None, None, None)))(keys, state, action, params)
    return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("respawn", ["same_step", "next_step"])
def test_a_collected_object_respawns_in_the_same_step_with_p_respawn(respawn):
    """Optim4RL's envs/gridworld.py draws the respawn of an object right after collecting it, in the same step;
    the 'next_step' option keeps it absent for at least one step."""
    env, params = make("small_dense_short", respawn=respawn)
    params = params.replace(obj_p_terminate=jnp.zeros(2), obj_p_respawn=jnp.array([0.3, 0.5]))
    agent = jnp.int32(2 * env.shape[1] + 3)  # an interior cell; action 0 stays, collecting object 0 there
    state = gridworld.EnvState(time=jnp.int32(0), agent=agent, obj_pos=jnp.array([agent, agent + 1]),
                               obj_present=jnp.array([True, True]))
    _, nxt, reward, _, _ = step_many(env, params, state, 0)
    assert (reward == 1.0).all() and nxt.obj_present[:, 1].all()
    n, p = len(reward), 0.3 if respawn == "same_step" else 0.0
    assert abs(nxt.obj_present[:, 0].sum() - n * p) <= 4 * np.sqrt(n * p * (1 - p)), nxt.obj_present[:, 0].mean()


@pytest.mark.parametrize("respawn_cells", ["non_wall", "free"])
def test_respawn_cells_are_uniform_over_non_wall_or_free_cells(respawn_cells):
    """Optim4RL: any non-wall cell, the agent's and other objects' included; the 'free' option: unoccupied cells."""
    env, params = make("small_dense_short", respawn_cells=respawn_cells)
    params = params.replace(obj_p_respawn=jnp.ones(2))
    agent = jnp.int32(2 * env.shape[1] + 3)
    state = gridworld.EnvState(time=jnp.int32(0), agent=agent, obj_pos=jnp.array([0, agent + 1]),
                               obj_present=jnp.array([False, True]))  # object 0 absent, 1 next to the agent
    _, nxt, _, _, _ = step_many(env, params, state, 0)
    assert nxt.obj_present.all()
    cells = np.flatnonzero(~np.asarray(params.walls).ravel())
    if respawn_cells == "free":
        cells = cells[(cells != agent) & (cells != agent + 1)]
    counts = np.bincount(nxt.obj_pos[:, 0], minlength=env.shape[0] * env.shape[1])
    assert counts.sum() == counts[cells].sum()
    expected = counts.sum() / cells.size
    chi2, dof = ((counts[cells] - expected) ** 2 / expected).sum(), cells.size - 1
    assert chi2 < dof + 4 * np.sqrt(2 * dof), chi2


def test_reward_scale_multiplies_rewards():
    env, params = make("small_dense_short")
    key = jax.random.PRNGKey(7)
    base = rollout(env, params, key)
    scaled = rollout(env, params.replace(reward_scale=jnp.float32(REWARD_SCALES["small_dense_long"])), key)
    assert (base["reward"] != 0).sum() > 20
    np.testing.assert_allclose(scaled["reward"], 1000 * base["reward"])
    np.testing.assert_array_equal(scaled["state"].agent, base["state"].agent)


@pytest.mark.parametrize("horizon", ["terminal", "truncation"])
def test_the_horizon_is_terminal_or_a_truncation(horizon):
    """Both authors' codes end an episode at the horizon as a terminal state; 'truncation' makes it a time limit."""
    env, params = make("small_dense_short", horizon=horizon)
    params = params.replace(max_steps_in_episode=jnp.int32(7), obj_p_terminate=jnp.zeros(2))
    tr = rollout(env, params, jax.random.PRNGKey(8))
    at_horizon = ((np.arange(NUM_STEPS) + 1) % 7 == 0)[:, None]
    assert (tr["terminated"] == (at_horizon & (horizon == "terminal"))).all()
    assert (tr["truncated"] == (at_horizon & (horizon == "truncation"))).all()
    assert (tr["state"].time[6::7] == 0).all() and (tr["state"].time[5::7] == 6).all()


def test_open_levels_start_on_their_fixed_start_cell():
    """groove: the agent starts every episode on the level's start cell, drawn with the level among its free cells."""
    env, _ = make("standard_maze")
    levels = jax.tree.map(np.asarray, sample_levels(env, jax.random.PRNGKey(9), 4096))
    free = np.flatnonzero(~levels.walls[0].ravel())
    counts = np.bincount(levels.start, minlength=169)
    assert counts.sum() == counts[free].sum() and (counts[free] > 0).all()  # every free cell can be a start
    assert not (levels.obj_start == levels.start[:, None]).any()
    for name in ("rand_sparse", "all"):
        env, params = make(name, horizon="terminal")
        if name == "all":
            params = sample_levels(env, jax.random.PRNGKey(10))
        params = params.replace(max_steps_in_episode=jnp.full_like(params.max_steps_in_episode, 5))
        tr = rollout(env, params, jax.random.PRNGKey(11))
        done = tr["terminated"] | tr["truncated"]
        assert done.sum() >= 4 * NUM_ENVS and (tr["state"].agent == per_env(params, NUM_ENVS).start)[done].all()


def test_mazes_are_tabular_with_static_objects_that_respawn_in_place():
    """groove's tabular mode (OPEN Table 10): objects on the level's cells, respawning there, and a one-hot
    observation over (agent cell, presence pattern of the 3 objects), then time * 0.001."""
    env, params = make("sixteen_rooms")
    assert env.observation_space(params).shape == (169 * 8 + 1,)
    params = params.replace(obj_p_respawn=jnp.full(3, 0.5), obj_p_terminate=jnp.zeros(3),
                            max_steps_in_episode=jnp.int32(10_000))
    obs, state = env.reset(jax.random.PRNGKey(12), params)
    assert int(state.agent) == int(params.start) and (state.obj_pos == params.obj_start).all()
    assert state.obj_present.all() and int(jnp.argmax(obs)) == int(params.start) + 169 * 7 and obs[-1] == 0
    state = state.replace(time=jnp.int32(3), obj_present=jnp.array([False, True, False]))
    obs = np.asarray(env.get_obs(state))
    assert obs[:-1].sum() == 1 and obs[int(params.start) + 169 * 2] == 1 and obs[-1] == np.float32(0.003)
    tr = rollout(env, params, jax.random.PRNGKey(13), num_steps=400)
    collected, candidates = check_rollout(env, params, tr)  # positions stay the level's, respawns at p_respawn
    assert collected.sum() > 20 and candidates.sum() > 50


def test_reset_positions_are_uniform_over_free_cells():
    env, params = make("standard_maze", start="random", objects="random", observation="flat")
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
    assert obs.shape == (5 * 14 * 12,) and info["final_observation"].shape == obs.shape
