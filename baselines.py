"""Baselines for learned RL optimizers: tuned hand-designed optimizers and the evaluation report (OPEN Section 6.1 and
Appendix C.2, Tables 4-6; Optim4RL Section 6.1).

    python baselines.py                                # tune Adam, RMSprop, Lion and SGD on Catch, then the report
    python baselines.py --preset breakout              # OPEN's MinAtar sweep (Table 4 ranges, Table 3 PPO): for GPUs
    python baselines.py --mode report --learned trained/open_catch.msgpack runs/optim4rl_catch
    python baselines.py --preset no_features           # OPEN's 'No Features' baseline, trained by OPEN's ES
    python baselines.py --preset optim4rl_es           # Optim4RL trained by OPEN's ES at 0.1 x tuned Adam's lr

1. Tuning (App. C.2): for each task, a grid over the learning rate (log-spaced over the optimizer's range of Tables
   4-6), beta1 / beta2 (Adam, Lion) or decay (RMSprop), and linear annealing of the learning rate to 0 on or off.
   Every setting trains PPO on `tune_seeds` seeds; the best setting by mean final return is written to
   out_dir/tuned.json, and with `--update-tuned` into the shipped trained/tuned.json, which the other scripts read:
   Adam's return normalises OPEN's multi-task fitness, and 0.1 x Adam's learning rate is the learning rate of the
   Optim4RL-by-ES baseline. The whole sweep of one task, all optimizers, settings and seeds, is one jitted program.
2. The report: every tuned optimizer and every learned optimizer in `learned` (files written by open_es.py or
   optim4rl_metagrad.py) trains PPO on `eval_seeds` held-out seeds of each task, through runs.compare (per task:
   <task>.md, .json, .png); across tasks, IQM and mean final return normalised by tuned Adam with 95% stratified
   bootstrap CIs (rliable; Agarwal et al., 2021), in results.md and iqm.png.
3. The learned baselines of OPEN Sec. 6.1, trained by open_es.py's ES (`learned_baseline`): 'No Features' (gradient
   and momenta only) and Optim4RL (Lan et al.) at OPEN's sizes and a fixed 0.1 x tuned Adam's learning rate. Optim4RL's
   own ablations train by meta-gradients: `python optim4rl_metagrad.py --architecture linear_optim` (or l2lgd2).
"""
import runs  # first: its XLA and OpenBLAS settings must come before jax starts
import os
import itertools
import json
import time
from dataclasses import asdict, dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

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
    tuned_path: str = "trained/tuned.json"  # tuned settings the report reads (after tuning: out_dir/tuned.json)
    update_tuned: bool = False  # also merge the tuning results into the shipped tuned_path
    out_dir: str = "runs/baselines"  # sweep results, tuned.json, plots, results.md and metrics.jsonl
    learned_baseline: str = ""  # with mode "learned": LEARNED_BASELINES, meta-trained by OPEN's ES (settings: es)
    es: open_es.OpenConfig = open_es.OpenConfig()  # that ES and its inner task (open_es.py's CPU default, Catch)
    wandb: bool = False  # log the metrics.jsonl records to Weights & Biases too (the `wandb` extra)
    seed: int = 0  # seeds of the sweep are seed, seed + 1, ...; the report uses held-out seeds 10000, ...


TASKS = {"catch": open_es.CATCH,  # open_es.py's default inner task: Catch, 4,096 steps
         **{name: ppo.preset(name) for name in ("asterix", "breakout", "freeway", "spaceinvaders", "ant", "gridworld")}}
MINATAR_RANGES = {"adam": (1e-3, 1e-2), "rmsprop": (1e-3, 1e-2), "lion": (1e-4, 1e-3)}  # Table 4
LEARNING_RATE_RANGES = {  # Tables 4-6; gridworld RMSprop and Lion are not in Table 6: Adam's range, and 10x lower
    **{name: MINATAR_RANGES for name in ("asterix", "breakout", "freeway", "spaceinvaders")},
    "catch": {"adam": (1e-3, 1e-1), "rmsprop": (1e-3, 1e-1), "lion": (1e-4, 1e-1)},  # ours: brackets the best
    "ant": {"adam": (1e-4, 1e-3), "rmsprop": (1e-4, 5e-3), "lion": (1e-5, 5e-4)},  # Table 5
    "gridworld": {"adam": (5e-5, 1e-3), "rmsprop": (5e-5, 1e-3), "lion": (5e-6, 1e-4)},  # Table 6
}
SGD_RANGE = (1e-2, 3.0)  # SGD is not in the papers' tables: a wide range around the clipped-gradient scale
PRESETS = {
    "default": {},
    "no_features": dict(mode="learned", learned_baseline="no_features",
                        es=replace(open_es.OpenConfig(), out_dir="runs/no_features_catch")),
    "optim4rl_es": dict(mode="learned", learned_baseline="optim4rl",
                        es=replace(open_es.OpenConfig(), out_dir="runs/optim4rl_es_catch")),
    "minatar": dict(tasks=("asterix", "breakout", "freeway", "spaceinvaders"), learned=()),
    **{name: dict(tasks=(name,), learned=()) for name in TASKS if name != "catch"},
}
PRESETS["gridworld"]["tune_seeds"] = 8  # App. C.2
MODES = ("all", "tune", "report", "learned")
LEARNED_BASELINES = ("no_features", "optim4rl")


def validate(config):
    """Refuse bad settings with a message naming the value and the valid choices, before anything compiles."""
    for task in config.tasks:
        runs.require_choice("task", task, TASKS)
    if not config.tasks:
        raise ValueError(f"tasks is empty; choose from {', '.join(TASKS)}")
    runs.check_wandb(config.wandb)
    runs.require_choice("mode", config.mode, MODES)
    for name in config.optimizers:
        runs.require_choice("optimizer", name, ppo.OPTIMIZERS)
    runs.require_positive(config, "num_learning_rates", "tune_seeds", "eval_seeds", "bootstrap_reps")
    if config.settings_per_batch < 0:
        raise ValueError(f"settings_per_batch must be 0 (all) or positive, got {config.settings_per_batch}")
    if not config.betas or not all(0 <= b < 1 for b in config.betas):
        raise ValueError(f"betas must be one or more values in [0, 1), got {config.betas}")
    if not config.anneal:
        raise ValueError("anneal must hold False, True or both")
    if config.mode == "learned":
        runs.require_choice("learned_baseline", config.learned_baseline, LEARNED_BASELINES)
        open_es.validate(replace(config.es, optimizer=config.learned_baseline), learned=True)
        return
    for path in config.learned if config.mode != "tune" else ():
        load_learned(path)  # a bad file is refused here, before anything compiles
    if config.mode == "report":
        for task in config.tasks:
            runs.tuned_settings(config.tuned_path, TASKS[task].env_name, config.optimizers)
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
    trains = {name: ppo.make_run(task_config, ppo.hand_designed(name, steps)) for name in config.optimizers}
    program = jax.jit(lambda grids, keys: {name: sweep(trains[name], grids[name], keys, config.settings_per_batch)
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
        runs.record(config.out_dir, {"mode": "tune", "task": task, "optimizer": name, **setting,
                                    "final_return": mean, "edge_of_range": bool(edge)}, config.wandb)
    os.makedirs(config.out_dir, exist_ok=True)
    runs.write_atomic(os.path.join(config.out_dir, f"sweep_{task}.json"), json.dumps(
        {name: dict({k: v.tolist() for k, v in grids[name].items()}, final_returns=np.asarray(returns[name]).tolist())
         for name in grids}, indent=1))
    for path in (os.path.join(config.out_dir, "tuned.json"),) + (config.tuned_path,) * config.update_tuned:
        existing = read_json(path) if os.path.exists(path) else {}
        existing.setdefault(task_config.env_name, {"optimizers": {}})["optimizers"].update(tuned)
        existing[task_config.env_name]["ppo"] = asdict(task_config)
        runs.write_atomic(path, json.dumps(existing, indent=1))
    return tuned


# ----------------------------------------------------------------------------------------------- files
def read_json(path):
    with open(path) as f:
        return json.load(f)


def optim4rl_by_es(es_config):
    """(optimizer_fn, initial meta_params) of Optim4RL for OPEN's ES (OPEN Sec. 6.1, App. B.4): GRU 8 and MLPs
    [16, 16] (OPEN's sizes; doubled for multi-task, App. B.5) on inputs [sign g, log|g|], zero read-outs (as
    trained/optim4rl_es_catch.msgpack was evolved), at the fixed lr `optim4rl_learning_rate`, so ES evolves its
    network only."""
    config = optim4rl_metagrad.Optim4RLConfig(gru_size=es_config.gru_size, mlp_sizes=(es_config.hidden_size,) * 2,
                                              gradient_processing=True, zero_readout=True)
    optimizer_fn = optim4rl_metagrad.make_optimizer_fn(config)
    learning_rate = es_config.optim4rl_learning_rate or 0.1 * es_config.ppo.learning_rate  # files before the field
    return (lambda meta_params: optimizer_fn({"meta": meta_params, "learning_rate": learning_rate}),
            optim4rl_metagrad.init_meta_params(config, jax.random.PRNGKey(es_config.seed)))


def train_learned_baseline(config):
    """Meta-train `learned_baseline` with open_es.py's ES on config.es (No Features: OPEN's network on gradient and
    momenta; Optim4RL: at 0.1 x tuned Adam's lr from tuned_path, Sec. 6.1), then compare it with Adam."""
    es = replace(config.es, optimizer=config.learned_baseline)
    learned = None
    if config.learned_baseline == "optim4rl":
        if not es.optim4rl_learning_rate:
            adam_lr = runs.tuned_settings(config.tuned_path, es.ppo.env_name, ["adam"])["adam"]["learning_rate"]
            es = replace(es, optim4rl_learning_rate=0.1 * adam_lr)
            print(f"Optim4RL's learning rate: 0.1 x tuned Adam's {adam_lr:.4g} ({config.tuned_path})")
        learned = optim4rl_by_es(es)
    meta_params, _ = open_es.meta_train(es, learned)
    open_es.versus_adam(es, (learned or (open_es.open_optimizer(es),))[0], meta_params, es.ppo,
                        os.path.join(es.out_dir, "summary"))


def load_learned(path):
    """(label, optimizer_fn, optimizer_params) of a learned optimizer file: open_es.py's (OPEN, its ablations, No
    Features, Optim4RL by ES), an OPEN .npy of its authors, or an optim4rl_metagrad.py checkpoint (or run dir)."""
    label = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    if optim4rl_metagrad.is_checkpoint(path):
        return label, *optim4rl_metagrad.learned_optimizer(path)
    if not os.path.isfile(path):
        raise ValueError(f"learned optimizer {path!r} not found: expected an open_es.py .msgpack file, an OPEN .npy "
                         f"file of its authors (trained/authors/) or an optim4rl_metagrad.py checkpoint (or its run "
                         f"directory)")
    if path.endswith(".npy"):
        return label, *open_es.learned_optimizer(path)
    payload = runs.read_input(path, open_es.LEARNED_FILE, ("config", "meta_params"))
    es = runs.config_from_dict(open_es.OpenConfig, json.loads(payload["config"]), ppo=ppo.PPOConfig)
    if es.optimizer != "optim4rl":
        return label, *open_es.learned_optimizer(path)
    optimizer_fn, template = optim4rl_by_es(es)
    return label, optimizer_fn, open_es.serialization.from_state_dict(template, payload["meta_params"])


# ----------------------------------------------------------------------------------------------- the report
def evaluate_task(config, task, learned, tuned_path):
    """Every tuned and learned optimizer on `task`'s held-out seeds (runs.compare: out_dir/<task>.md, .json, .png)."""
    task_config = TASKS[task]
    steps = ppo.optimizer_steps(task_config)
    candidates = {name: (ppo.hand_designed(name, steps), {k: jnp.float32(v) for k, v in setting.items()
                                                          if k not in ("final_return", "num_seeds")})
                  for name, setting in runs.tuned_settings(tuned_path, task_config.env_name, config.optimizers).items()}
    candidates.update({label: (fn, params) for label, fn, params in learned})
    trains = {name: (ppo.make_run(task_config, fn), params) for name, (fn, params) in candidates.items()}
    results = runs.compare(trains, runs.held_out_keys(config.eval_seeds), ppo.steps_per_update(task_config),
                           os.path.join(config.out_dir, task), f"PPO on {task_config.env_name} ({task}), "
                           f"{task_config.total_timesteps:,} steps", reps=config.bootstrap_reps)
    for name, r in results.items():
        runs.record(config.out_dir, {"mode": "report", "task": task, "optimizer": name,
                                    "mean_final_return": float(r["final"].mean())}, config.wandb)
    return results


def report(config, tuned_path):
    """Every tuned and learned optimizer on every task, and across tasks normalised by tuned Adam's mean return (OPEN
    Fig. 3): results.md (each task's table, then the normalised one) and iqm.png in out_dir."""
    learned = [load_learned(path) for path in config.learned]
    results = {task: evaluate_task(config, task, learned, tuned_path) for task in config.tasks}
    sections = []
    for task in config.tasks:
        with open(os.path.join(config.out_dir, f"{task}.md")) as f:
            sections.append(f.read().replace("# ", f"## {task}: ", 1))
    estimates = {}
    if len(config.tasks) > 1 and "adam" in config.optimizers:
        names = list(results[config.tasks[0]])
        estimates = runs.interval_estimates(
            {n: np.stack([results[t][n]["final"] / results[t]["adam"]["final"].mean() for t in config.tasks], 1)
             for n in names}, config.bootstrap_reps, config.seed)
        sections.append("\n".join([f"## All tasks, final return / tuned Adam's mean ({config.bootstrap_reps} "
                                   f"stratified bootstrap resamples)", "", "| optimizer | IQM | mean |",
                                   "|---|---|---|"]
                                  + [f"| {n} | {runs.interval_cell(e[0])} | {runs.interval_cell(e[1])} |"
                                     for n, e in estimates.items()]) + "\n")
        plot_iqm(estimates, os.path.join(config.out_dir, "iqm.png"))
    table = "\n".join(sections)
    runs.write_atomic(os.path.join(config.out_dir, "results.md"), table)
    print(f"\nresults.md, <task>.md/.json/.png{' and iqm.png' * bool(estimates)} in {config.out_dir}")
    return results, estimates


def plot_iqm(estimates, path):
    """IQM and mean with their 95% CIs (rliable's interval plot)."""
    from rliable import plot_utils
    names = list(estimates)
    points = {n: estimates[n][:, 0] for n in names}
    intervals = {n: estimates[n][:, 1:].T for n in names}
    fig, _ = plot_utils.plot_interval_estimates(points, intervals, ["IQM", "Mean"], names,
                                                xlabel="final return / tuned Adam's mean", xlabel_y_coordinate=-0.8)
    runs.save_figure(fig, path)


def main(config):
    validate(config)
    start = time.time()
    if config.mode == "learned":
        return train_learned_baseline(config)
    tuned_path = config.tuned_path
    if config.mode in ("all", "tune"):
        for task in config.tasks:
            tune(config, task)
        tuned_path = os.path.join(config.out_dir, "tuned.json")
        print(f"tuned settings written to {tuned_path}" + f" and {config.tuned_path}" * config.update_tuned)
    if config.mode in ("all", "report"):
        report(config, tuned_path)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(runs.parse_config(BaselinesConfig, PRESETS))
