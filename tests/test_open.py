"""open_es.py: the OPEN update and inputs, the context it receives from PPO, the ES machinery, files, bad input."""
import json
import os
from dataclasses import asdict, replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import open_es
import ppo

CONFIG = open_es.OpenConfig()
TINY = replace(CONFIG, population_size=4, generations=4, eval_every=2, checkpoint_every=2, eval_seeds=2,
               ppo=replace(open_es.CATCH, num_envs=8, num_steps=8, total_timesteps=256, num_minibatches=2,
                           update_epochs=1, width=8, eval_episodes=4))


def constant_output_meta_params(config, m, e, delta):
    """Meta-parameters whose network outputs (m, e, delta) for every parameter: zero last kernel, bias = outputs."""
    meta = open_es.init_meta_params(config, jax.random.PRNGKey(0))
    last = meta["params"]["Dense_2"]
    meta["params"]["Dense_2"] = {"kernel": jnp.zeros_like(last["kernel"]), "bias": jnp.array([m, e, delta])}
    return meta


def test_update_from_outputs_matches_hand_computation():
    rng = np.random.default_rng(0)
    outputs, eps = rng.normal(size=(7, 3)), rng.normal(size=7)
    actor = np.array([1, 1, 1, 0, 0, 0, 0])
    config = replace(CONFIG, alpha1=0.01, alpha2=0.5, alpha3=0.2)
    u_hat = [0.01 * m * np.exp(0.5 * e) + 0.2 * d * eps[i] * actor[i] for i, (m, e, d) in enumerate(outputs)]
    expected = [x - sum(u_hat) / len(u_hat) for x in u_hat]
    u = open_es.update_from_outputs(jnp.asarray(outputs), jnp.asarray(eps * actor), config)
    np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-7)
    assert abs(float(u.sum())) < 1e-6


def test_noise_only_on_actor_parameters_and_updates_are_zero_mean():
    config = replace(CONFIG, alpha3=0.5)
    params = {"a": jnp.ones((4, 3)), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    optimizer = open_es.open_optimizer(config)(constant_output_meta_params(config, 2.0, 1.0, 3.0))
    state = optimizer.init(params)
    # Constant outputs and no noise: u_hat is the same everywhere, so the zero-mean update is exactly 0.
    critic, _ = optimizer.update(grads, state, params, actor_mask=jax.tree.map(jnp.zeros_like, params),
                                 key=jax.random.PRNGKey(1))
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(critic))
    # Noise on "a" only: "b" gets the same value everywhere (minus the mean), "a" varies; the total is zero.
    mask = {"a": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    actor, _ = optimizer.update(grads, state, params, actor_mask=mask, key=jax.random.PRNGKey(1))
    assert float(jnp.ptp(actor["b"])) == 0.0 and float(jnp.ptp(actor["a"])) > 0.1
    assert abs(float(sum(x.sum() for x in jax.tree.leaves(actor)))) < 1e-5


def test_inputs_are_normalised_per_tensor_and_carry_the_context():
    params = {"w": jnp.ones((5, 4)), "b": jnp.ones(4)}
    grads = {"w": jax.random.normal(jax.random.PRNGKey(0), (5, 4)) * 1e-3, "b": jnp.array([1e-6, -2e-6, 3e-6, 0.5])}
    sizes = [4, 20]  # tree order: b, w
    flat = lambda tree: jax.flatten_util.ravel_pytree(tree)[0]  # noqa: E731
    momenta = jnp.stack([flat(grads) * (i + 1) for i in range(6)])
    dormancy, layer = jnp.linspace(0, 2, 24), jnp.linspace(1, 0, 24)
    inputs = open_es.optimizer_inputs(flat(grads), momenta, flat(params), sizes, 0.25, 0.75, dormancy, layer)
    assert inputs.shape == (24, open_es.NUM_INPUTS)
    for start, size in ((0, 4), (4, 20)):  # second moment ~1 per channel within each tensor
        block = inputs[start:start + size, :15]
        np.testing.assert_allclose(jnp.mean(block ** 2, axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(inputs[:, 15], 0.25)
    np.testing.assert_allclose(inputs[:, 16], 0.75)
    np.testing.assert_allclose(inputs[:, 17], dormancy)
    np.testing.assert_allclose(inputs[:, 18], layer)
    # sign channels keep the sign of the raw gradient
    np.testing.assert_array_equal(jnp.sign(inputs[:4, 0]), jnp.sign(grads["b"]))


def test_ppo_hands_the_optimizer_training_and_batch_proportions():
    config = replace(ppo.PPOConfig(), env_name="Catch-bsuite", num_envs=4, num_steps=8, total_timesteps=96,
                     num_minibatches=2, update_epochs=2, width=4, eval_episodes=1, eval_max_steps=2, log_every=0)
    seen = []

    def spy(_):
        def update(grads, state, params=None, training_proportion=None, batch_proportion=None, **context):
            jax.debug.callback(lambda tp, bp: seen.append((float(tp), float(bp))), training_proportion,
                               batch_proportion, ordered=True)
            return jax.tree.map(jnp.zeros_like, grads), state
        return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)

    jax.block_until_ready(jax.jit(ppo.make_train(config, spy))(jax.random.PRNGKey(0), {}))
    expected = [(u / 3, epoch / 2) for u in range(3) for epoch in range(2) for _ in range(2) for _net in range(2)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_plain_optax_use_trains_a_toy_regression_without_context():
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5])
    params = {"w": jnp.zeros(3)}
    optimizer = open_es.open_optimizer(CONFIG)(open_es.init_meta_params(CONFIG, jax.random.PRNGKey(0)))
    state = optimizer.init(params)
    for _ in range(3):
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] - y) ** 2))(params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert jnp.all(jnp.isfinite(params["w"])) and float(jnp.abs(params["w"]).max()) > 0


def quadratic_es(config, target):
    """The repo's ES generation on a toy fitness with a known optimum: return = -|x - target|^2."""
    solution = jnp.zeros_like(target)
    es = open_es.make_es(config, solution)
    state = es.init(jax.random.PRNGKey(0), solution, es.default_params)
    returns = jax.vmap(lambda x: -jnp.sum((x - target) ** 2))
    return es, state, open_es.make_generation(es, lambda population, key: returns(population))


def test_es_mean_moves_toward_the_optimum():
    target = jnp.linspace(-0.5, 0.5, 10)
    es, state, generation = quadratic_es(replace(CONFIG, population_size=16), target)
    start = float(jnp.sum((state.mean - target) ** 2))
    for g in range(60):
        state, metrics = generation(state, jax.random.PRNGKey(g))
    assert float(jnp.sum((state.mean - target) ** 2)) < 0.2 * start


def test_a_nan_member_ranks_last_and_is_counted():
    es, state, _ = quadratic_es(replace(CONFIG, population_size=4), jnp.ones(3))
    returns = jnp.array([jnp.nan, 0.0, 0.0, 0.0])
    generation = open_es.make_generation(es, lambda population, key: returns)
    population, _ = es.ask(jax.random.split(jax.random.PRNGKey(0), 3)[0], state,
                           es.default_params)  # what `generation` will ask
    new_state, metrics = generation(state, jax.random.PRNGKey(0))
    step = new_state.mean - state.mean
    assert int(metrics["non_finite"]) == 1 and bool(jnp.all(jnp.isfinite(new_state.mean)))
    assert float(jnp.dot(step, population[0] - state.mean)) < 0  # moved away from the NaN member
    assert float(open_es.es_fitness(jnp.array([jnp.inf]))[0]) == np.inf  # +inf return is not "best" either


def test_resume_equals_uninterrupted(tmp_path):
    full = replace(TINY, out_dir=str(tmp_path / "full"))
    _, history = open_es.meta_train(full)
    interrupted = replace(TINY, out_dir=str(tmp_path / "resumed"), generations=2)
    open_es.meta_train(interrupted)  # stops after the checkpoint at generation 2, as a killed run would
    _, resumed_history = open_es.meta_train(replace(interrupted, generations=4))
    a = open_es.load(os.path.join(full.out_dir, "checkpoint.msgpack"))
    b = open_es.load(os.path.join(interrupted.out_dir, "checkpoint.msgpack"))
    np.testing.assert_array_equal(a["es_state"]["mean"], b["es_state"]["mean"])
    assert history["mean_return"] == resumed_history["mean_return"]
    for out_dir in (full.out_dir, interrupted.out_dir):  # metrics.jsonl: the printed lines, across the resume too
        with open(os.path.join(out_dir, "metrics.jsonl")) as file:
            lines = [json.loads(line) for line in file]
        generations = [line for line in lines if "mean_return" in line]
        assert [line["generation"] for line in generations] == [1, 2, 3, 4]
        assert [line["mean_return"] for line in generations] == history["mean_return"]
        assert [line["generation"] for line in lines if "held_out_return" in line] == [0, 2, 4]
    assert not [f for f in os.listdir(full.out_dir) if f.endswith(".tmp")]
    config, meta = open_es.load_optimizer(os.path.join(full.out_dir, "optimizer.msgpack"))
    assert config == full and jax.tree.structure(meta) == jax.tree.structure(
        open_es.init_meta_params(full, jax.random.PRNGKey(0)))


def test_a_checkpoint_of_another_size_is_refused(tmp_path):
    path = tmp_path / "checkpoint.msgpack"
    open_es.save_atomic(str(path), {"config": json.dumps({"gru_size": 16, "hidden_size": 16, "population_size": 4})})
    with pytest.raises(ValueError, match="gru_size = 16"):
        open_es.meta_train(replace(TINY, out_dir=str(tmp_path)))


@pytest.mark.parametrize("change, message", [
    (dict(population_size=7), "population_size must be even"),
    (dict(ppo=replace(open_es.CATCH, env_name="Pong")), "unknown env_name 'Pong'"),
    (dict(eval="missing/optimizer.msgpack"), "missing/optimizer.msgpack"),
    (dict(gru_size=0), "gru_size must be positive"),
    (dict(optimizer="velo"), "unknown optimizer 'velo'; valid: open, no_features, optim4rl"),
    (dict(ablate=("momentum",)), "unknown ablation 'momentum'"),
    (dict(optimizer="optim4rl", separated=True), "not 'optim4rl'"),
    (dict(task_sampling=True), "task_sampling needs a gridworld distribution, got 'Catch-bsuite'"),
    (dict(tasks=("Catch-bsuite",), adam_returns=(-1.0,)), "must be positive"),
])
def test_bad_input_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        open_es.validate(replace(CONFIG, **change))


def test_unknown_preset_is_refused():
    with pytest.raises(SystemExit, match="unknown preset 'pong'.*breakout"):
        ppo.parse_config(open_es.OpenConfig, open_es.PRESETS, ["--preset", "pong"])


def test_saved_state_round_trips(tmp_path):
    meta = open_es.init_meta_params(CONFIG, jax.random.PRNGKey(3))
    path = str(tmp_path / "o.msgpack")
    open_es.save_atomic(path, {"config": json.dumps(asdict(CONFIG)),
                               "meta_params": serialization.to_state_dict(meta)})
    config, loaded = open_es.load_optimizer(path)
    assert config == CONFIG
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
