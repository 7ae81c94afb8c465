"""The envs as the authors' pinned packages had them (wrappers.py's "@gymnax-0.0.6" and "@brax-0.9.4" names): each
documented difference from today's env, and equality with today's env wherever the two agree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dataclasses import replace

import ppo
import wrappers


def unwrapped(name):
    env, env_params = wrappers.make_env(name)
    return env._env, env_params


# ----------------------------------------------------------------------------------------------- SpaceInvaders
def test_space_invaders_first_wave_has_4_x_7_aliens_and_later_waves_4_x_6():
    (old, params), (new, _) = unwrapped("SpaceInvaders-MinAtar@gymnax-0.0.6"), unwrapped("SpaceInvaders-MinAtar")
    old_map, new_map = (np.asarray(env.reset_env(jax.random.PRNGKey(0), params)[1].alien_map) for env in (old, new))
    assert old_map.sum() == 28 and new_map.sum() == 24
    assert old_map[0:4, 2:9].all() and new_map[0:4, 2:8].all() and not new_map[:, 8].any()
    state = old.reset_env(jax.random.PRNGKey(0), params)[1]
    cleared = state.replace(alien_map=jnp.zeros((10, 10)), alien_move_timer=5, alien_shot_timer=5)
    next_wave = old.step_env(jax.random.PRNGKey(1), cleared, 0, params)[1].alien_map
    assert np.asarray(next_wave).sum() == 24 and np.asarray(next_wave)[0:4, 2:8].all()


@pytest.mark.parametrize("action, bullet_column, old_hit, new_hit", [
    (1, 5, True, False),   # moves left out of the bullet's column: 0.0.6 tests the cell it left
    (1, 4, False, True),   # moves left into the bullet's column: today's env tests the cell it moved to
    (0, 5, True, True),    # stays: both
])
def test_space_invaders_enemy_bullet_hits_where_the_player_stood_before_moving(action, bullet_column, old_hit,
                                                                                new_hit):
    """Player at column 5, an enemy bullet in row 8 about to move into row 9; action 1 is 'left'."""
    for name, hit in (("SpaceInvaders-MinAtar@gymnax-0.0.6", old_hit), ("SpaceInvaders-MinAtar", new_hit)):
        env, params = unwrapped(name)
        state = env.reset_env(jax.random.PRNGKey(0), params)[1]
        state = state.replace(e_bullet_map=state.e_bullet_map.at[8, bullet_column].set(1), alien_shot_timer=5)
        _, stepped, _, done, _ = env.step_env(jax.random.PRNGKey(1), state, action, params)
        assert bool(done) == hit and bool(stepped.terminal) == hit, name
        assert stepped.e_bullet_map[9, bullet_column] == 1, name  # the bullet is in the player's row in both


def test_space_invaders_equals_todays_env_wherever_the_player_does_not_move():
    """From the same state, with actions that do not move the player (no-op, fire), 0.0.6's rules and today's
    agree: 2,000 steps, every state, observation, reward and done equal."""
    (old, params), (new, _) = unwrapped("SpaceInvaders-MinAtar@gymnax-0.0.6"), unwrapped("SpaceInvaders-MinAtar")

    def step(carry, key):
        state, ended = carry
        action = jnp.where(jax.random.bernoulli(key), 3, 0)  # fire or no-op
        outs = [env.step_env(key, state, action, params) for env in (old, new)]
        same = jax.tree.map(lambda a, b: jnp.array_equal(a, b), outs[0][:4], outs[1][:4])
        reset = new.reset_env(key, params)[1]
        state = jax.tree.map(lambda r, s: jnp.where(outs[1][3], r, s), reset, outs[1][1])
        return (state, ended + outs[1][3]), (jnp.all(jnp.array(jax.tree.leaves(same))), outs[1][2])

    start = new.reset_env(jax.random.PRNGKey(0), params)[1]
    (_, episodes), (same, rewards) = jax.jit(lambda k: jax.lax.scan(step, (start, 0), jax.random.split(k, 2000)))(
        jax.random.PRNGKey(2))
    assert bool(same.all()) and int(episodes) >= 5 and float(rewards.sum()) > 0


# ----------------------------------------------------------------------------------------------- Deep Sea
def always_action_1_return(name):
    env, params = unwrapped(name)
    state, total = env.reset_env(jax.random.PRNGKey(0), params)[1], 0.0
    for t in range(env.size):
        _, state, reward, done, _ = env.step_env(jax.random.PRNGKey(t), state, 1, params)
        total += float(reward)
    return total, bool(done), params


def test_deep_sea_as_gymnax_0_0_6_moves_right_with_action_1_in_every_cell():
    """0.0.6: action 1 is 'right' everywhere; the treasure (+1) less 8 moves' cost of 0.01 / 8 each. Today's map,
    drawn from key 0, sends 'always 1' left in some cells."""
    old_return, old_done, old_params = always_action_1_return("DeepSea-bsuite-8@gymnax-0.0.6")
    new_return, new_done, new_params = always_action_1_return("DeepSea-bsuite-8")
    assert old_done and new_done
    assert old_return == pytest.approx(1.0 - 8 * 0.01 / 8)
    assert new_return < 0.0
    assert (old_params.randomize_actions, old_params.max_steps_in_episode) == (False, 2000)
    assert (new_params.randomize_actions, new_params.max_steps_in_episode) == (True, 8)
    assert wrappers.deep_sea_size("DeepSea-bsuite-12@gymnax-0.0.6") == 12


def test_unknown_variants_are_refused():
    for bad in ("Breakout-MinAtar@gymnax-0.0.6", "SpaceInvaders-MinAtar@gymnax-0.0.5", "ant@brax-0.9.4",
                "DeepSea-bsuite-8@brax-0.9.4"):
        with pytest.raises(ValueError, match=f"unknown env_name '{bad}'"):
            ppo.validate(replace(ppo.PPOConfig(), env_name=bad))


def test_the_paper_presets_run_the_authors_envs():
    """OPEN's SpaceInvaders, multi-task and Deep Sea presets, with Table 4's Adam for SpaceInvaders (lr 0.007, b2 0.99,
    annealed); Optim4RL's Humanoid presets."""
    import open_es
    import optim4rl_metagrad as om
    si = ppo.PRESETS["spaceinvaders"]
    assert (si["env_name"], si["learning_rate"], si["b2"], si["anneal_lr"]) == (
        "SpaceInvaders-MinAtar@gymnax-0.0.6", 0.007, 0.99, True)
    assert "SpaceInvaders-MinAtar@gymnax-0.0.6" in open_es.PRESETS["multitask"]["tasks"]
    deep_sea = open_es.PRESETS["deepsea"]
    assert deep_sea["tasks"] == tuple(f"DeepSea-bsuite-{n}@gymnax-0.0.6" for n in (4, 6, 8)) and deep_sea["separated"]
    assert deep_sea["ppo"].env_name == "DeepSea-bsuite-8@gymnax-0.0.6"
    assert ppo.PRESETS["humanoid_optim4rl"]["env_name"] == ppo.PRESETS["humanoid_optim4rl_meta"]["env_name"] == \
        om.PRESETS["humanoid"]["env_name"] == "humanoid@brax-0.9.4"


# ----------------------------------------------------------------------------------------------- Brax
def brax_pair(name):
    from brax import envs
    today = envs.get_environment(name, backend="spring")
    return wrappers.BRAX_0_9_4[name](today), today


def test_humanoid_as_brax_0_9_4_takes_the_raw_action_and_charges_its_cost():
    """Today's humanoid given u equals 0.9.4's given 0.4 u (its ctrl range is +-0.4); beyond the range the actuator
    clips the action, and the cost 0.1 sum(a^2) is on the raw action."""
    old, today = brax_pair("humanoid")
    assert np.allclose(today.sys.actuator.ctrl_range, [-0.4, 0.4])
    state = today.reset(jax.random.PRNGKey(0))
    u = jax.random.uniform(jax.random.PRNGKey(1), (today.action_size,), minval=-1.0, maxval=1.0)
    a = 2.5 * u  # beyond +-0.4 wherever |u| > 0.16
    step_old, step_today = jax.jit(old.step), jax.jit(today.step)
    inside, reference = step_old(state, 0.4 * u), step_today(state, u)
    clipped = step_old(state, a)
    for stepped in (inside, clipped):
        np.testing.assert_allclose(stepped.obs, reference.obs if stepped is inside else
                                   step_today(state, jnp.clip(a, -0.4, 0.4) / 0.4).obs, rtol=1e-4, atol=1e-4)
    assert float(inside.reward) == pytest.approx(float(reference.reward), abs=1e-4)
    extra = 0.1 * float(jnp.sum(a ** 2) - jnp.sum(jnp.clip(a, -0.4, 0.4) ** 2))
    assert extra > 0.1
    assert float(clipped.reward) == pytest.approx(float(step_today(state, jnp.clip(a, -0.4, 0.4) / 0.4).reward)
                                                  - extra, abs=1e-4)


def test_inverted_double_pendulum_as_brax_0_9_4_places_the_tip_without_pole_2s_rotation():
    """0.9.4: tip = pole 2's origin + (0, 0, 0.6) in world axes; reward 10 - 0.01 x^2 - (y - 2)^2 - 1e-3 v1^2 -
    5e-3 v2^2, the alive bonus paid on the terminal step too; done when y <= 1. With pole 2 bent 1 rad, today's tip is
    lower: same physics, other reward and done."""
    old, today = brax_pair("inverted_double_pendulum")
    start = today.reset(jax.random.PRNGKey(0))
    bent = start.replace(pipeline_state=today.pipeline_init(jnp.array([0.0, 0.0, 1.0]), jnp.zeros(3)))
    for state, old_done in ((start, 0.0), (bent.replace(pipeline_state=today.pipeline_init(
            jnp.array([0.0, 1.2, 0.0]), jnp.zeros(3))), 1.0), (bent, 0.0)):
        action = jnp.array([0.3])
        stepped_old, stepped_today = jax.jit(old.step)(state, action), jax.jit(today.step)(state, action)
        np.testing.assert_allclose(stepped_old.obs, stepped_today.obs, atol=1e-6)
        pipeline = stepped_old.pipeline_state
        x, y = float(pipeline.x.pos[2, 0]), float(pipeline.x.pos[2, 2]) + 0.6
        v1, v2 = (float(v) for v in pipeline.qd[1:])
        expected = 10 - 0.01 * x ** 2 - (y - 2) ** 2 - 1e-3 * v1 ** 2 - 5e-3 * v2 ** 2
        assert float(stepped_old.reward) == pytest.approx(expected, abs=1e-4)
        assert float(stepped_old.done) == old_done == float(y <= 1)
    assert float(stepped_today.done) == 1.0 and float(stepped_today.reward) < expected - 9  # bent: today's tip falls
