"""open_es.py breadth (issue 8): multi-task normalisation, within-pair ranking, ablations, the separated variant,
and the population split over devices and over processes."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import open_es

CONFIG = open_es.OpenConfig()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "analysis"))
import open_generalisation  # noqa: E402
TINY_PPO = replace(open_es.CATCH, num_envs=4, num_steps=4, total_timesteps=32, num_minibatches=1, update_epochs=1,
                   width=4, eval_episodes=8)


def test_multitask_fitness_is_return_over_adam_averaged_then_ranked(tmp_path):
    returns = np.array([[10.0, 40.0], [30.0, 10.0], [np.nan, 80.0], [20.0, 20.0]])  # members x tasks
    references = np.array([10.0, 40.0])
    expected = [(10 / 10 + 40 / 40) / 2, (30 / 10 + 10 / 40) / 2, np.nan, (20 / 10 + 20 / 40) / 2]
    score = open_es.normalised_score(jnp.asarray(returns), jnp.asarray(references))
    np.testing.assert_allclose(score, expected, rtol=1e-6)
    # raw returns would rank member 3 above member 1; normalised, 1 (1.625) beats 3 (1.25) beats 0 (1.0); NaN last
    fitness = np.asarray(open_es.es_fitness(score))
    assert list(np.argsort(fitness)) == [1, 3, 0, 2]
    # references from baselines.py's file, or passed in (which wins); a missing env is named
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"Catch-bsuite": {"ppo": {}, "optimizers": {"adam": {"final_return": 0.8}}}}))
    config = replace(CONFIG, tasks=("Catch-bsuite",), tuned_path=str(path))
    np.testing.assert_allclose(open_es.adam_references(config), [0.8])
    np.testing.assert_allclose(open_es.adam_references(replace(config, adam_returns=(2.0,))), [2.0])
    with pytest.raises(ValueError, match="CartPole-v1.*tuned.json"):
        open_es.validate(replace(config, tasks=("Catch-bsuite", "CartPole-v1")))


def test_multitask_report_puts_each_game_next_to_its_own_tuned_adam(tmp_path, monkeypatch):
    """`--eval multi_OPEN.npy --preset multitask` reports all four games, each against OPEN Table 4's Adam for that
    game (learning rate, b2), on the same PPO (Table 3)."""
    calls = []
    monkeypatch.setattr(open_es, "versus_adam", lambda config, fn, meta, ppo_config, out_path: calls.append(
        (ppo_config, os.path.relpath(out_path, tmp_path))))
    preset = replace(CONFIG, **dict(open_es.PRESETS["multitask"], out_dir=str(tmp_path),
                                    eval=os.path.join(ROOT, "trained", "authors", "multi_OPEN.npy")))
    open_es.main(preset)
    table4 = {"Asterix-MinAtar": (0.003, 0.999), "Breakout-MinAtar": (0.01, 0.99), "Freeway-MinAtar": (0.001, 0.99),
              "SpaceInvaders-MinAtar@gymnax-0.0.6": (0.007, 0.99)}  # the env as the authors ran it
    assert [(c.env_name, (c.learning_rate, c.b2), path) for c, path in calls] == [
        (env, table4[env], os.path.join(env, "summary")) for env in open_es.MINATAR_ENVS]
    for ppo_config, _ in calls:  # everything but Adam's settings is the preset's PPO
        assert replace(ppo_config, env_name=preset.ppo.env_name, learning_rate=preset.ppo.learning_rate,
                       b2=preset.ppo.b2) == preset.ppo
    single = replace(preset, tasks=(), ppo=replace(preset.ppo, env_name="Asterix-MinAtar", learning_rate=0.005))
    open_es.main(single)
    assert calls[-1] == (single.ppo, "summary")  # one env: the user's Adam settings stand


def test_generalisation_sweeps_levels_widths_and_lengths_with_the_papers_metric(tmp_path, monkeypatch):
    """Figures 4 and 16: every level x (width, length) setting; IQM over seeds of return / Adam's mean."""
    calls = []

    def versus_adam(config, fn, meta, ppo_config, out_path):
        calls.append(ppo_config)
        return {"OPEN": {"final": np.array([1.0, 2.0, 3.0, 10.0])}, "Adam": {"final": np.array([1.0, 1.0, 2.0, 4.0])}}
    monkeypatch.setattr(open_es, "versus_adam", versus_adam)
    config = replace(CONFIG, ppo=replace(TINY_PPO, total_timesteps=64))
    open_generalisation.generalisation(config, None, None, str(tmp_path), widths=(8,), lengths=(0.5,))
    levels = ("all", "rand_dense", "rand_sparse", "rand_long", "standard_maze", "sixteen_rooms", "labyrinth")
    assert [(c.env_name, c.width, c.total_timesteps) for c in calls] == [
        (level, *setting) for level in levels for setting in ((8, 64), (TINY_PPO.width, 32))]
    # the longest episode: OPEN Table 8 ('all'), Table 10 (mazes), LPG's (Oh et al., 2020) rand_* horizons
    caps = {"all": 750, "rand_dense": 500, "rand_sparse": 50, "rand_long": 1000, "standard_maze": 50,
            "sixteen_rooms": 50, "labyrinth": 50}
    assert [c.eval_max_steps for c in calls] == [caps[level] for level in levels for _ in range(2)]
    # learned / Adam's mean 2 = 0.5, 1, 1.5, 5: IQM (middle two) 1.25; raw IQMs 2.5 and 1.5
    rows = (tmp_path / "generalisation.md").read_text().splitlines()[4:]
    assert rows == [f"| {level} | {setting} | 1.250 | 2.500, 1.500 | 2.000 |"
                    for level in levels for setting in ("width 8", "length x0.5")]


def test_within_pair_ranking_moves_the_mean_toward_the_pair_winner():
    np.testing.assert_allclose(open_es.pair_fitness(jnp.array([1.0, 5.0, jnp.nan, 2.0, 5.0, 0.0])),
                               [0.5, 0.0, 0.5, -0.5, 0.0, -0.5])  # evosax minimises: the winner gets -0.5
    keys = open_es.member_keys(jax.random.PRNGKey(0), 6, paired=True)
    np.testing.assert_array_equal(keys[:3], keys[3:])  # member i and i + P/2 see the same level and seeds
    config = replace(CONFIG, population_size=4, task_sampling=True)
    solution = jnp.zeros(5)
    es = open_es.make_es(config, solution)
    state = es.init(jax.random.PRNGKey(0), solution, es.default_params)
    population, _ = es.ask(jax.random.split(jax.random.PRNGKey(0), 3)[0], state,
                           es.default_params)  # what `generation` will ask
    # pairs are (0, 2) and (1, 3); the other pair ties. Member 0 = mean + sigma z0 wins, then member 3 = mean - sigma z1
    for returns, winner in (([3.0, 0.0, 1.0, 0.0], 0), ([0.0, 0.0, 0.0, 2.0], 3)):
        generation = open_es.make_generation(es, lambda population, keys: jnp.array(returns), paired=True)
        step = generation(state, jax.random.PRNGKey(0))[0].mean - state.mean
        assert float(jnp.dot(step, population[winner] - state.mean)) > 0


def with_zero_rows(small, columns, outputs):
    """Full-size (19 inputs, 3 outputs) meta-parameters that ignore the inputs outside `columns` (zero input-kernel
    rows) and output 0 where `small` has no output; elsewhere equal to `small`."""
    gru = dict(small["params"]["GRUCell_0"])
    for gate in ("ir", "iz", "in"):
        kernel = gru[gate]["kernel"]
        full_kernel = jnp.zeros((open_es.NUM_INPUTS, kernel.shape[1])).at[np.array(columns)].set(kernel)
        gru[gate] = {**gru[gate], "kernel": full_kernel}
    last = small["params"]["Dense_2"]
    last = {"kernel": jnp.zeros((last["kernel"].shape[0], 3)).at[:, :outputs].set(last["kernel"]),
            "bias": jnp.zeros(3).at[:outputs].set(last["bias"])}
    return {"params": {**small["params"], "GRUCell_0": gru, "Dense_2": last}}


@pytest.mark.parametrize("change, removed, outputs", [
    *[(dict(ablate=(name,)), [open_es.INPUTS.index(name)], 3) for name in open_es.ABLATIONS[:4]],
    (dict(ablate=("stochasticity",)), [], 2),
    (dict(optimizer="no_features"), [0, 15, 16, 17, 18], 2),  # parameter and context (INPUTS order)
])
def test_each_ablation_removes_exactly_its_input(change, removed, outputs):
    config = replace(CONFIG, **change)
    columns = [i for i in range(open_es.NUM_INPUTS) if i not in removed]
    assert open_es.input_columns(config) == columns and open_es.num_outputs(config) == outputs
    small = open_es.init_meta_params(config, jax.random.PRNGKey(1))
    assert small["params"]["GRUCell_0"]["ir"]["kernel"].shape[0] == len(columns)
    assert small["params"]["Dense_2"]["kernel"].shape[1] == outputs
    # The ablated optimizer's update equals the full one's when the full one ignores the removed inputs (and has no
    # noise output): it sees exactly the other inputs, with their values.
    full = with_zero_rows(small, columns, outputs)
    params = {"w": jax.random.normal(jax.random.PRNGKey(2), (6, 4)), "b": jnp.zeros(4)}
    grads = jax.tree.map(lambda p: 0.01 * jnp.cos(p + 1), params)
    context = dict(training_proportion=0.3, batch_proportion=0.5, key=jax.random.PRNGKey(3),
                   dormancy=jax.tree.map(lambda p: jnp.abs(p) + 0.5, params),
                   layer_proportion=jax.tree.map(lambda p: jnp.full_like(p, 0.5), params),
                   actor_mask=jax.tree.map(jnp.ones_like, params))
    updates = []
    for cfg, meta in ((config, small), (CONFIG if outputs == 3 else replace(CONFIG, alpha3=0.0), full)):
        optimizer = open_es.open_optimizer(cfg)(meta)
        state = optimizer.init(params)
        for _ in range(2):
            update, state = optimizer.update(grads, state, params, **context)
        updates.append(update)
    for a, b in zip(jax.tree.leaves(updates[0]), jax.tree.leaves(updates[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert float(jnp.abs(updates[0]["w"]).max()) > 0


def test_separated_updates_actor_and_critic_with_their_own_meta_parameters():
    config = replace(CONFIG, separated=True)
    meta = open_es.init_meta_params(config, jax.random.PRNGKey(0))
    params = {"w": jnp.ones((3, 2))}
    grads = {"w": jnp.arange(6.0).reshape(3, 2) * 1e-3}
    for mask, name in ((1.0, "actor"), (0.0, "critic")):
        context = dict(actor_mask={"w": jnp.full((3, 2), mask)}, key=jax.random.PRNGKey(1))
        separated = open_es.open_optimizer(config)(meta)
        shared = open_es.open_optimizer(CONFIG)(meta[name])
        a, _ = separated.update(grads, separated.init(params), params, **context)
        b, _ = shared.update(grads, shared.init(params), params, **context)
        np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)


# One ES generation of OPEN, paired as with task sampling; each member's return (cheap, so the test stays fast): minus
# the loss of a toy regression after three OPEN updates, the data drawn from the member's key.
GENERATION = """
import sys
sys.path.insert(0, {root!r})
import jax
import jax.numpy as jnp
import numpy as np
import optax
from dataclasses import replace
import open_es
config = replace(open_es.OpenConfig(), population_size=4, task_sampling=True)
meta = open_es.init_meta_params(config, jax.random.PRNGKey(0))
es = open_es.make_es(config, meta)
state = es.init(jax.random.PRNGKey(0), meta, es.default_params)

def member_return(meta_params, key):
    x = jax.random.normal(key, (16, 3))
    loss = lambda params: jnp.mean((x @ params["w"] - x @ jnp.array([1.0, -2.0, 0.5])) ** 2)
    optimizer = open_es.open_optimizer(config)(meta_params)
    params = {{"w": jnp.zeros(3)}}
    opt_state = optimizer.init(params)
    for _ in range(3):
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        params = optax.apply_updates(params, updates)
    return -loss(params)

def one_generation(devices=None):
    generation = open_es.make_generation(es, jax.vmap(member_return), config.task_sampling, devices)
    return np.asarray(generation(state, jax.random.PRNGKey(1))[0].mean)
"""


def python(code, *args, env=None):
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_population_split_over_two_devices_and_two_processes_equals_one_device(tmp_path):
    """One generation with the population on one device, split over two forced host devices, and split over two
    jax.distributed CPU processes (gloo)."""
    setup = GENERATION.format(root=ROOT)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    distributed = (f"import sys, jax\njax.config.update('jax_cpu_collectives_implementation', 'gloo')\n"
                   f"jax.distributed.initialize('localhost:{port}', 2, int(sys.argv[1]))\n{setup}"
                   f"assert jax.device_count() == 2 and jax.local_device_count() == 1\n"
                   f"np.save({str(tmp_path)!r} + f'/process{{sys.argv[1]}}.npy', one_generation())\n")
    forced = setup + textwrap.dedent(f"""
        assert jax.device_count() == 2
        np.save({str(tmp_path / 'one_device.npy')!r}, one_generation(jax.devices()[:1]))
        np.save({str(tmp_path / 'two_devices.npy')!r}, one_generation())
    """)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    processes = [python(forced, env={"XLA_FLAGS": flags})] + [python(distributed, str(i)) for i in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=400)
        assert process.returncode == 0, stderr[-3000:]
    one = np.load(tmp_path / "one_device.npy")
    assert np.abs(one).max() > 0.01  # the ES moved
    # the same update up to float rounding (ES steps here are ~0.05 per coordinate)
    for name in ("two_devices", "process0", "process1"):
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), one, rtol=1e-5, atol=1e-6)
