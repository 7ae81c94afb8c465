"""baselines.py: the sweep picks the best setting, the IQM and its stratified bootstrap CI match a hand computation,
every registered optimizer trains a tiny agent, the tuning file round-trips, bad input is refused."""
import itertools
import json
import os
import sys
from dataclasses import asdict, replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import baselines  # noqa: E402
import open_es  # noqa: E402
import optim4rl_metagrad  # noqa: E402
import ppo  # noqa: E402
import runs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = replace(ppo.PPOConfig(), env_name="Catch-bsuite", num_envs=4, num_steps=8, total_timesteps=64,
               num_minibatches=2, update_epochs=1, width=8, eval_episodes=4, eval_max_steps=10, log_every=0)


def test_grid_is_the_product_of_the_ranges():
    config = baselines.BaselinesConfig(num_learning_rates=3, betas=(0.9, 0.99), anneal=(False, True))
    adam = baselines.grid("adam", "breakout", config)
    assert len(adam["learning_rate"]) == 3 * 2 * 2 * 2
    np.testing.assert_allclose(np.unique(adam["learning_rate"]), [1e-3, 10 ** -2.5, 1e-2], rtol=1e-6)  # Table 4
    assert set(adam["anneal"]) == {0.0, 1.0}
    np.testing.assert_allclose(np.unique(adam["b2"]), [0.9, 0.99], rtol=1e-6)
    rmsprop = baselines.grid("rmsprop", "ant", config)
    assert len(rmsprop["learning_rate"]) == 3 * 2 * 2
    np.testing.assert_allclose(np.unique(rmsprop["decay"]), [0.9, 0.99], rtol=1e-6)
    np.testing.assert_allclose(rmsprop["learning_rate"].max(), 5e-3, rtol=1e-6)  # Table 5


def test_sweep_picks_the_known_best_setting():
    """A synthetic 'training run' whose return peaks at lr = 10^-2.5, b1 = 0.99, plus seed noise; the setting with a
    higher return but a NaN on one seed must not win."""
    config = baselines.BaselinesConfig(num_learning_rates=3, betas=(0.9, 0.99, 0.999))
    settings = baselines.grid("adam", "breakout", config)

    def run(key, s):
        score = -(jnp.log10(s["learning_rate"]) + 2.5) ** 2 - 100 * (s["b1"] - 0.99) ** 2 - s["anneal"] \
            + 0.01 * jax.random.normal(key)
        poisoned = (s["learning_rate"] > 5e-3) & (s["b1"] < 0.95) & (s["anneal"] == 0)
        return {"final_return": jnp.where(poisoned, jnp.where(key[-1] == 0, jnp.nan, 100.0), score)}

    for per_batch in (0, 5):  # all at once, and in batches of 5 settings (with a remainder)
        returns = jax.jit(lambda s, k, n=per_batch: baselines.sweep(run, s, k, n))(settings,
                                                                                baselines.tune_keys(config, 4))
        assert returns.shape == (len(settings["learning_rate"]), 4)
        best, mean = baselines.best_setting(settings, np.asarray(returns))
        assert best["learning_rate"] == pytest.approx(10 ** -2.5, rel=1e-5)
        assert best["b1"] == pytest.approx(0.99) and best["anneal"] == 0.0
        assert mean == pytest.approx(0.0, abs=0.05)


def exact_stratified_bootstrap(data, statistic):
    """Percentile 95% interval over every stratified resample of a (runs, tasks) matrix, all equally likely: each
    task's runs drawn with replacement in all runs^runs ways (2 tasks here)."""
    runs, tasks = data.shape
    assert tasks == 2
    draws = np.array(list(itertools.product(range(runs), repeat=runs)))  # (runs^runs, runs)
    first, second = data[draws, 0], data[draws, 1]
    pairs = np.concatenate([np.repeat(first, len(draws), 0), np.tile(second, (len(draws), 1))], 1)
    return np.percentile(statistic(pairs), [2.5, 97.5])


def iqm(x):
    """By hand: sort each row of n scores and average the middle half (n divisible by 4)."""
    x = np.sort(x, -1)
    n = x.shape[-1]
    return x[..., n // 4: n - n // 4].mean(-1)


def test_iqm_and_bootstrap_ci_match_a_hand_computation():
    data = np.array([[0.1, 10.0], [0.4, 11.0], [0.9, 12.0], [3.0, 14.0]])  # 4 runs x 2 tasks
    # IQM by hand: the 8 scores sorted are .1, .4, .9, 3, 10, 11, 12, 14; the middle four average to 6.225.
    estimates = runs.interval_estimates({"x": data}, reps=20_000)["x"]
    assert estimates[0, 0] == pytest.approx((0.9 + 3.0 + 10.0 + 11.0) / 4)
    assert estimates[1, 0] == pytest.approx(data.mean())
    exact_iqm = exact_stratified_bootstrap(data, iqm)
    exact_mean = exact_stratified_bootstrap(data, lambda x: x.mean(-1))
    np.testing.assert_allclose(estimates[0, 1:], exact_iqm, atol=0.1)
    np.testing.assert_allclose(estimates[1, 1:], exact_mean, atol=0.1)
    # Not a trivial match: resampling the pooled runs, ignoring the tasks, gives a much wider interval.
    pooled = np.percentile(data.ravel()[np.random.default_rng(0).integers(0, 8, (20_000, 8))].mean(1), [2.5, 97.5])
    assert pooled[1] - pooled[0] > 2 * (exact_mean[1] - exact_mean[0])


def registered_optimizers():
    """Every optimizer the repo can plug into PPO, at its initial (meta-)parameters; annealing is a traced flag, so
    the hand-designed ones anneal on one seed and not on the other."""
    key = jax.random.PRNGKey(0)
    hyperparameters = dict({k: jnp.full(2, v) for k, v in ppo.hyperparameters(TINY).items()},
                           anneal=jnp.float32([0.0, 1.0]))
    candidates = {name: (ppo.hand_designed(name, 8), hyperparameters, 0) for name in ppo.OPTIMIZERS}
    open_config = open_es.OpenConfig()
    candidates["OPEN"] = (open_es.open_optimizer(open_config), open_es.init_meta_params(open_config, key), None)
    for architecture in optim4rl_metagrad.ARCHITECTURES:
        config = optim4rl_metagrad.Optim4RLConfig(architecture=architecture)
        candidates[architecture] = (optim4rl_metagrad.make_optimizer_fn(config),
                                    {"meta": optim4rl_metagrad.init_meta_params(config, key),
                                     "learning_rate": jnp.float32(1e-3)}, None)
    return candidates


def test_every_registered_optimizer_trains_a_tiny_agent():
    """All of them in one jitted program (one compilation), two seeds each."""
    candidates = registered_optimizers()
    keys = jax.random.split(jax.random.PRNGKey(1), 2)

    def train_all():
        return {name: jax.vmap(ppo.make_train(TINY, fn), in_axes=(0, axis))(keys, params)
                for name, (fn, params, axis) in candidates.items()}
    out = jax.jit(train_all)()
    assert set(out) >= {"adam", "rmsprop", "lion", "sgd", "OPEN", "optim4rl", "linear_optim"}
    for name, run in out.items():
        assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(run["params"])), name
        assert np.isfinite(np.asarray(run["final_return"])).all(), name
        assert np.isfinite(np.asarray(run["metrics"]["loss"])).all(), name


def test_tune_then_report_round_trip(tmp_path, monkeypatch):
    """A tiny sweep writes the best setting per optimizer into out_dir/tuned.json, and into the shipped file only when
    asked (merged, not overwritten); the report reads it back and writes its tables and plots, here with one of the
    OPEN authors' released optimizers."""
    monkeypatch.setitem(baselines.TASKS, "tiny", TINY)
    monkeypatch.setitem(baselines.LEARNING_RATE_RANGES, "tiny", baselines.MINATAR_RANGES)
    tuned_path = tmp_path / "tuned.json"
    shipped = json.dumps({"Other-env": {"ppo": {}, "optimizers": {"adam": {"final_return": 1.0}}}})
    tuned_path.write_text(shipped)
    config = baselines.BaselinesConfig(tasks=("tiny",), optimizers=("adam",), num_learning_rates=2,
                                       betas=(0.9,), anneal=(False,), tune_seeds=2, eval_seeds=3,
                                       learned=(os.path.join(ROOT, "trained", "authors", "breakout_OPEN.npy"),),
                                       bootstrap_reps=100, tuned_path=str(tuned_path), out_dir=str(tmp_path / "out"))
    baselines.main(config)
    assert tuned_path.read_text() == shipped  # the shipped file is untouched by default
    tuned = json.loads((tmp_path / "out" / "tuned.json").read_text())
    adam = tuned["Catch-bsuite"]["optimizers"]["adam"]
    assert min(abs(adam["learning_rate"] / lr - 1) for lr in (1e-3, 1e-2)) < 1e-6 and adam["num_seeds"] == 2
    sweep = json.loads((tmp_path / "out" / "sweep_tiny.json").read_text())
    assert max(np.mean(sweep["adam"]["final_returns"], 1)) == pytest.approx(adam["final_return"])
    assert tuned["Catch-bsuite"]["ppo"]["num_envs"] == TINY.num_envs
    table = (tmp_path / "out" / "results.md").read_text()
    assert "## tiny:" in table and "| adam |" in table and "| breakout_OPEN |" in table
    raw = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert len(raw["adam"]["final_returns"]) == 3 and len(raw["breakout_OPEN"]["training_returns"]) == 3
    assert (tmp_path / "out" / "tiny.png").exists()
    baselines.main(replace(config, mode="tune", update_tuned=True))
    assert set(json.loads(tuned_path.read_text())) == {"Other-env", "Catch-bsuite"}
    assert not list(tmp_path.glob("**/*.tmp"))


def test_optim4rl_by_es_runs_at_a_tenth_of_tuned_adams_learning_rate(tmp_path):
    """OPEN Sec. 6.1: lr = 0.1 x Adam's tuned lr (from the tuned settings file), fixed while ES evolves the network;
    the update is optim4rl_metagrad's Optim4RL at OPEN's sizes."""
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"Catch-bsuite": {"ppo": {}, "optimizers": {"adam": {"learning_rate": 0.01}}}}))
    assert runs.tuned_settings(str(path), "Catch-bsuite", ["adam"])["adam"]["learning_rate"] == 0.01
    with pytest.raises(ValueError, match="no tuned adam for 'Breakout-MinAtar' in .*tuned.json"):
        runs.tuned_settings(str(path), "Breakout-MinAtar", ["adam"])
    es = replace(open_es.OpenConfig(), optimizer="optim4rl")
    grads = {"w": jnp.array([0.3, -2.0, 1e-4])}
    for learning_rate, expected in ((1e-3, 1e-3), (0.0, 0.1 * es.ppo.learning_rate)):  # 0: older files
        optimizer_fn, meta_params = baselines.optim4rl_by_es(replace(es, optim4rl_learning_rate=learning_rate))
        reference_config = optim4rl_metagrad.Optim4RLConfig(gru_size=8, mlp_sizes=(16, 16), gradient_processing=True,
                                                             zero_readout=True)
        reference = optim4rl_metagrad.make_optimizer_fn(reference_config)({"meta": meta_params,
                                                                           "learning_rate": expected})
        optimizer = optimizer_fn(meta_params)
        updates, _ = optimizer.update(grads, optimizer.init(grads), grads)
        reference_updates, _ = reference.update(grads, reference.init(grads), grads)
        np.testing.assert_allclose(updates["w"], reference_updates["w"], rtol=1e-6)
        assert np.abs(updates["w"]).max() > 0


def test_learned_optimizer_loads_shipped_and_baseline_files_for_ppo(tmp_path):
    """load_learned reads the shipped files (written before the newer config fields), an authors' .npy, and a No
    Features and an Optim4RL-by-ES file as open_es.meta_train writes them."""
    files = [os.path.join(ROOT, "trained", name) for name in ("open_catch.msgpack", "optim4rl_es_catch.msgpack",
                                                               "authors/breakout_OPEN.npy")]
    for optimizer, meta_params in (("no_features", None), ("optim4rl", None)):
        config = replace(open_es.OpenConfig(), optimizer=optimizer, ppo=TINY)
        meta_params = (baselines.optim4rl_by_es(config)[1] if optimizer == "optim4rl" else
                       open_es.init_meta_params(config, jax.random.PRNGKey(0)))
        files.append(str(tmp_path / f"{optimizer}.msgpack"))
        runs.write_atomic(files[-1], open_es.serialization.msgpack_serialize(
            {"config": json.dumps(asdict(config)), "inputs": json.dumps(open_es.INPUTS),
             "meta_params": open_es.serialization.to_state_dict(meta_params)}))
    params, grads = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}, {"w": jnp.linspace(0.1, 0.6, 6).reshape(3, 2)}
    for path in files:
        _, optimizer_fn, optimizer_params = baselines.load_learned(path)
        optimizer = optimizer_fn(optimizer_params)
        update, _ = optimizer.update(grads, optimizer.init(params), params)
        assert float(jnp.abs(update["w"]).max()) > 0, path
    # Optim4RL's learning rate is 0.1 x Adam's (Sec. 6.1): at initialisation it is close to sign-SGD
    assert float(jnp.abs(update["w"]).max()) == pytest.approx(0.1 * TINY.learning_rate, rel=0.5)
    out = jax.jit(ppo.make_train(TINY, optimizer_fn))(jax.random.PRNGKey(0), optimizer_params)
    assert np.isfinite(float(out["final_return"]))
    with pytest.raises(ValueError, match="holds Optim4RL trained by ES, not an OPEN optimizer"):
        open_es.load_optimizer(files[-1])


def test_the_main_jobs_adam_is_the_shipped_tuning_of_its_task():
    """open_es.py's default compares OPEN with Adam as baselines.py's sweep tuned it on that very task and budget."""
    with open(os.path.join(ROOT, "trained", "tuned.json")) as f:
        shipped = json.load(f)[open_es.CATCH.env_name]
    adam = shipped["optimizers"]["adam"]
    assert (open_es.CATCH.learning_rate, open_es.CATCH.b1, open_es.CATCH.b2, open_es.CATCH.anneal_lr) == \
        (adam["learning_rate"], adam["b1"], adam["b2"], bool(adam["anneal"]))
    task = {k: v for k, v in asdict(open_es.CATCH).items() if k not in ("learning_rate", "b1", "b2", "anneal_lr")}
    assert {k: shipped["ppo"].get(k) for k in task} == json.loads(json.dumps(task))  # tuned at the same PPO settings
