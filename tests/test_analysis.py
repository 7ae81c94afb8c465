"""analysis/open_appendix_f.py: the App. F statistics, ppo.make_train's optimizer-metrics hook, and the statistics
wrapper, which must leave the updates unchanged."""
import os
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import open_es
import ppo
from test_open import constant_output_meta_params

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "analysis"))
import open_appendix_f as analysis  # noqa: E402

CONFIG = replace(open_es.OpenConfig(), alpha1=0.01, alpha2=0.5, alpha3=0.2)
# an agent as ppo.py hands it to the optimizer: {network: params}; flat: actor, then critic
PARAMS = {"actor": jnp.array([[1.0, -2.0, 0.0], [0.5, 4.0, -1.0]]), "critic": jnp.array([0.25, -0.5])}
ACTOR_MASK = {"actor": jnp.ones((2, 3)), "critic": jnp.zeros(2)}


def test_statistics_match_hand_computation():
    a, b = np.array([1.0, 2.0, -2.0]), np.array([3.0, 0.0, 4.0])
    # a.b = 3 - 8 = -5, |a| = 3, |b| = 5
    assert float(analysis.cosine_similarity(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(-5 / 15)
    assert float(analysis.cosine_similarity(jnp.zeros(3), jnp.asarray(b))) == 0.0
    x, p = np.array([0.5, -1.0, 3.0, 2.0, 1.0]), np.array([2.0, -0.5, 0.0, 4.0, 0.1])
    # entries 0, 1 and 4 count (entry 2 has p = 0, entry 3 is masked out): |x / p| = 0.25, 2, 10
    magnitudes = analysis.normalised_magnitudes("m", jnp.asarray(x), jnp.asarray(p), jnp.array([1.0, 1, 1, 0, 1]))
    assert float(magnitudes["m"]) == pytest.approx(12.25 / 3)
    assert float(magnitudes["m_median"]) == pytest.approx(2.0)
    none = analysis.normalised_magnitudes("m", jnp.asarray(x), jnp.zeros(5), jnp.ones(5))
    assert np.isnan(none["m"]) and np.isnan(none["m_median"])
    noise, update = np.array([3.0, 4.0, 100.0]), np.array([6.0, 8.0, 1.0])
    # masked to the first two entries: |(3, 4)| / |(6, 8)| = 5 / 10
    assert float(analysis.norm_share(jnp.asarray(noise), jnp.asarray(update), jnp.array([1.0, 1.0, 0.0]))) == \
        pytest.approx(0.5)


def test_ppo_reports_the_per_update_mean_of_optimizer_metrics():
    config = replace(ppo.PPOConfig(), env_name="Catch-bsuite", num_envs=4, num_steps=8, total_timesteps=96,
                     num_minibatches=2, update_epochs=2, width=4, eval_episodes=1, eval_max_steps=2, log_every=0)

    def reporting(_):
        def update(grads, state, params=None, training_proportion=None, batch_proportion=None, **context):
            metrics = {"tp": jnp.float32(training_proportion), "bp": jnp.full(3, batch_proportion, jnp.float32)}
            return jax.tree.map(jnp.zeros_like, grads), {"metrics": metrics}
        return optax.GradientTransformationExtraArgs(
            lambda params: {"metrics": {"tp": jnp.float32(0), "bp": jnp.zeros(3)}}, update)

    out = jax.jit(ppo.make_train(config, reporting))(jax.random.PRNGKey(0), {})
    reported = out["metrics"]["optimizer"]
    np.testing.assert_allclose(reported["tp"], [0, 0.5, 1], rtol=1e-6)  # 3 updates: u / (3 - 1)
    assert reported["bp"].shape == (3, 3)
    np.testing.assert_allclose(reported["bp"], 0.5)  # mean over epochs 0 and 1 of epoch / (2 - 1)
    plain = jax.eval_shape(ppo.make_train(config, ppo.hand_designed("sgd")), jax.random.PRNGKey(0),
                           ppo.hyperparameters(config))
    assert "optimizer" not in plain["metrics"]


def context(key):
    dormancy = jax.tree.map(lambda p: jnp.linspace(0.0, 2.0, p.size).reshape(p.shape), PARAMS)
    return dict(training_proportion=0.5, batch_proportion=0.25, dormancy=dormancy, actor_mask=ACTOR_MASK,
                layer_proportion=jax.tree.map(jnp.ones_like, PARAMS), key=key)


@pytest.mark.parametrize("name", ["OPEN", "Adam"])
def test_the_wrapper_leaves_the_updates_unchanged(name):
    """Equal up to float32 rounding: XLA may compile the update differently inside the wrapped program (1 ulp)."""
    if name == "OPEN":
        optimizer_fn, optimizer_params = open_es.open_optimizer(CONFIG), open_es.init_meta_params(
            CONFIG, jax.random.PRNGKey(3))
    else:
        optimizer_fn, optimizer_params = ppo.hand_designed("adam"), dict(learning_rate=1e-2, b1=0.9, b2=0.99)
    plain = optimizer_fn(optimizer_params)
    wrapped = analysis.with_statistics(optimizer_fn, CONFIG if name == "OPEN" else None)(optimizer_params)

    def steps(optimizer):
        """Five updates, in one jitted scan as in ppo.make_train."""
        def step(carry, key):
            params, state = carry
            grads = jax.tree.map(lambda p: jnp.sin(3 * p) + jax.random.normal(key, p.shape), params)
            updates, state = optimizer.update(grads, state, params, **context(key))
            return (optax.apply_updates(params, updates), state), updates
        return jax.jit(lambda: jax.lax.scan(step, (PARAMS, optimizer.init(PARAMS)),
                                            jax.random.split(jax.random.PRNGKey(0), 5)))()

    (plain_params, _), plain_updates = steps(plain)
    (wrapped_params, wrapped_state), wrapped_updates = steps(wrapped)
    for x, y in zip(jax.tree.leaves((plain_params, plain_updates)), jax.tree.leaves((wrapped_params,
                                                                                    wrapped_updates))):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)
    assert float(jnp.abs(plain_updates["actor"]).max()) > 0
    assert all(np.isfinite(wrapped_state["metrics"][net]["cos_gradient"]) for net in ("actor", "critic"))


def test_the_wrapper_measures_open_against_a_hand_computation():
    m, e, delta = 2.0, 1.0, -3.0
    optimizer = analysis.with_statistics(open_es.open_optimizer(CONFIG), CONFIG)(
        constant_output_meta_params(CONFIG, m, e, delta))
    grads = jax.tree.map(lambda p: 0.1 * p + 0.05, PARAMS)
    key = jax.random.PRNGKey(1)
    updates, state = optimizer.update(grads, optimizer.init(PARAMS), PARAMS, **context(key))
    flat = lambda tree: np.asarray(jax.flatten_util.ravel_pytree(tree)[0], np.float64)  # noqa: E731
    g, p, u, actor = flat(grads), flat(PARAMS), -flat(updates), flat(ACTOR_MASK)
    # Constant outputs: u_hat is the same everywhere, so the zero-mean update is all noise (one key per leaf; the
    # mean over actor and critic together).
    noise = np.concatenate([np.asarray(jax.random.normal(k, x.shape)).ravel() for k, x in
                            zip(jax.random.split(key, 2), jax.tree.leaves(PARAMS))]) * CONFIG.alpha3 * delta * actor
    np.testing.assert_allclose(u, noise - noise.mean(), rtol=1e-5, atol=1e-7)
    u_hat = CONFIG.alpha1 * m * np.exp(CONFIG.alpha2 * e)
    for name, part in (("actor", slice(0, 6)), ("critic", slice(6, 8))):
        metrics, gp, pp, up = state["metrics"][name], g[part], p[part], u[part]
        nonzero = pp != 0  # the parameter at 0 is left out
        assert float(metrics["non_stochastic_magnitude"]) == pytest.approx(np.mean(u_hat / np.abs(pp[nonzero])),
                                                                           rel=1e-5)
        assert float(metrics["non_stochastic_magnitude_median"]) == pytest.approx(
            np.median(u_hat / np.abs(pp[nonzero])), rel=1e-5)
        assert float(metrics["update_magnitude"]) == pytest.approx(np.mean(np.abs(up[nonzero] / pp[nonzero])),
                                                                   rel=1e-4)
        cos = up @ gp / np.linalg.norm(up) / np.linalg.norm(gp)
        assert float(metrics["cos_gradient"]) == pytest.approx(cos, rel=1e-4)
        # After one step from zero momenta, every momentum is (1 - beta) g: the same direction as g.
        np.testing.assert_allclose(metrics["cos_momenta"], np.full(6, cos), rtol=1e-4)
    actor_metrics = state["metrics"]["actor"]
    nonzero = p[:6] != 0
    assert float(actor_metrics["stochasticity"]) == pytest.approx(np.mean(abs(delta) / np.abs(p[:6][nonzero])),
                                                                  rel=1e-5)
    assert float(actor_metrics["noise_share"]) == pytest.approx(1.0, rel=1e-5)
    assert np.isnan(state["metrics"]["critic"]["stochasticity"])  # no actor parameters there
