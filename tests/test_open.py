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
import runs

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
    np.testing.assert_allclose(inputs[:, 15], 0.25)  # training, layer, batch proportion, dormancy (authors' order)
    np.testing.assert_allclose(inputs[:, 16], layer)
    np.testing.assert_allclose(inputs[:, 17], 0.75)
    np.testing.assert_allclose(inputs[:, 18], dormancy)
    # sign channels keep the sign of the raw gradient (channel 13) and of the momenta (1-6)
    np.testing.assert_array_equal(jnp.sign(inputs[:4, 13]), jnp.sign(grads["b"]))
    np.testing.assert_array_equal(jnp.sign(inputs[:4, 1]), jnp.sign(grads["b"]))


def test_ppo_hands_the_optimizer_the_authors_context():
    """One optimizer call per minibatch on actor and critic together, with the authors' train.py context: at
    minibatch step t, training proportion (t // (N_mb L)) / (N_updates - 1), batch proportion ((t // N_mb) mod L) /
    (L - 1); layer proportion i / (n_layers - 1) of the i-th Dense layer; the actor mask; dormancy (E|h| + 1e-11) /
    mean(E|h| + 1e-11), tiled over each neuron's fan-in (calc_dormancy)."""
    config = replace(ppo.PPOConfig(), env_name="Catch-bsuite", num_envs=4, num_steps=8, total_timesteps=96,
                     num_minibatches=2, update_epochs=2, width=4, eval_episodes=1, eval_max_steps=2, log_every=0)
    seen = []

    def spy(_):
        def update(grads, state, params=None, training_proportion=None, batch_proportion=None, layer_proportion=None,
                   actor_mask=None, dormancy=None, **context):
            assert set(grads) == {"actor", "critic"}
            layers = [tree[net]["params"][name]["kernel"][0, 0] for tree in (layer_proportion, actor_mask)
                      for net in ("actor", "critic") for name in ("hidden_0", "hidden_1", "output")]
            kernel, bias = (dormancy["actor"]["params"]["hidden_1"][k] for k in ("kernel", "bias"))
            jax.debug.callback(lambda *x: seen.append(x), training_proportion, batch_proportion, *layers,
                               jnp.abs(kernel - bias[None]).max(), bias.mean(), ordered=True)
            return jax.tree.map(jnp.zeros_like, grads), state
        return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)

    jax.block_until_ready(jax.jit(ppo.make_train(config, spy))(jax.random.PRNGKey(0), {}))
    num_updates, epochs, minibatches = 3, 2, 2
    expected = [((t // (minibatches * epochs)) / (num_updates - 1), ((t // minibatches) % epochs) / (epochs - 1),
                 0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
                for t in range(num_updates * epochs * minibatches)]
    np.testing.assert_allclose(np.array(seen, np.float64), expected, rtol=1e-6, atol=1e-7)
    activation = np.array([[0.0, 2.0, -1.0], [0.0, -4.0, 3.0]])  # batch 2, 3 neurons (the first dead)
    mean_abs = np.abs(activation).mean(0) + 1e-11
    np.testing.assert_allclose(ppo.dormancy_scores(jnp.asarray(activation), 1e-11), mean_abs / mean_abs.mean(),
                               rtol=1e-6)


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


def test_optax_convention_params_default_to_none_and_open_asks_for_them():
    grads, params = {"w": jnp.array([0.3, -1e-4])}, {"w": jnp.array([1.0, 2.0])}
    optimizer = open_es.open_optimizer(CONFIG)(open_es.init_meta_params(CONFIG, jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="OPEN reads the parameters' values: call update\\(grads, state, params"):
        optimizer.update(grads, optimizer.init(params))
    assert np.isfinite(optimizer.update(grads, optimizer.init(params), params)[0]["w"]).all()
    no_features = replace(CONFIG, optimizer="no_features")  # gradient and momenta only: params may be left out
    optimizer = open_es.open_optimizer(no_features)(open_es.init_meta_params(no_features, jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(optimizer.update(grads, optimizer.init(params))[0]["w"],
                                  optimizer.update(grads, optimizer.init(params), params)[0]["w"])


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


def test_members_in_batches_score_as_all_at_once():
    """member_batch only changes how many members train at once: each member's return is its own, and one PPO run
    per member (a plain loop) gives the same."""
    config = replace(TINY, population_size=4)
    optimizer_fn = open_es.open_optimizer(config)
    meta = open_es.init_meta_params(config, jax.random.PRNGKey(0))
    population = jax.tree.map(lambda x: jnp.stack([x + 0.3 * i for i in range(4)]), meta)
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    returns = {batch: np.asarray(jax.jit(open_es.make_member_returns(replace(config, member_batch=batch),
                                                                       optimizer_fn))(population, keys))
               for batch in (3, 4)}  # 3: a batch and a remainder
    scores = jax.jit(open_es.make_scores(config, optimizer_fn))
    loop = [float(scores(jax.tree.map(lambda x: x[i], population), jax.random.split(keys[i], 1)).mean())
            for i in range(4)]
    assert len(set(loop)) > 1  # the members differ, so a mix-up would show
    for batch, values in returns.items():
        np.testing.assert_allclose(values, loop, atol=1e-6, err_msg=f"member_batch {batch}")


def test_resume_equals_uninterrupted(tmp_path):
    full = replace(TINY, out_dir=str(tmp_path / "full"))
    _, history = open_es.meta_train(full)
    interrupted = replace(TINY, out_dir=str(tmp_path / "resumed"), generations=2)
    open_es.meta_train(interrupted)  # stops after the checkpoint at generation 2, as a killed run would
    _, resumed_history = open_es.meta_train(replace(interrupted, generations=4))
    a = runs.load_checkpoint(os.path.join(full.out_dir, "checkpoint.msgpack"))
    b = runs.load_checkpoint(os.path.join(interrupted.out_dir, "checkpoint.msgpack"))
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
    runs.save_checkpoint(str(path), {"config": json.dumps({"gru_size": 16, "hidden_size": 16, "population_size": 4})})
    with pytest.raises(ValueError, match="checkpoint.msgpack is of another optimizer or population: gru_size = 16 "
                                         "there, 8 here"):
        open_es.meta_train(replace(TINY, out_dir=str(tmp_path)))


def test_a_truncated_checkpoint_is_named_and_the_previous_one_resumes(tmp_path, capsys):
    """Cut the latest checkpoint in half (a full disk, an interrupted copy): the run names the file and resumes from
    the previous checkpoint; with no previous one it stops with the file's name."""
    config = replace(TINY, out_dir=str(tmp_path / "run"), generations=4)
    _, history = open_es.meta_train(config)  # checkpoints at generations 2 and 4: the one of 2 is kept as .prev
    path = os.path.join(config.out_dir, "checkpoint.msgpack")
    assert runs.load_checkpoint(path + ".prev")["generation"] == 2
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    _, resumed = open_es.meta_train(config)
    assert f"checkpoint {path} is damaged" in capsys.readouterr().out
    assert resumed["mean_return"] == history["mean_return"]  # generations 3 and 4 again, as before
    assert runs.load_checkpoint(path)["generation"] == 4
    with open(path, "wb") as f:
        f.write(data[:100])
    os.remove(path + ".prev")
    with pytest.raises(ValueError, match=f"checkpoint {path} is damaged and has no readable previous checkpoint"):
        open_es.meta_train(config)


@pytest.mark.parametrize("change, message", [
    (dict(population_size=7), "population_size must be even"),
    (dict(ppo=replace(open_es.CATCH, env_name="Pong")), "unknown env_name 'Pong'"),
    (dict(eval="missing/optimizer.msgpack"), "missing/optimizer.msgpack"),
    (dict(gru_size=0), "gru_size must be positive"),
    (dict(optimizer="velo"), "unknown optimizer 'velo'; valid: open, no_features"),
    (dict(ablate=("momentum",)), "unknown ablation 'momentum'"),
    (dict(optimizer="no_features", separated=True), "not 'no_features'"),
    (dict(task_sampling=True), "task_sampling needs a gridworld distribution, got 'Catch-bsuite'"),
    (dict(tasks=("Catch-bsuite",), adam_returns=(-1.0,)), "must be positive"),
    (dict(es_init="normal"), "unknown es_init 'normal'; valid: random, zeros"),
    (dict(es_b1=1.0), r"es_b1 must be in \[0, 1\), got 1.0"),
    (dict(member_batch=-1), "member_batch must be 0 .automatic. or positive, got -1"),
    (dict(ppo=replace(open_es.CATCH, time_limit="ignore")), "unknown time_limit 'ignore'; valid: bootstrap, terminal"),
])
def test_bad_input_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        open_es.validate(replace(CONFIG, **change))


def test_unknown_preset_is_refused():
    with pytest.raises(SystemExit, match="unknown preset 'pong'.*breakout"):
        runs.parse_config(open_es.OpenConfig, open_es.PRESETS, ["--preset", "pong"])


def test_saved_state_round_trips(tmp_path):
    meta = open_es.init_meta_params(CONFIG, jax.random.PRNGKey(3))
    path = str(tmp_path / "o.msgpack")
    payload = {"config": json.dumps(asdict(CONFIG)), "meta_params": serialization.to_state_dict(meta)}
    runs.write_atomic(path, serialization.msgpack_serialize(dict(payload, inputs=json.dumps(open_es.INPUTS))))
    config, loaded = open_es.load_optimizer(path)
    assert config == CONFIG
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    # A file from before the authors' input order (no "inputs") is refused.
    runs.write_atomic(path, serialization.msgpack_serialize(payload))
    with pytest.raises(ValueError, match="o.msgpack was written before this repo followed the authors' input order"):
        open_es.load_optimizer(path)


# ----------------------------------------------------------------------------------------------- the authors' files
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHORS = os.path.join(ROOT, "trained", "authors")


def authors_tree(flat, gru, hidden):
    """The authors' released vector split as jax.flatten_util.ravel_pytree lays out their tree (keys sorted):
    gru_params (flax GRUCell: hn, hr, hz, in, ir, iz), then params (Sequential layers_0, 1, 3, 4, 6)."""
    shapes = [("hn_b", (gru,)), ("hn_k", (gru, gru)), ("hr_k", (gru, gru)), ("hz_k", (gru, gru)),
              ("in_b", (gru,)), ("in_k", (19, gru)), ("ir_b", (gru,)), ("ir_k", (19, gru)), ("iz_b", (gru,)),
              ("iz_k", (19, gru)), ("d0_b", (hidden,)), ("d0_k", (gru, hidden)), ("ln0_b", (hidden,)),
              ("ln0_s", (hidden,)), ("d1_b", (hidden,)), ("d1_k", (hidden, hidden)), ("ln1_b", (hidden,)),
              ("ln1_s", (hidden,)), ("d2_b", (3,)), ("d2_k", (hidden, 3))]
    tree, start = {}, 0
    for name, shape in shapes:
        tree[name] = flat[start:start + int(np.prod(shape))].reshape(shape).astype(np.float64)
        start += int(np.prod(shape))
    assert start == flat.size
    return tree


def authors_update(w, p, g, m, h, context, eps):
    """One tensor of the authors' network.py (GRU_Opt.opt_fn, _update_tensor) in numpy: returns (u before the
    zero-mean, new momenta, new hidden state). p, g: (n,); m: (n, 6); h: (n, G); context: (tp, lp, bp, dormancy)."""
    betas = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
    m = m * betas + (1 - betas) * g[:, None]
    x = np.concatenate([p[:, None], np.sign(m), np.log(np.abs(m) + 1e-13), np.sign(g)[:, None],
                        np.log(np.abs(g) + 1e-13)[:, None]], 1)
    x = x / np.sqrt(1e-5 + np.mean(x ** 2, 0))
    tp, lp, bp, dormancy = context
    x = np.concatenate([x, np.full((len(p), 1), tp), np.full((len(p), 1), lp), np.full((len(p), 1), bp),
                        dormancy[:, None]], 1)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r = sigmoid(x @ w["ir_k"] + w["ir_b"] + h @ w["hr_k"])
    z = sigmoid(x @ w["iz_k"] + w["iz_b"] + h @ w["hz_k"])
    n = np.tanh(x @ w["in_k"] + w["in_b"] + r * (h @ w["hn_k"] + w["hn_b"]))
    h = (1 - z) * n + z * h
    y = h
    for dense, norm in (("d0", "ln0"), ("d1", "ln1")):
        y = y @ w[f"{dense}_k"] + w[f"{dense}_b"]
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6) * w[f"{norm}_s"] + \
            w[f"{norm}_b"]
        y = np.maximum(y, 0)
    out = y @ w["d2_k"] + w["d2_b"]
    u = out[:, 0] * 1e-3 * np.exp(out[:, 1] * 1e-3) + out[:, 2] * 1e-3 * eps
    return u, m, h


@pytest.mark.parametrize("name, gru, hidden", [("breakout_OPEN.npy", 8, 16), ("multi_OPEN.npy", 16, 32)])
def test_released_optimizer_updates_as_the_authors(name, gru, hidden):
    """Two updates of a small actor and critic by a released optimizer equal the authors' network.py restated in
    numpy: inputs in their order, log eps 1e-13, noise on the actor from one key per leaf, one zero-mean over actor
    and critic together."""
    path = os.path.join(AUTHORS, name)
    weights = authors_tree(np.load(path), gru, hidden)
    rng = np.random.default_rng(0)
    shapes = {"actor": {"params": {"Dense_0": {"bias": (3,), "kernel": (4, 3)}, "Dense_1": {"bias": (2,),
                                                                                           "kernel": (3, 2)}}},
              "critic": {"params": {"Dense_0": {"bias": (3,), "kernel": (4, 3)}, "Dense_1": {"bias": (1,),
                                                                                            "kernel": (3, 1)}}}}
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=is_shape)
    layer = {net: {"params": {name: jax.tree.map(lambda s, v=float(i): np.full(s, v, np.float32), tensors,
                                                 is_leaf=is_shape)  # layer proportion i / (2 - 1)
                              for i, (name, tensors) in enumerate(shapes[net]["params"].items())}}
             for net in shapes}
    neuron = jax.tree.map(lambda s: rng.uniform(0.2, 2.0, s[-1]).astype(np.float32), shapes, is_leaf=is_shape)
    dormancy = jax.tree.map(lambda s, d: np.broadcast_to(d, s).astype(np.float32), shapes, neuron, is_leaf=is_shape)
    mask = {"actor": jax.tree.map(np.ones_like, params["actor"]), "critic": jax.tree.map(np.zeros_like,
                                                                                         params["critic"])}
    optimizer_fn, meta_params = open_es.learned_optimizer(path)
    optimizer = optimizer_fn(meta_params)
    state = optimizer.init(params)
    leaves = jax.tree.leaves(params)
    theirs = {"m": [np.zeros((x.size, 6)) for x in leaves], "h": [np.zeros((x.size, gru)) for x in leaves]}
    for step, (tp, bp) in enumerate(((0.0, 1 / 3), (0.5, 1.0))):
        grads = jax.tree.map(lambda p: (rng.normal(size=p.shape) * 10.0 ** rng.integers(-9, -1, p.shape)
                                        ).astype(np.float32), params)
        grads["actor"]["params"]["Dense_1"]["bias"][0] = 0.0  # an exact zero: log(0 + 1e-13)
        key = jax.random.PRNGKey(step)
        updates, state = optimizer.update(grads, state, params, training_proportion=tp, batch_proportion=bp,
                                          dormancy=dormancy, layer_proportion=layer, actor_mask=mask, key=key)
        # theirs: each leaf of {"actor", "critic"} with its own key (jax.random.split over the leaves)
        u, leaves = [], jax.tree.leaves(params)
        for i, (k, p, g, lp, d, a) in enumerate(zip(jax.random.split(key, len(leaves)), leaves,
                                                     jax.tree.leaves(grads), jax.tree.leaves(layer),
                                                     jax.tree.leaves(dormancy), jax.tree.leaves(mask))):
            eps = np.asarray(jax.random.normal(k, p.shape), np.float64).ravel() * a.ravel()
            u_i, theirs["m"][i], theirs["h"][i] = authors_update(
                weights, p.ravel().astype(np.float64), g.ravel().astype(np.float64), theirs["m"][i], theirs["h"][i],
                (tp, float(lp.ravel()[0]), bp, d.ravel().astype(np.float64)), eps)
            u.append(u_i)
        u = np.concatenate(u)
        expected = -(u - u.mean())  # p <- p - (u - mean u), as an optax update
        ours = np.asarray(jax.flatten_util.ravel_pytree(updates)[0], np.float64)
        difference = np.abs(ours - expected).max() / np.abs(expected).max()
        print(f"{name}, update {step + 1}: max |ours - authors'| / max |authors'| = {difference:.1e}")
        assert difference < 1e-5  # float32 rounding (measured about 1e-6)
        assert np.abs(u.mean()) > 1e-3 * np.abs(u).max()  # the joint zero-mean matters here
        params = jax.tree.map(lambda p, d: (p + np.asarray(d)).astype(np.float32), params, updates)


def test_a_file_that_is_no_learned_optimizer_is_refused_as_such(tmp_path):
    """--eval with the tuned settings (JSON), a msgpack of something else, or a truncated optimizer: the message says
    what the file holds and what is expected, and gives no advice to delete (that is for a run's own checkpoint)."""
    other = str(tmp_path / "other.msgpack")
    runs.write_atomic(other, serialization.msgpack_serialize({"weights": np.zeros(3)}))
    cut = str(tmp_path / "cut.msgpack")
    with open(os.path.join(ROOT, "trained", "open_catch.msgpack"), "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    tuned = os.path.join(ROOT, "trained", "tuned.json")
    for path, found in ((tuned, "JSON text"), (other, "a msgpack with keys weights; expected config, meta_params"),
                        (cut, f"{len(data) // 2} bytes that are not msgpack")):
        with pytest.raises(ValueError, match=f"{path} is not a learned optimizer .*: it holds {found}") as error:
            open_es.learned_optimizer(path)
        assert "delete" not in str(error.value)


def test_bad_npy_files_are_refused_with_the_valid_lengths(tmp_path):
    with open(os.path.join(AUTHORS, "breakout_OPEN.npy"), "rb") as f:
        released = f.read()
    truncated, wrong_length, wrong_type = (str(tmp_path / n) for n in ("cut.npy", "long.npy", "double.npy"))
    with open(truncated, "wb") as f:
        f.write(released[:-40])
    np.save(wrong_length, np.zeros(1212, np.float32))
    np.save(wrong_type, np.zeros(1211, np.float64))
    for path in (truncated, wrong_length, wrong_type):
        with pytest.raises(ValueError, match=f"{path}.*1211 \\(GRU 8, hidden 16\\) or 3571 \\(GRU 16, hidden 32\\)"):
            open_es.learned_optimizer(path)
    config, meta = open_es.load_optimizer(os.path.join(AUTHORS, "multi_OPEN.npy"))
    assert (config.gru_size, config.hidden_size) == (16, 32)
    assert jax.flatten_util.ravel_pytree(meta)[0].size == 3571


def test_paper_presets_start_es_at_zero_with_the_authors_adam():
    for name in ("breakout", "multitask", "gridworld", "ant"):
        config = replace(CONFIG, **open_es.PRESETS[name])
        assert (config.es_init, config.es_b1) == ("zeros", 0.99)
        mean = open_es.initial_mean(config, open_es.init_meta_params(config, jax.random.PRNGKey(0)))
        assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(mean))
    assert replace(CONFIG, **open_es.PRESETS["breakout"]).ppo.time_limit == "terminal"
    mean = open_es.initial_mean(CONFIG, open_es.init_meta_params(CONFIG, jax.random.PRNGKey(0)))
    assert float(jnp.abs(jax.flatten_util.ravel_pytree(mean)[0]).max()) > 0  # the CPU default
