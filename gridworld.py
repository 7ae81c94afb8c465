"""The gridworlds of Optim4RL (Lan et al., 2023, App. B) and OPEN (Goldie et al., 2024, App. D) as one gymnax env.
Every env the agents train on, these included, comes from `wrappers.make_env`.

A level is a grid with walls and K object slots. Stepping onto object k pays `obj_reward[k] * reward_scale` and ends
the episode with probability `obj_p_terminate[k]`; a collected object reappears with probability `obj_p_respawn[k]`
per step. Where the papers are silent, the rules follow the authors' code, selectable per env (`RULES`):

- Optim4RL levels (sail-sg/optim4rl, envs/gridworld.py): the Table 2 grid inside a wall border; agent and objects
  start on random cells each episode; a collected object may respawn in the same step, on any non-wall cell.
- OPEN levels (EmptyJackson/groove, environments/gridworld/, as pinned by OPEN): the agent starts every episode on its
  level's fixed start cell; a collected object stays absent at least one step and respawns on a free cell. The three
  mazes run in groove's tabular mode: objects sit on the level's fixed cells, respawn in place, and the observation
  is a one-hot over (agent cell, which objects are present).
- Both: the horizon `max_steps_in_episode` ends an episode as a terminal state (no bootstrap); `horizon="truncation"`
  makes it a time limit instead (gymnax's `is_truncated`).

A level lives in `EnvParams` with shapes fixed per env instance (maximum grid, cells outside the level's height x
width blocked, slots past `num_objects` unused), so levels can be sampled inside jit and vmapped:

    env, params = make("all")                                   # one fixed sample, usable like any gymnax env
    levels = jax.vmap(lambda k: sample_level(k, env))(keys)     # OPEN's distribution (Table 8), one level per env
    env, params = make("big_dense_long", respawn="next_step")   # one rule changed
"""
import runs  # noqa: F401  first: its XLA and OpenBLAS settings must come before jax starts

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

# Optim4RL Table 2: (H, W), objects [reward, p_terminate, p_respawn], horizon. The authors' maps (envs/gridworld.py)
# surround H x W with a wall border (rule `border`, on by default).
_POS_DENSE, _NEG_DENSE = (1.0, 0.0, 0.5), (-1.0, 0.5, 0.5)
_POS_SPARSE, _NEG_SPARSE = (1.0, 0.0, 0.05), (-1.0, 0.5, 0.05)
FIXED_LEVELS = {
    "small_dense_short": ((4, 6), (_POS_DENSE, _NEG_DENSE), 50),
    "small_dense_long": ((6, 4), (_POS_DENSE, _NEG_DENSE), 500),
    "big_sparse_short": ((10, 12), 2 * (_POS_SPARSE,) + 2 * (_NEG_SPARSE,), 50),
    "big_sparse_long": ((12, 10), 2 * (_POS_SPARSE,) + 2 * (_NEG_SPARSE,), 500),
    "big_dense_short": ((9, 13), 2 * (_POS_DENSE,) + 2 * (_NEG_DENSE,), 50),
    "big_dense_long": ((13, 9), 2 * (_POS_DENSE,) + 2 * (_NEG_DENSE,), 500),
    # OPEN Table 9, out-of-support levels without walls; values listed per object.
    "rand_dense": ((11, 11), ((1.0, 0.0, 0.05), (1.0, 0.0, 0.05), (-1.0, 0.5, 0.1), (-1.0, 0.0, 0.5)), 500),
    "rand_sparse": ((13, 13), ((-1.0, 1.0, 0.0), (1.0, 1.0, 0.0)), 50),
    "rand_long": ((11, 11), ((1.0, 0.0, 0.01), (1.0, 0.0, 0.01), (-1.0, 0.5, 1.0), (-1.0, 0.5, 1.0)), 1000),
}
OPTIM4RL_LEVELS = tuple(FIXED_LEVELS)[:6]

# Optim4RL Table 3: reward scales of the multi-task preset (the default scale is 1).
REWARD_SCALES = {"small_dense_long": 1000.0, "small_dense_short": 100.0, "big_sparse_short": 100.0,
                 "big_dense_short": 10.0, "big_sparse_long": 10.0, "big_dense_long": 1.0}


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Level ranges, ends inclusive: integers uniform, rewards uniform, horizon and probabilities log-uniform."""
    horizon: tuple[int, int]
    reward: tuple[float, float]  # the first object's reward is made positive, as in the authors' code
    p_terminate: tuple[float, float]
    p_respawn: tuple[float, float]
    num_objects: tuple[int, int]
    size: tuple[int, int]        # side of a square grid
    walls: int | list[str]       # number of random wall cells over the maximum grid, or a fixed layout


# MiniGrid mazes as used by OPEN (Table 10, Figure 8), 13 x 13, '#' = wall; the layouts of shared/data/mazes.txt.
MAZES = {
    "standard_maze": """
.....#....#..
.###.####.##.
.#...........
.########.###
........#....
######.#####.
....#..#.....
.##...##.####
..#.#..#...#.
#.#.##.###.#.
#.#..#...#...
#.##.###.###.
...#...#.#...
""".split(),
    "sixteen_rooms": """
...#..#..#...
.........#...
...#..#......
#.###.##.###.
...#.........
......#..#...
##.#.##.###.#
...#.....#...
...#..#......
.####.##.#.##
...#..#..#...
......#......
...#.....#...
""".split(),
    "labyrinth": """
.............
.###########.
.#.........#.
.#.#######.#.
.#.#.....#.#.
.#.#.###.#.#.
.#.#.#.#.#.#.
.#.#.#.#.#.#.
.#...#...#.#.
.#########.#.
.....#.....#.
####.#.#####.
.....#.......
""".split(),
}
DISTRIBUTIONS = {
    # OPEN Table 8 ('all'). Its integer ranges [1, 6] and [4, 11] are Python-style: 1..5 objects, sides 4..10. The
    # 15 walls are drawn over the 10 x 10 maximum grid (authors' code); those outside a smaller grid do nothing.
    "all": Distribution((20, 750), (-1.0, 1.0), (0.01, 1.0), (0.001, 0.1), (1, 5), (4, 10), 15),
    # OPEN Table 10; the horizon is log-uniform like Table 8's (authors' code).
    **{name: Distribution((25, 50), (0.0, 1.0), (0.01, 1.0), (0.001, 0.1), (3, 3), (13, 13), layout)
       for name, layout in MAZES.items()},
}
LEVELS = OPTIM4RL_LEVELS + ("all", "rand_dense", "rand_sparse", "rand_long") + tuple(MAZES)

# (row, column) moves. Optim4RL: stay and the 8 neighbours (Appendix B), in the order of the authors' move_delta
# (envs/gridworld.py); OPEN: up, down, left, right, stay (groove's _get_next_pos).
MOVES = {"optim4rl": ((0, 0), (-1, 0), (0, 1), (1, 0), (0, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)),
         "open": ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))}
# Rules of a level: option -> (choices, default for Optim4RL levels, OPEN levels, mazes). The defaults follow the
# authors' code (module docstring); every other choice is a named option of `make`.
RULES = {
    "actions": (tuple(MOVES), "optim4rl", "open", "open"),
    # binary: (K objects + agent, H, W) maps (Optim4RL); flat: agent one-hot, a map per object type, time * 0.001
    # (groove); tabular: one-hot over agent cell x 2^K presence patterns, then time * 0.001 (groove's tabular mode)
    "observation": (("binary", "flat", "tabular"), "binary", "flat", "tabular"),
    "border": ((True, False), True, False, False),  # a wall ring around the Optim4RL grid (the authors' maps)
    "start": (("random", "fixed"), "random", "fixed", "fixed"),  # agent: random free cell, or the level's start cell
    "objects": (("random", "static"), "random", "random", "static"),  # static: the level's cells, respawn in place
    # same_step: a collected object may reappear in the step it was taken (Optim4RL); next_step: absent >= 1 step
    "respawn": (("same_step", "next_step"), "same_step", "next_step", "next_step"),
    # non_wall: any non-wall cell, even the agent's or another object's (Optim4RL); free: an unoccupied cell
    "respawn_cells": (("non_wall", "free"), "non_wall", "free", "free"),
    "horizon": (("terminal", "truncation"), "terminal", "terminal", "terminal"),  # truncation: bootstrap through it
}


@struct.dataclass
class EnvState(environment.EnvState):
    agent: jax.Array        # flat cell index (row * W + column)
    obj_pos: jax.Array      # (K,) flat cell indices
    obj_present: jax.Array  # (K,) bool


@struct.dataclass
class EnvParams:
    max_steps_in_episode: jax.Array  # horizon
    height: jax.Array                # the level occupies rows < height and columns < width of the maximum grid
    width: jax.Array
    walls: jax.Array                 # (H, W) bool
    num_objects: jax.Array           # slots >= num_objects are unused
    obj_reward: jax.Array            # (K,)
    obj_p_terminate: jax.Array       # (K,)
    obj_p_respawn: jax.Array         # (K,)
    reward_scale: jax.Array          # multiplies every reward (Optim4RL Table 3 for the multi-task preset)
    start: jax.Array                 # the level's agent start cell (start="fixed")
    obj_start: jax.Array             # (K,) the level's object cells (objects="static")


class Gridworld(environment.Environment[EnvState, EnvParams]):
    """A named level or level distribution with fixed shapes and rules (`RULES`); build it with `make`."""

    def __init__(self, level="big_dense_long", reward_scale=1.0, **options):
        if level not in LEVELS:
            raise ValueError(f"unknown gridworld level {level!r}; valid names: {', '.join(LEVELS)}")
        family = 1 if level in OPTIM4RL_LEVELS else 3 if level in MAZES else 2
        for name, value in options.items():
            if name not in RULES:
                raise ValueError(f"unknown gridworld option {name!r}; valid: {', '.join(RULES)}")
            if value is not None and value not in RULES[name][0]:
                raise ValueError(f"gridworld option {name} = {value!r}; valid: {', '.join(map(str, RULES[name][0]))}")
        rules = {name: RULES[name][family] if options.get(name) is None else options[name] for name in RULES}
        if rules["border"] and family != 1:
            raise ValueError(f"border = True is for the Optim4RL levels ({', '.join(OPTIM4RL_LEVELS)}), not {level!r}")
        if rules["observation"] == "tabular" and rules["objects"] != "static":
            raise ValueError("observation = 'tabular' needs objects = 'static' (it does not show object cells)")
        super().__init__()
        self.level, self.reward_scale, self.rules = level, reward_scale, rules
        for name, value in rules.items():
            setattr(self, name, value)
        self._config = (level, reward_scale, tuple(rules.items()))
        self.moves = np.array(MOVES[self.actions])
        if level in FIXED_LEVELS:
            self.shape, objects, _ = FIXED_LEVELS[level]
            self.shape = tuple(n + 2 for n in self.shape) if self.border else self.shape
            # Objects with identical [reward, p_terminate, p_respawn] share a type (a map of the flat observation).
            self.obj_type = np.unique([objects.index(obj) for obj in objects], return_inverse=True)[1]
        else:
            dist = DISTRIBUTIONS[level]
            self.shape = (dist.size[1], dist.size[1])
            self.obj_type = np.arange(dist.num_objects[1])
        self.max_objects, self.num_types = len(self.obj_type), int(self.obj_type.max()) + 1
        self._default_params = sample_level(jax.random.PRNGKey(0), self)

    def __eq__(self, other):  # equal configurations share jit caches (the env is a static argument)
        return isinstance(other, Gridworld) and self._config == other._config

    def __hash__(self):
        return hash(self._config)

    @property
    def default_params(self) -> EnvParams:
        return self._default_params

    def _blocked(self, params):
        rows, cols = np.indices(self.shape)
        return (params.walls | (rows >= params.height) | (cols >= params.width)).ravel()

    def reset_env(self, key, params):
        score = jnp.where(self._blocked(params), -1.0, jax.random.uniform(key, (self.shape[0] * self.shape[1],)))
        agent = params.start if self.start == "fixed" else jnp.argmax(score).astype(jnp.int32)
        obj_pos, ok = _top_cells(score.at[agent].set(-1.0), self.max_objects)  # distinct free cells, not the agent's
        if self.objects == "static":
            obj_pos, ok = params.obj_start, True
        used = jnp.arange(self.max_objects) < params.num_objects
        state = EnvState(time=jnp.int32(0), agent=agent, obj_pos=obj_pos, obj_present=ok & used)
        return self.get_obs(state, params), state

    def step_env(self, key, state, action, params):
        (height, width), blocked, move = self.shape, self._blocked(params), jnp.asarray(self.moves)[action]
        key_events, key_cells = jax.random.split(key)
        u_terminate, u_respawn = jax.random.uniform(key_events, (2, self.max_objects))
        row = jnp.clip(state.agent // width + move[0], 0, height - 1)
        col = jnp.clip(state.agent % width + move[1], 0, width - 1)
        agent = jnp.where(blocked[row * width + col], state.agent, row * width + col)
        collected = state.obj_present & (state.obj_pos == agent)
        reward = params.reward_scale * jnp.sum(jnp.where(collected, params.obj_reward, 0.0))
        terminated = jnp.any(collected & (u_terminate < params.obj_p_terminate))  # a draw per collected object
        present = state.obj_present & ~collected
        absent = ~present if self.respawn == "same_step" else ~state.obj_present
        used = jnp.arange(self.max_objects) < params.num_objects
        new_pos, ok = self._respawn_cells(key_cells, blocked, agent, state.obj_pos, present, params)
        respawn = absent & used & (u_respawn < params.obj_p_respawn) & ok
        time = state.time + 1
        if self.horizon == "terminal":
            terminated = terminated | (time >= params.max_steps_in_episode)
        state = EnvState(time=time, agent=agent, obj_pos=jnp.where(respawn, new_pos, state.obj_pos),
                         obj_present=present | respawn)
        return self.get_obs(state, params), state, reward, terminated, {}

    def _respawn_cells(self, key, blocked, agent, obj_pos, present, params):
        """A cell for each object should it respawn, and whether it has one."""
        if self.objects == "static":  # groove's tabular mode: in place
            return params.obj_start, True
        if self.respawn_cells == "non_wall":  # Optim4RL: independently uniform over the non-wall cells
            logits = jnp.where(blocked, -jnp.inf, 0.0)
            return jax.random.categorical(key, logits, shape=(self.max_objects,)).astype(jnp.int32), True
        cells = jnp.arange(blocked.size)
        occupied = jnp.any((cells[:, None] == obj_pos) & present, axis=1) | (cells == agent)
        return _top_cells(jnp.where(blocked | occupied, -1.0, jax.random.uniform(key, (blocked.size,))),
                          self.max_objects)

    def is_truncated(self, state, params):
        """Reaching the horizon truncates only with horizon='truncation'; otherwise `step_env` terminates there."""
        return (self.horizon == "truncation") & (state.time >= params.max_steps_in_episode)

    def get_obs(self, state, params=None, key=None):
        cells = self.shape[0] * self.shape[1]
        if self.observation == "tabular":
            pattern = jnp.sum(jnp.where(state.obj_present, 2 ** jnp.arange(self.max_objects), 0))
            hot = jnp.arange(cells * 2 ** self.max_objects) == state.agent + cells * pattern
            return jnp.append(hot.astype(jnp.float32), 0.001 * state.time)
        if self.observation == "binary":  # Optim4RL: one map per object, then the agent's
            obj_channel, agent_channel, channels = np.arange(self.max_objects), self.max_objects, self.max_objects + 1
        else:  # OPEN: the agent's map, then one per object type
            obj_channel, agent_channel, channels = self.obj_type + 1, 0, self.num_types + 1
        hot = jnp.append(jnp.where(state.obj_present, obj_channel * cells + state.obj_pos, -1),
                         agent_channel * cells + state.agent)
        maps = jnp.any(jnp.arange(channels * cells)[:, None] == hot, axis=1).astype(jnp.float32)
        if self.observation == "binary":
            return maps.reshape(channels, *self.shape)
        return jnp.append(maps, 0.001 * state.time)

    @property
    def name(self) -> str:
        return f"Gridworld-{self.level}"

    @property
    def num_actions(self) -> int:
        return len(self.moves)

    def action_space(self, params=None):
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params=None):
        cells = self.shape[0] * self.shape[1]
        if self.observation == "binary":
            return spaces.Box(0.0, 1.0, (self.max_objects + 1, *self.shape), jnp.float32)
        size = cells * 2 ** self.max_objects if self.observation == "tabular" else (self.num_types + 1) * cells
        return spaces.Box(0.0, 1.0, (size + 1,), jnp.float32)  # named horizons <= 1000

    def state_space(self, params):
        cells, k = self.shape[0] * self.shape[1], self.max_objects
        return spaces.Dict({"time": spaces.Discrete(params.max_steps_in_episode + 1), "agent": spaces.Discrete(cells),
                            "obj_pos": spaces.Box(0, cells - 1, (k,), jnp.int32),
                            "obj_present": spaces.Box(0, 1, (k,), jnp.bool_)})


def _top_cells(score, n):
    """The n cells of highest score: given uniform scores on free cells and -1 elsewhere, n distinct uniformly random
    free cells; `ok` is False where fewer than n cells were free."""
    top, cells = jax.lax.top_k(score, n)
    return cells, top >= 0.0


def _log_uniform(key, low, high, shape=()):
    return jnp.exp(jax.random.uniform(key, shape, minval=np.log(low), maxval=np.log(high)))


@functools.partial(jax.jit, static_argnums=1)
def sample_level(key, env) -> EnvParams:
    """A level of `env`'s distribution ('all': OPEN Table 8; mazes: Table 10), jittable and vmappable, e.g.
    `jax.vmap(lambda k: sample_level(k, env))(keys)`. The fixed levels (Optim4RL Table 2, OPEN Table 9) are point
    masses but for the agent's start cell and the objects' static cells, distinct free cells drawn with every level
    (groove's reset_env_params). The reward scale is the env's."""
    height, width = env.shape
    keys = jax.random.split(key, 8)
    if env.level in FIXED_LEVELS:
        _, objects, horizon = FIXED_LEVELS[env.level]
        reward, p_terminate, p_respawn = jnp.array(objects, jnp.float32).T
        walls, num_objects, size = np.zeros(env.shape, bool), len(objects), env.shape
        if env.border:
            walls[[0, -1], :] = walls[:, [0, -1]] = True
    else:
        dist, k = DISTRIBUTIONS[env.level], env.max_objects
        horizon = jnp.round(_log_uniform(keys[0], *dist.horizon)).astype(jnp.int32)
        reward = jax.random.uniform(keys[1], (k,), minval=dist.reward[0], maxval=dist.reward[1])
        reward = reward.at[0].set(jnp.abs(reward[0]))
        p_terminate = _log_uniform(keys[2], *dist.p_terminate, (k,))
        p_respawn = _log_uniform(keys[3], *dist.p_respawn, (k,))
        num_objects = jax.random.randint(keys[4], (), dist.num_objects[0], dist.num_objects[1] + 1)
        size = (jax.random.randint(keys[5], (), dist.size[0], dist.size[1] + 1),) * 2
        if isinstance(dist.walls, int):
            wall_cells, _ = _top_cells(jax.random.uniform(keys[6], (height * width,)), dist.walls)
            walls = jnp.zeros(height * width, bool).at[wall_cells].set(True).reshape(env.shape)
        else:
            walls = np.array([[c == "#" for c in row] for row in dist.walls])
    rows, cols = np.indices(env.shape)
    blocked = (walls | (rows >= size[0]) | (cols >= size[1])).ravel()
    cells, _ = _top_cells(jnp.where(blocked, -1.0, jax.random.uniform(keys[7], blocked.shape)), env.max_objects + 1)
    return EnvParams(max_steps_in_episode=jnp.int32(horizon), height=jnp.int32(size[0]), width=jnp.int32(size[1]),
                     walls=jnp.asarray(walls), num_objects=jnp.int32(num_objects), obj_reward=reward,
                     obj_p_terminate=p_terminate, obj_p_respawn=p_respawn,
                     reward_scale=jnp.float32(env.reward_scale), start=cells[0], obj_start=cells[1:])


def make(name: str, reward_scale=1.0, **options):
    """Like `gymnax.make`: returns (env, env_params). reward_scale (default 1; `REWARD_SCALES` is Optim4RL's
    multi-task preset) and the level's rules (`RULES`: each option's choices; None or unset: the level's default)."""
    env = Gridworld(name, reward_scale, **options)
    return env, env.default_params


def max_horizon(level):
    """The longest episode of a level or level distribution (an evaluation's step cap)."""
    return FIXED_LEVELS[level][2] if level in FIXED_LEVELS else DISTRIBUTIONS[level].horizon[1]


def on_levels(train, env_name):
    """`run(key, optimizer_params)`: `train` on a level of the gridworld distribution `env_name` drawn from the key
    (jax.random.fold_in(key, 1)), the same level for the same key in meta-training and in every evaluation; on any
    other env, `train` itself."""
    if env_name not in DISTRIBUTIONS:
        return lambda key, optimizer_params: train(key, optimizer_params)
    env = make(env_name)[0]
    return lambda key, optimizer_params: train(key, optimizer_params,
                                               sample_level(jax.random.fold_in(key, 1), env))


def render(env, state, params) -> str:
    """A state as text: '#' wall, 'A' agent, digits the object slots, '.' free."""
    grid = np.where(np.asarray(params.walls), "#", ".")[: int(params.height), : int(params.width)]
    for k in np.flatnonzero(np.asarray(state.obj_present)):
        grid[divmod(int(state.obj_pos[k]), env.shape[1])] = str(k)
    grid[divmod(int(state.agent), env.shape[1])] = "A"
    return "\n".join("".join(row) for row in grid)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Show a few steps of a gridworld level and time 1024 envs.")
    parser.add_argument("level", nargs="?", default="big_dense_long", choices=LEVELS, metavar="LEVEL",
                        help=f"one of: {', '.join(LEVELS)}")
    parser.add_argument("--steps", type=int, default=5, help="steps to show")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env, params = make(args.level)
    key_reset, key = jax.random.split(jax.random.PRNGKey(args.seed))
    obs, state = env.reset(key_reset, params)
    print(f"{env.name}: {int(params.height)}x{int(params.width)}, horizon {int(params.max_steps_in_episode)}, "
          f"{env.num_actions} actions, observation {env.observation} {obs.shape}")
    for k in range(int(params.num_objects)):
        print(f"  object {k}: reward {float(params.obj_reward[k]):+.2f}, p_terminate "
              f"{float(params.obj_p_terminate[k]):.3f}, p_respawn {float(params.obj_p_respawn[k]):.3f}")
    print(render(env, state, params))
    for t in range(args.steps):
        key_action, key_step, key = jax.random.split(key, 3)
        action = jax.random.randint(key_action, (), 0, env.num_actions)
        obs, state, reward, terminated, truncated, _ = env.step(key_step, state, action, params)
        print(f"\nstep {t + 1}: action {int(action)} {env.moves[int(action)].tolist()}, reward {float(reward):+.2f}, "
              f"terminated {bool(terminated)}, truncated {bool(truncated)}")
        print(render(env, state, params))
