"""Baselines for learned RL optimizers: tuned hand-designed optimizers and the evaluation report (OPEN Section 6.1 and
Appendix C.2, Tables 4-6; Optim4RL Section 6.1).

    python baselines.py                                # tune Adam, RMSprop, Lion and SGD on Catch, then the report
    python baselines.py --preset breakout              # OPEN's MinAtar sweep (Table 4 ranges, Table 3 PPO): for GPUs
    python baselines.py --mode report --learned trained/open_catch.msgpack runs/optim4rl_catch

1. Tuning (App. C.2): for each task, a grid over the learning rate (log-spaced over the optimizer's range of Tables
   4-6), beta1 / beta2 (Adam, Lion) or decay (RMSprop), and linear annealing of the learning rate to 0 on or off.
   Every setting trains PPO on `tune_seeds` seeds; the best setting by mean final return is written to `tuned_path`
   (trained/tuned.json), which the other scripts read: Adam's return normalises OPEN's multi-task fitness, and
   0.1 x Adam's learning rate is the learning rate of the Optim4RL-by-ES baseline. The whole sweep of one task, all
   optimizers, settings and seeds, is one jitted XLA program.
2. The report: every tuned optimizer and every learned optimizer in `learned` (files written by open_es.py or
   optim4rl_metagrad.py) trains PPO on `eval_seeds` held-out seeds of each task. IQM and mean final return with 95%
   stratified bootstrap confidence intervals (rliable; Agarwal et al., 2021), raw per task and normalised by tuned
   Adam across tasks; return curves and an IQM bar chart (PNG); a markdown table (results.md).

The learned baselines are trained by the repo's own machinery, one command each:
    python open_es.py --preset no_features            # OPEN's 'No Features' (gradient and momenta only), by ES
    python open_es.py --preset optim4rl               # Optim4RL trained by ES at 0.1 x Adam's lr (OPEN's baseline)
    python optim4rl_metagrad.py --architecture linear_optim   # Optim4RL's LinearOptim ablation, meta-gradients
    python optim4rl_metagrad.py --architecture l2lgd2         # Optim4RL's L2LGD^2 ablation, meta-gradients
"""
import os
# XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped programs (every thread idle): switch it off
# before jax starts.
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")
import itertools
import json
import time
from dataclasses import asdict, dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

import gridworld
import open_es
import optim4rl_metagrad
import ppo


@dataclass(frozen=True)
class BaselinesConfig:
    tasks: tuple[str, ...] = ("catch",)  # keys of TASKS: the PPO settings (OPEN Table 3) of each env
    mode: str = "all"  # "tune": the sweeps; "report": the evaluation (reads tuned_path); "all": both
    optimizers: tuple[str, ...] = ppo.OPTIMIZERS  # hand-designed optimizers to tune and report
    num_learning_rates: int = 4  # log-spaced learning rates over the range of Tables 4-6
    betas: tuple[float, ...] = (0.9, 0.99, 0.999)  # values of beta1, beta2 and RMSprop's decay (range [0.9, 0.999])
    anneal: tuple[bool, ...] = (False, True)  # linear annealing of the learning rate to 0, off and on (App. C.2)
    tune_seeds: int = 4  # seeds per setting (App. C.2: 4; 8 in the gridworld)
    settings_per_batch: int = 0  # settings vmapped at once within the sweep's program (0: all); less memory if > 0
    eval_seeds: int = 16  # held-out seeds per optimizer and task in the report (OPEN Fig. 9: 16)
    learned: tuple[str, ...] = ("trained/open_catch.msgpack", "trained/no_features_catch.msgpack",
                                "trained/optim4rl_es_catch.msgpack")  # learned optimizers in the report
    bootstrap_reps: int = 2000  # stratified bootstrap resamples of the confidence intervals
    tuned_path: str = "trained/tuned.json"  # best settings per env, read by open_es.py and by the report
    out_dir: str = "runs/baselines"  # sweep results, plots, results.md and metrics.jsonl (the printed results)
    wandb: bool = False  # log the metrics.jsonl records to Weights & Biases too (the `wandb` extra)
    seed: int = 0  # seeds of the sweep are seed, seed + 1, ...; the report uses held-out seeds 10000, ...


TASKS = {"catch": open_es.CATCH,  # open_es.py's default inner task: Catch, 32k steps
         **{name: replace(ppo.PPOConfig(), **ppo.PRESETS[name])
            for name in ("asterix", "breakout", "freeway", "spaceinvaders", "ant", "gridworld")}}
MINATAR_RANGES = {"adam": (1e-3, 1e-2), "rmsprop": (1e-3, 1e-2), "lion": (1e-4, 1e-3)}  # Table 4
LEARNING_RATE_RANGES = {  # Tables 4-6; gridworld RMSprop and Lion are not in Table 6: Adam's range, and 10x lower
    **{name: MINATAR_RANGES for name in ("asterix", "breakout", "freeway", "spaceinvaders")},
    "catch": {"adam": (1e-3, 3e-2), "rmsprop": (1e-3, 3e-2), "lion": (1e-4, 3e-3)},  # ours: brackets the best
    "ant": {"adam": (1e-4, 1e-3), "rmsprop": (1e-4, 5e-3), "lion": (1e-5, 5e-4)},  # Table 5
    "gridworld": {"adam": (5e-5, 1e-3), "rmsprop": (5e-5, 1e-3), "lion": (5e-6, 1e-4)},  # Table 6
}
SGD_RANGE = (1e-2, 3.0)  # SGD is not in the papers' tables: a wide range around the clipped-gradient scale
PRESETS = {
    "default": {},
    "minatar": dict(tasks=("asterix", "breakout", "freeway", "spaceinvaders"), learned=()),
    **{name: dict(tasks=(name,), learned=()) for name in TASKS if name != "catch"},
}
PRESETS["gridworld"]["tune_seeds"] = 8  # App. C.2
MODES = ("all", "tune", "report")


def validate(config):
    """Refuse bad settings with a message naming the value and the valid choices, before anything compiles."""
    for task in config.tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if not config.tasks:
        raise ValueError(f"tasks is empty; choose from {', '.join(TASKS)}")
    ppo.check_wandb(config.wandb)
    if config.mode not in MODES:
        raise ValueError(f"unknown mode {config.mode!r}; valid: {', '.join(MODES)}")
    for name in config.optimizers:
        if name not in ppo.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(ppo.OPTIMIZERS)}")
    for field in ("num_learning_rates", "tune_seeds", "eval_seeds", "bootstrap_reps"):
        if getattr(config, field) < 1:
            raise ValueError(f"{field} must be positive, got {getattr(config, field)}")
    if config.settings_per_batch < 0:
        raise ValueError(f"settings_per_batch must be 0 (all) or positive, got {config.settings_per_batch}")
    if not config.betas or not all(0 <= b < 1 for b in config.betas):
        raise ValueError(f"betas must be one or more values in [0, 1), got {config.betas}")
    if not config.anneal:
        raise ValueError("anneal must hold False, True or both")
    for path in config.learned:
        if learned_kind(path) == "open_es":
            open_es.load_optimizer(path)  # a bad file is refused here, before anything compiles
    if config.mode == "report":
        for task in config.tasks:
            tuned_settings(config.tuned_path, TASKS[task].env_name, config.optimizers)
    for task in config.tasks:
        ppo.validate(TASKS[task])


# ----------------------------------------------------------------------------------------------- the sweep
def grid(name, task, config):
    """The settings of optimizer `name` on `task`: {hyperparameter: array (settings,)}, the product of the
    learning rates, the betas the optimizer uses and annealing off/on."""
    low, high = SGD_RANGE if name == "sgd" else LEARNING_RATE_RANGES[task][name]
    learning_rates = np.geomspace(low, high, config.num_learning_rates)
    b1 = config.betas if name in ("adam", "lion") else (0.9,)
    b2 = config.betas if name in ("adam", "lion") else (0.999,)
    decay = config.betas if name == "rmsprop" else (0.9,)
    rows = list(itertools.product(learning_rates, b1, b2, decay, [float(a) for a in config.anneal]))
    return {k: np.asarray(v, np.float32) for k, v in zip(("learning_rate", "b1", "b2", "decay", "anneal"),
                                                           zip(*rows))}


def make_run(task_config, optimizer_fn):
    """`run(key, optimizer_params)` -> PPO's output; on a gridworld the level is drawn from the key (a fixed level
    whatever the key, a distribution such as 'all' one level a seed)."""
    train = ppo.make_train(task_config, optimizer_fn)
    env, _ = ppo.make_env(task_config.env_name, task_config.brax_backend, task_config.episode_length)
    if not isinstance(env, gridworld.Gridworld):
        return train

    def run(key, optimizer_params):
        level_key, train_key = jax.random.split(key)
        return train(train_key, optimizer_params, gridworld.sample_level(level_key, env))
    return run


def sweep(run, settings, keys, settings_per_batch=0):
    """Final returns (settings, seeds) of `run(key, setting)` for every setting and key: vmapped over seeds, and
    over settings in batches of `settings_per_batch` (0: all at once)."""
    num_settings = len(next(iter(settings.values())))
    return jax.lax.map(lambda setting: jax.vmap(lambda key: run(key, setting)["final_return"])(keys), settings,
                       batch_size=settings_per_batch or num_settings)


def best_setting(settings, returns):
    """The setting with the highest mean final return over seeds; a setting with a non-finite return never wins."""
    means = np.where(np.isfinite(returns).all(1), np.asarray(returns).mean(1), -np.inf)
    best = int(np.argmax(means))
    return {k: float(str(v[best])) for k, v in settings.items()}, float(means[best])  # str: 0.9, not 0.899999976


def tune_keys(config, num):
    return jax.vmap(jax.random.PRNGKey)(jnp.arange(config.seed, config.seed + num))


def tune(config, task):
    """Sweep every optimizer on `task` in one jitted program; save the sweep and the best settings."""
    task_config = TASKS[task]
    steps = ppo.optimizer_steps(task_config)
    grids = {name: grid(name, task, config) for name in config.optimizers}
    runs = {name: make_run(task_config, ppo.hand_designed(name, steps)) for name in config.optimizers}
    program = jax.jit(lambda grids, keys: {name: sweep(runs[name], grids[name], keys, config.settings_per_batch)
                                           for name in grids})
    start = time.time()
    returns = jax.device_get(program(grids, tune_keys(config, config.tune_seeds)))
    print(f"\n{task} ({task_config.env_name}): {sum(len(g['learning_rate']) for g in grids.values())} settings x "
          f"{config.tune_seeds} seeds of {task_config.total_timesteps:,} steps in {time.time() - start:.0f} s "
          f"(compile included)")
    tuned = {}
    for name in config.optimizers:
        setting, mean = best_setting(grids[name], returns[name])
        tuned[name] = dict(setting, final_return=mean, num_seeds=config.tune_seeds)
        edge = setting["learning_rate"] in (grids[name]["learning_rate"].min(), grids[name]["learning_rate"].max())
        print(f"  {name:8s} best of {len(returns[name]):3d}: " + ", ".join(f"{k} {v:.4g}" for k, v in setting.items())
              + f"  -> mean final return {mean:.3f}" + ("  (learning rate at the edge of the range)" * edge))
        ppo.record(config.out_dir, {"mode": "tune", "task": task, "optimizer": name, **setting,
                                    "final_return": mean, "edge_of_range": bool(edge)}, config.wandb)
    os.makedirs(config.out_dir, exist_ok=True)
    write_json_atomic(os.path.join(config.out_dir, f"sweep_{task}.json"),
                      {name: dict({k: v.tolist() for k, v in grids[name].items()},
                                  final_returns=np.asarray(returns[name]).tolist()) for name in grids})
    entry = {"ppo": asdict(task_config), "optimizers": tuned}
    existing = read_json(config.tuned_path) if os.path.exists(config.tuned_path) else {}
    existing.setdefault(task_config.env_name, {"optimizers": {}})["optimizers"].update(entry["optimizers"])
    existing[task_config.env_name]["ppo"] = entry["ppo"]
    write_json_atomic(config.tuned_path, existing)
    return tuned


# ----------------------------------------------------------------------------------------------- files
def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json_atomic(path, payload):
    """Write to a temporary file, then rename it over `path`: a reader never sees a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(f"{path}.tmp", path)


def tuned_settings(path, env_name, optimizers):
    """{optimizer: tuned setting} for `env_name` from the tuning results file, or a clear error."""
    if not os.path.exists(path):
        raise ValueError(f"no tuning results at {path!r}: run `python baselines.py --mode tune` first")
    by_env = read_json(path)
    if env_name not in by_env:
        raise ValueError(f"{path} has no tuned settings for {env_name!r}; it has: {', '.join(by_env)}")
    missing = [name for name in optimizers if name not in by_env[env_name]["optimizers"]]
    if missing:
        raise ValueError(f"{path} has no tuned {', '.join(missing)} for {env_name!r}")
    return {name: by_env[env_name]["optimizers"][name] for name in optimizers}


def learned_kind(path):
    """'open_es' for a file written by open_es.py (.msgpack) or an OPEN optimizer released by its authors (.npy),
    'optim4rl' for an optim4rl_metagrad.py checkpoint."""
    if path.endswith((".msgpack", ".npy")) and os.path.isfile(path):
        return "open_es"
    if os.path.isfile(optim4rl_metagrad.checkpoint_path(path)):
        return "optim4rl"
    raise ValueError(f"learned optimizer {path!r} not found: expected an open_es.py .msgpack file, an OPEN .npy "
                     f"file of its authors (trained/authors/) or an optim4rl_metagrad.py checkpoint (or its run "
                     f"directory)")


def load_learned(path):
    """(label, optimizer_fn, optimizer_params) of a learned optimizer file."""
    if learned_kind(path) == "open_es":
        optimizer_fn, optimizer_params = open_es.learned_optimizer(path)
    else:
        optimizer_fn, optimizer_params = optim4rl_metagrad.learned_optimizer(path)
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0], optimizer_fn, optimizer_params


# ----------------------------------------------------------------------------------------------- the report
def evaluate_task(config, task, learned):
    """{optimizer: {"final": (seeds,), "curve": (seeds, updates)}} of PPO on `task` on the held-out seeds."""
    task_config = TASKS[task]
    steps = ppo.optimizer_steps(task_config)
    candidates = {name: (ppo.hand_designed(name, steps), {k: jnp.float32(v) for k, v in setting.items()
                                                          if k not in ("final_return", "num_seeds")})
                  for name, setting in tuned_settings(config.tuned_path, task_config.env_name,
                                                      config.optimizers).items()}
    candidates.update({label: (fn, params) for label, fn, params in learned})
    runs = {name: jax.vmap(make_run(task_config, fn), in_axes=(0, None)) for name, (fn, _) in candidates.items()}
    program = jax.jit(lambda keys, params: {name: runs[name](keys, params[name]) for name in runs})  # one compile
    start = time.time()
    out = jax.device_get(program(open_es.held_out_keys(config), {n: p for n, (_, p) in candidates.items()}))
    results = {name: {"final": np.asarray(out[name]["final_return"], np.float64),  # in candidates' order
                      "training": np.asarray(out[name]["training_return"], np.float64),
                      "curve": np.asarray(out[name]["metrics"]["episode_return"], np.float64)} for name in candidates}
    print(f"  {task}: {len(results)} optimizers x {config.eval_seeds} seeds in {time.time() - start:.0f} s (compile "
          f"included); mean final return " + ", ".join(f"{n} {r['final'].mean():.3f}" for n, r in results.items()),
          flush=True)
    for name, r in results.items():
        ppo.record(config.out_dir, {"mode": "report", "task": task, "optimizer": name,
                                    "mean_final_return": float(r["final"].mean())}, config.wandb)
    return results


def results_table(config, results, estimates, normalised):
    """Markdown: IQM and mean [95% CI] of the final return per task, and normalised by Adam over tasks; next to them
    the mean of the OPEN authors' metric (ppo.make_train's training_return)."""
    def cell(e):
        return f"{e[0]:.3f} [{e[1]:.3f}, {e[2]:.3f}]"
    lines = [f"PPO, {config.eval_seeds} held-out seeds per optimizer and task; IQM and mean of the final return "
             f"with 95% stratified bootstrap CIs (rliable, {config.bootstrap_reps} resamples); training: the mean "
             f"of the OPEN authors' metric (last completed training episode of each env).", "",
             "| task | optimizer | IQM | mean | training |", "|---|---|---|---|---|"]
    for task in results:
        lines += [f"| {task} | {name} | {cell(e[0])} | {cell(e[1])} | {results[task][name]['training'].mean():.3f} |"
                  for name, e in estimates[task].items()]
    if normalised:
        lines += [f"| all, / Adam | {name} | {cell(e[0])} | {cell(e[1])} | |" for name, e in normalised.items()]
    return "\n".join(lines) + "\n"


def plot_report(config, results, estimates):
    """returns_<task>.png: mean return over training with its standard error; iqm.png: IQM with 95% CIs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for task, runs in results.items():
        task_config = TASKS[task]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, run in runs.items():
            steps = np.arange(1, run["curve"].shape[1] + 1) * task_config.num_envs * task_config.num_steps
            mean = np.nanmean(run["curve"], 0)
            error = np.nanstd(run["curve"], 0) / np.sqrt(run["curve"].shape[0])
            ax.plot(steps, mean, label=name)
            ax.fill_between(steps, mean - error, mean + error, alpha=0.2)
        ax.set(xlabel="environment steps", ylabel="episode return", title=f"PPO on {task_config.env_name}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(config.out_dir, f"returns_{task}.png"), dpi=100)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(estimates), figsize=(4 * len(estimates), 3.5), squeeze=False)
    for ax, (task, by_name) in zip(axes[0], estimates.items()):
        names = list(by_name)
        iqm = np.array([by_name[n][0] for n in names])
        ax.barh(names, iqm[:, 0], xerr=[iqm[:, 0] - iqm[:, 1], iqm[:, 2] - iqm[:, 0]], capsize=3)
        ax.set(title=task, xlabel="IQM final return")
    fig.tight_layout()
    fig.savefig(os.path.join(config.out_dir, "iqm.png"), dpi=100)
    plt.close(fig)


def report(config):
    """Every tuned and learned optimizer on every task: results.md, returns_<task>.png, iqm.png in out_dir."""
    learned = [load_learned(path) for path in config.learned]
    results = {task: evaluate_task(config, task, learned) for task in config.tasks}
    estimates = {task: open_es.interval_estimates({n: r["final"][:, None] for n, r in runs.items()},
                                                  config.bootstrap_reps, config.seed)
                 for task, runs in results.items()}
    normalised = {}
    if len(config.tasks) > 1 and "adam" in config.optimizers:  # OPEN Fig. 3: returns / Adam's mean return, per task
        names = list(results[config.tasks[0]])
        normalised = open_es.interval_estimates(
            {n: np.stack([results[t][n]["final"] / results[t]["adam"]["final"].mean() for t in config.tasks], 1)
             for n in names}, config.bootstrap_reps, config.seed)
    os.makedirs(config.out_dir, exist_ok=True)
    table = results_table(config, results, estimates, normalised)
    with open(os.path.join(config.out_dir, "results.md"), "w") as f:
        f.write(table)
    plot_report(config, results, estimates)
    print("\n" + table + f"\nresults.md, returns_<task>.png and iqm.png in {config.out_dir}")
    return estimates, normalised


def main(config):
    validate(config)
    start = time.time()
    if config.mode in ("all", "tune"):
        for task in config.tasks:
            tune(config, task)
        print(f"tuned settings written to {config.tuned_path}")
    if config.mode in ("all", "report"):
        report(config)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(ppo.parse_config(BaselinesConfig, PRESETS))
