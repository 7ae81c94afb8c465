"""OPEN (Goldie et al., 2024): a learned optimizer for RL, meta-trained with OpenAI-ES on the final return of PPO.

    python open_es.py                        # meta-train on Catch on a laptop CPU (~10 min), then evaluate vs Adam
    python open_es.py --preset breakout      # OPEN's MinAtar setting (Tables 3, 4, 7): for GPUs
    python open_es.py --eval runs/open_catch/optimizer.msgpack --ppo.env-name Catch-bsuite

The optimizer (Section 5.1, Appendix B): per parameter, 19 inputs (gradient and six momenta as sign and log|.|,
normalised per tensor; parameter value; training and batch proportion; dormancy; layer proportion) go through a
GRU(8) and Dense 16 + LayerNorm + ReLU twice to three outputs (m, e, delta). The update is
    u_hat = a1 * m * exp(a2 * e)               (eq. 7)
    u_hat += a3 * delta * eps, eps ~ N(0, 1)   (eq. 8, actor only)
    u = u_hat - mean(u_hat);  p <- p - u       (eq. 9, mean over all parameters of the network)
It is an optax transformation: `open_optimizer(config)(meta_params)` trains any `ppo.py` agent (and any other model:
missing context gets neutral defaults and no noise).

Meta-training (Section 5.2, Table 7): evosax's OpenAI-ES, antithetic sampling, centred ranks, exponentially decaying
sigma and learning rate (Adam on the ES mean). One generation, every population member training PPO agents over
`num_rollouts` seeds shared by all members (common random numbers) and evaluating the final policy, is one jitted
XLA program. Fitness is the final return of that evaluation; evosax minimises, so it is told -return.
"""
import os
# XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped programs (every thread idle): switch it off
# before jax starts.
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")
import json
import time
from dataclasses import asdict, dataclass, replace

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from evosax.algorithms import Open_ES
from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn
from flax import serialization

import ppo
from ppo import PPOConfig

# The default inner task, small enough for a laptop CPU: PPO on Catch for 32k steps (Adam solves it). Catch episodes
# last 9 steps, so 256 evaluation episodes of at most 10 steps are cheap and keep the fitness noise low.
CATCH = replace(ppo.PPOConfig(), env_name="Catch-bsuite", num_envs=32, num_steps=16, total_timesteps=32_768,
                num_minibatches=2, update_epochs=2, width=32, activation="relu", learning_rate=3e-3,
                anneal_lr=False, eval_episodes=256, eval_max_steps=10, log_every=0)


@dataclass(frozen=True)
class OpenConfig:
    ppo: PPOConfig = CATCH  # the inner task: PPO settings (OPEN Table 3) and the Adam it is compared with
    gru_size: int = 8  # GRU hidden size (Table 1; 16 for multi-task, Table 2)
    hidden_size: int = 16  # width of the two LayerNorm MLP layers (Table 1; 32 for multi-task)
    alpha1: float = 1e-3  # update scale (eq. 7; App. B.4)
    alpha2: float = 1e-3  # exponent scale (eq. 7)
    alpha3: float = 1e-3  # noise scale (eq. 8)
    population_size: int = 16  # ES population (Table 7: 64; Ant 32); even, for antithetic sampling
    num_rollouts: int = 1  # PPO seeds per member and generation (Table 7: 1)
    # ES noise std. Table 7: MinAtar 0.03, Ant and gridworld 0.01 (the presets); larger for the CPU default, so that
    # a 16-member population behaves distinctly from its first generations.
    sigma_init: float = 0.1
    sigma_decay: float = 0.999  # per-generation decay of sigma (Table 7)
    es_learning_rate: float = 0.05  # Adam step size on the ES mean (Table 7: MinAtar 0.03, Ant 0.01, grid 0.005)
    es_learning_rate_decay: float = 0.999  # per-generation decay of that step size (Table 7)
    generations: int = 60  # generations of meta-training
    eval_every: int = 10  # evaluate the ES mean on held-out seeds every this many generations (Table 7: 24)
    checkpoint_every: int = 5  # save the meta-training state every this many generations
    eval_seeds: int = 16  # held-out seeds of those evaluations and of the final report
    seed: int = 0  # meta-training seed
    out_dir: str = "runs/open_catch"  # checkpoint, learned optimizer, plots and summary
    eval: str = ""  # a learned optimizer's file: skip meta-training, evaluate it on `ppo.env_name` vs Adam in out_dir


MINATAR_ES = dict(population_size=64, sigma_init=0.03, sigma_decay=0.999, es_learning_rate=0.03,
                  es_learning_rate_decay=0.999, generations=700, eval_every=24)
PRESETS = {
    "default": {},
    **{name: dict(MINATAR_ES, out_dir=f"runs/open_{name}",
                  ppo=replace(ppo.PPOConfig(), **ppo.PRESETS[name], log_every=0))
       for name in ("asterix", "breakout", "freeway", "spaceinvaders")},
    "ant": dict(population_size=32, sigma_init=0.01, sigma_decay=0.999, es_learning_rate=0.01,
                es_learning_rate_decay=0.999, generations=700, eval_every=24, out_dir="runs/open_ant",
                ppo=replace(ppo.PPOConfig(), **ppo.PRESETS["ant"], log_every=0)),
}


def validate(config):
    """Refuse bad settings with a message naming the value, before anything compiles."""
    ppo.validate(config.ppo)
    if config.population_size < 2 or config.population_size % 2:
        raise ValueError(f"population_size must be even and at least 2 for antithetic sampling, "
                         f"got {config.population_size}")
    for name in ("gru_size", "hidden_size", "num_rollouts", "generations", "eval_every", "checkpoint_every",
                 "eval_seeds"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    if config.eval and not os.path.isfile(config.eval):
        raise ValueError(f"no learned optimizer at eval path {config.eval!r}")


# ----------------------------------------------------------------------------------------------- the optimizer
MOMENTUM_BETAS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)  # App. B.2
NUM_INPUTS = 19  # 2 (gradient) + 12 (momenta) + parameter + training, batch and layer proportion + dormancy


class OpenNetwork(nn.Module):
    """GRU, then Dense + LayerNorm + ReLU twice, then Dense 3 (Table 1), applied to each parameter independently."""
    gru_size: int
    hidden_size: int

    @nn.compact
    def __call__(self, hidden, inputs):
        hidden, x = nn.GRUCell(self.gru_size)(hidden, inputs)
        for _ in range(2):
            x = nn.relu(nn.LayerNorm()(nn.Dense(self.hidden_size)(x)))
        return hidden, nn.Dense(3)(x)


def sign_log(x, eps=1e-8):
    """x -> (sign x, log(|x| + eps)): magnifies differences between small values (App. B.2, after Lan et al.)."""
    return [jnp.sign(x), jnp.log(jnp.abs(x) + eps)]


def per_tensor_unit_second_moment(features, sizes):
    """Scale each feature channel to second moment 1 within each parameter tensor (App. B.2, after Metz et al.).
    features: (N, C) for N parameters, the tensors' entries one after another with the given sizes."""
    bounds = np.cumsum([0] + list(sizes))
    return jnp.concatenate([x * jax.lax.rsqrt(1e-5 + jnp.mean(x ** 2, axis=0))
                            for x in (features[a:b] for a, b in zip(bounds[:-1], bounds[1:]))])


def optimizer_inputs(grad, momenta, param, sizes, training_proportion, batch_proportion, dormancy,
                     layer_proportion):
    """The 19 inputs of each of N parameters, shape (N, 19); arguments are flat (N,) vectors, momenta (6, N)."""
    tensor_features = jnp.stack(sign_log(grad) + sum((sign_log(m) for m in momenta), []) + [param], -1)
    tensor_features = per_tensor_unit_second_moment(tensor_features, sizes)
    proportions = jnp.broadcast_to(jnp.stack([training_proportion, batch_proportion]), (grad.shape[0], 2))
    return jnp.concatenate([tensor_features, proportions, dormancy[:, None], layer_proportion[:, None]], -1)


def update_from_outputs(outputs, noise, config):
    """Eqs. 7-9: u for network outputs (N, 3) = (m, e, delta) and noise (N,), eps ~ N(0, 1) on actor parameters and
    0 elsewhere. The mean is one scalar over all N parameters of the network (OPEN's code)."""
    m, e, delta = outputs.T
    u_hat = config.alpha1 * m * jnp.exp(config.alpha2 * e) + config.alpha3 * delta * noise
    return u_hat - u_hat.mean()


def open_optimizer(config):
    """`optimizer_fn(meta_params)` -> the OPEN optax transformation (Algorithm 1). All parameters are handled as
    one flat vector of N entries; the state holds six momenta (6, N) and a GRU hidden state (N, gru_size)."""
    network = OpenNetwork(config.gru_size, config.hidden_size)
    betas = jnp.asarray(MOMENTUM_BETAS)[:, None]

    def optimizer_fn(meta_params):
        def init(params):
            size = jax.flatten_util.ravel_pytree(params)[0].size
            return {"momenta": jnp.zeros((len(MOMENTUM_BETAS), size)), "hidden": jnp.zeros((size, config.gru_size))}

        def update(grads, state, params, training_proportion=0.0, batch_proportion=0.0, dormancy=None,
                   layer_proportion=None, actor_mask=None, key=None, **_):
            grad, unravel = jax.flatten_util.ravel_pytree(grads)

            def flat(tree, default):
                return default if tree is None else jax.flatten_util.ravel_pytree(tree)[0]

            sizes = [g.size for g in jax.tree.leaves(grads)]
            momenta = betas * state["momenta"] + (1 - betas) * grad
            inputs = optimizer_inputs(grad, momenta, flat(params, None), sizes,
                                      jnp.float32(training_proportion), jnp.float32(batch_proportion),
                                      flat(dormancy, jnp.ones_like(grad)), flat(layer_proportion, jnp.ones_like(grad)))
            hidden, outputs = network.apply(meta_params, state["hidden"], inputs)
            if actor_mask is None or key is None:  # no noise: critics, and plain optax use outside RL
                noise = jnp.zeros_like(grad)
            else:
                noise = jax.random.normal(key, grad.shape) * flat(actor_mask, None)
            u = update_from_outputs(outputs, noise, config)
            return unravel(-u), {"momenta": momenta, "hidden": hidden}  # optax adds updates: p <- p - u

        return optax.GradientTransformationExtraArgs(init, update)

    return optimizer_fn


def init_meta_params(config, rng):
    network = OpenNetwork(config.gru_size, config.hidden_size)
    return network.init(rng, jnp.zeros((1, config.gru_size)), jnp.zeros((1, NUM_INPUTS)))


# ----------------------------------------------------------------------------------------------- meta-training
def make_es(config, meta_params):
    """OpenAI-ES (Salimans et al., 2017) from evosax with OPEN's Table 7 settings."""
    return Open_ES(
        population_size=config.population_size, solution=meta_params, use_antithetic_sampling=True,
        optimizer=optax.adam(optax.exponential_decay(config.es_learning_rate, 1, config.es_learning_rate_decay)),
        std_schedule=optax.exponential_decay(config.sigma_init, 1, config.sigma_decay),
        fitness_shaping_fn=centered_rank_fitness_shaping_fn)


def es_fitness(returns):
    """evosax minimises: fitness is -return, and a NaN or infinite return gets +inf, so it ranks last."""
    return jnp.where(jnp.isfinite(returns), -returns, jnp.inf)


def make_generation(es, member_returns):
    """One ES generation as one jitted program: ask, evaluate every member, tell.
    `member_returns(population, key)` gives each member's return, shape (population_size,)."""
    @jax.jit
    def generation(state, key):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, es.default_params)
        returns = member_returns(population, eval_key)
        state, _ = es.tell(tell_key, population, es_fitness(returns), state, es.default_params)
        finite = jnp.isfinite(returns)
        return state, {"mean_return": jnp.sum(jnp.where(finite, returns, 0)) / jnp.maximum(finite.sum(), 1),
                       "best_return": jnp.max(jnp.where(finite, returns, -jnp.inf)),
                       "non_finite": jnp.sum(~finite), "sigma": state.std}
    return generation


def make_ppo_returns(config):
    """`returns(meta_params, keys)`: final return of a PPO agent trained with OPEN, one per key (vmapped)."""
    train = ppo.make_train(config.ppo, open_optimizer(config))
    return jax.vmap(lambda meta_params, key: train(key, meta_params)["final_return"], in_axes=(None, 0))


def make_member_returns(config):
    """Each member's mean final return over `num_rollouts` PPO seeds, the same seeds for every member."""
    returns = make_ppo_returns(config)

    def member_returns(population, key):
        keys = jax.random.split(key, config.num_rollouts)
        return jax.vmap(returns, in_axes=(0, None))(population, keys).mean(1)
    return member_returns


def held_out_keys(config):
    return jax.vmap(jax.random.PRNGKey)(jnp.arange(10_000, 10_000 + config.eval_seeds))


# ----------------------------------------------------------------------------------------------- files
def config_from_dict(d):
    return OpenConfig(**{**d, "ppo": ppo.PPOConfig(**d["ppo"])})


def save_atomic(path, payload):
    """Write msgpack to a temporary file, then rename it over `path`: a reader never sees a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(payload))
    os.replace(tmp, path)


def load(path):
    with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())


def check_architecture(config, stored_config, path):
    """Refuse a file written for another optimizer or population size."""
    for name in ("gru_size", "hidden_size", "population_size"):
        if getattr(config, name) != stored_config[name]:
            raise ValueError(f"{path} was written with {name} = {stored_config[name]}, but this run has "
                             f"{name} = {getattr(config, name)}")


def load_optimizer(path):
    """(config, meta_params) of a learned optimizer saved by `meta_train`."""
    payload = load(path)
    config = config_from_dict(json.loads(payload["config"]))
    template = init_meta_params(config, jax.random.PRNGKey(0))
    return config, serialization.from_state_dict(template, payload["meta_params"])


# ----------------------------------------------------------------------------------------------- the main job
def meta_train(config):
    """Meta-train OPEN; returns the meta-parameters with the best held-out return. Resumes from `out_dir`."""
    os.makedirs(config.out_dir, exist_ok=True)
    checkpoint_path = os.path.join(config.out_dir, "checkpoint.msgpack")
    meta_params = init_meta_params(config, jax.random.PRNGKey(config.seed))
    es = make_es(config, meta_params)
    unravel = jax.flatten_util.ravel_pytree(meta_params)[1]
    state = es.init(jax.random.PRNGKey(config.seed), meta_params, es.default_params)
    generation = make_generation(es, make_member_returns(config))
    held_out = jax.jit(lambda params: make_ppo_returns(config)(params, held_out_keys(config)).mean())
    history = {"mean_return": [], "best_return": [], "non_finite": [], "sigma": [], "eval_generation": [],
               "eval_return": []}
    best = {"return": -np.inf, "generation": 0, "meta_params": meta_params}
    start = 0
    if os.path.exists(checkpoint_path):
        saved = load(checkpoint_path)
        check_architecture(config, json.loads(saved["config"]), checkpoint_path)
        state = serialization.from_state_dict(state, saved["es_state"])
        history = {k: list(np.asarray(v).tolist()) for k, v in saved["history"].items()}
        best = {"return": float(saved["best"]["return"]), "generation": int(saved["best"]["generation"]),
                "meta_params": serialization.from_state_dict(meta_params, saved["best"]["meta_params"])}
        start = int(saved["generation"])
        print(f"resumed from {checkpoint_path} at generation {start}")

    def evaluate_mean(g):
        value = float(held_out(unravel(state.mean)))
        history["eval_generation"].append(g)
        history["eval_return"].append(value)
        if value > best["return"]:
            best.update({"return": value, "generation": g, "meta_params": unravel(state.mean)})
        print(f"  held-out return of the ES mean after {g} generations: {value:.3f} (best {best['return']:.3f} "
              f"at generation {best['generation']})", flush=True)

    if start == 0:
        evaluate_mean(0)
    for g in range(start, config.generations):
        tic = time.time()
        state, metrics = jax.block_until_ready(
            generation(state, jax.random.fold_in(jax.random.PRNGKey(config.seed), g)))
        for k in ("mean_return", "best_return", "non_finite", "sigma"):
            history[k].append(float(metrics[k]))
        print(f"generation {g + 1}/{config.generations}  mean {float(metrics['mean_return']):.3f}  "
              f"best {float(metrics['best_return']):.3f}  sigma {float(metrics['sigma']):.4f}  "
              f"non-finite {int(metrics['non_finite'])}  {time.time() - tic:.1f} s", flush=True)
        if (g + 1) % config.eval_every == 0 or g + 1 == config.generations:
            evaluate_mean(g + 1)
        if (g + 1) % config.checkpoint_every == 0 or g + 1 == config.generations:
            save_atomic(checkpoint_path, {
                "config": json.dumps(asdict(config)), "generation": g + 1,
                "es_state": serialization.to_state_dict(state),
                "history": {k: np.asarray(v, np.float64) for k, v in history.items()},
                "best": {"return": best["return"], "generation": best["generation"],
                         "meta_params": serialization.to_state_dict(best["meta_params"])}})
    save_atomic(os.path.join(config.out_dir, "optimizer.msgpack"), {
        "config": json.dumps(asdict(config)), "meta_params": serialization.to_state_dict(best["meta_params"]),
        "generation": best["generation"], "held_out_return": best["return"]})
    plot_fitness(history, os.path.join(config.out_dir, "fitness.png"))
    return best["meta_params"], history


def plot_fitness(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    generations = np.arange(1, len(history["mean_return"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(generations, history["mean_return"], label="population mean")
    ax.plot(generations, history["best_return"], label="population best", alpha=0.6)
    ax.plot(history["eval_generation"], history["eval_return"], "o-", label="ES mean, held-out seeds")
    ax.set(xlabel="generation", ylabel="final return", title="OPEN meta-training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(config, meta_params, out_dir):
    """Train fresh PPO agents with the learned optimizer and with Adam on `eval_seeds` held-out seeds; IQM and mean
    with 95% stratified bootstrap CIs (rliable; Agarwal et al., 2021); a return-curve PNG and summary.md."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import metrics as rly_metrics

    keys = held_out_keys(config)
    adam = ppo.hand_designed("adam", ppo.optimizer_steps(config.ppo) if config.ppo.anneal_lr else None)
    runs = {}
    for name, optimizer_fn, optimizer_params in (("OPEN", open_optimizer(config), meta_params),
                                                 ("Adam", adam, ppo.hyperparameters(config.ppo))):
        train = jax.jit(jax.vmap(ppo.make_train(config.ppo, optimizer_fn), in_axes=(0, None)))
        out = jax.device_get(train(keys, optimizer_params))
        runs[name] = {"final": np.asarray(out["final_return"]), "curve": np.asarray(out["metrics"]["episode_return"])}
    scores = {name: run["final"][:, None] for name, run in runs.items()}
    aggregate = lambda x: np.array([rly_metrics.aggregate_iqm(x), rly_metrics.aggregate_mean(x)])  # noqa: E731
    points, intervals = rly.get_interval_estimates(scores, aggregate, reps=2000)
    lines = [f"# OPEN vs Adam on {config.ppo.env_name}", "",
             f"PPO {config.ppo.total_timesteps:,} steps, {config.eval_seeds} held-out seeds; 95% stratified "
             f"bootstrap CIs (rliable).", "", "| optimizer | IQM final return | mean final return |", "|---|---|---|"]
    for name in runs:
        (iqm, mean), ci = points[name], intervals[name]
        lines.append(f"| {name} | {iqm:.3f} [{ci[0, 0]:.3f}, {ci[1, 0]:.3f}] | {mean:.3f} [{ci[0, 1]:.3f}, "
                     f"{ci[1, 1]:.3f}] |")
    summary = "\n".join(lines) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        steps = (np.arange(run["curve"].shape[1]) + 1) * config.ppo.num_envs * config.ppo.num_steps
        mean, std = np.nanmean(run["curve"], 0), np.nanstd(run["curve"], 0)
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="environment steps", ylabel="episode return", title=f"PPO on {config.ppo.env_name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "returns.png"), dpi=100)
    plt.close(fig)
    print("\n" + summary)
    return runs


def main(config):
    validate(config)
    if config.eval:
        trained_config, meta_params = load_optimizer(config.eval)
        config = replace(trained_config, ppo=config.ppo, eval_seeds=config.eval_seeds)
        report(config, meta_params, config.out_dir)
        return
    start = time.time()
    meta_params, _ = meta_train(config)
    print(f"meta-training took {time.time() - start:.0f} s; learned optimizer: "
          f"{os.path.join(config.out_dir, 'optimizer.msgpack')}")
    report(config, meta_params, config.out_dir)


if __name__ == "__main__":
    main(ppo.parse_config(OpenConfig, PRESETS))
