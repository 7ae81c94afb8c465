"""Run support shared by every script: the XLA and OpenBLAS settings (import this module before anything imports
gymnax, which starts XLA), joining several hosts, config parsing, records (`metrics.jsonl`, wandb), files written
atomically and checkpoints, the tuned-settings reader, and the evaluator `compare` with its statistics.
"""
import os
# XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped programs (every thread idle): switch it off
# before jax starts.
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")
os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files, never shown
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # LAPACK (the orthogonal init's QR) on one thread: with XLA's
# threads on the same cores, OpenBLAS's own threads turned a 400 x 64 QR from 0.5 ms into 0.3-1 s.
import argparse
import dataclasses
import importlib.util
import io
import json
import time
import warnings
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import tyro
from flax import serialization


def start_distributed(argv):
    """Multi-host: join jax.distributed before anything starts the XLA backend (importing gymnax does): a script hands
    its arguments here ahead of its other imports. --coordinator HOST:PORT of process 0 ("auto": detected, e.g. SLURM),
    --num-processes, --process-id (this one's). Returns the other arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--coordinator", default="")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPUs use NCCL
        jax.distributed.initialize(*(() if args.coordinator == "auto" else
                                     (args.coordinator, args.num_processes, args.process_id)))
    return rest


# ----------------------------------------------------------------------------------------------- records
def record(run_dir, line, use_wandb=False):
    """Every run's machine-readable log: append `line` (the fields of a printed progress line) as one JSON object to
    `<run_dir>/metrics.jsonl`; with `use_wandb`, log it to Weights & Biases too (a run in `run_dir`, started by the
    first record; WANDB_MODE=offline needs no account). Of several processes (jax.distributed), process 0 alone."""
    if jax.process_index() != 0:
        return
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as file:
        file.write(json.dumps(line) + "\n")
    if use_wandb:
        import wandb  # an optional extra
        (wandb.run or wandb.init(project="learned-optimizers-rl", dir=run_dir,
                                 name=os.path.basename(os.path.normpath(run_dir)))).log(line)


def check_wandb(use_wandb):
    if use_wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError("wandb = True, but wandb is not installed; valid: wandb = False, or pip install wandb")


def parse_config(config_class, presets, argv=None):
    """`--preset NAME` picks a preset (a dict of overrides); every config field can then be set by a flag."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset", default="default")
    known, rest = parser.parse_known_args(argv)
    if known.preset not in presets:
        raise SystemExit(f"unknown preset {known.preset!r}; valid: {', '.join(presets)}")
    return tyro.cli(config_class, default=replace(config_class(), **presets[known.preset]), args=rest,
                    description=f"Presets (--preset): {', '.join(presets)}")


def config_from_dict(config_class, saved, **nested):
    """The config a file saved as JSON (dataclasses.asdict): lists back to tuples, the `nested` fields' dicts back to
    their classes (field=class); fields newer than the file keep their defaults, fields since removed are ignored."""
    known = {field.name for field in dataclasses.fields(config_class)}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
    return config_class(**{**saved, **{name: cls(**saved[name]) for name, cls in nested.items()}})


# ----------------------------------------------------------------------------------------------- files
def write_atomic(path, data):
    """Write `data` (bytes or text) to a temporary file beside `path`, then rename it over `path`: a reader never sees
    a half-written file. Under jax.distributed only process 0 writes."""
    if jax.process_index():
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(f"{path}.tmp", "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)


def save_checkpoint(path, payload):
    """Both meta-learners' checkpoint: flax msgpack of `payload` (nested dicts of arrays, numbers and strings), written
    atomically; the checkpoint it replaces is kept as `<path>.prev`."""
    write_atomic(f"{path}.new", serialization.msgpack_serialize(payload))
    if jax.process_index() == 0:
        if os.path.exists(path):
            os.replace(path, f"{path}.prev")
        os.replace(f"{path}.new", path)


def load_checkpoint(path):
    """The payload of checkpoint `path`, None if there is none. A damaged one (truncated, not msgpack) is reported by
    name and the previous checkpoint, `<path>.prev`, is read instead."""
    for candidate in (path, f"{path}.prev"):
        if not os.path.exists(candidate):
            continue
        try:
            with open(candidate, "rb") as f:
                return serialization.msgpack_restore(f.read())
        except Exception as error:  # msgpack's errors for a truncated or garbled file have no common base
            print(f"checkpoint {candidate} is damaged ({type(error).__name__}: {error}); trying {path}.prev")
    if os.path.exists(path) or os.path.exists(f"{path}.prev"):
        raise ValueError(f"checkpoint {path} is damaged and has no readable previous checkpoint {path}.prev; "
                         f"delete it to start afresh")
    return None


def require_choice(what, value, valid):
    """Refuse `value` of `what` unless it is one of `valid`, naming it and the valid choices."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def require_positive(config, *fields):
    """Refuse any of `fields` of `config` that is not positive, naming it and its value (before anything compiles)."""
    for field in fields:
        if not getattr(config, field) > 0:
            raise ValueError(f"{field} must be positive, got {getattr(config, field)}")


def read_input(path, expected, keys):
    """The msgpack payload of a file the user names as input (a learned optimizer), holding `keys`; anything else is
    refused saying what was found and what was `expected`. (Advice to delete belongs to a run's own checkpoint.)"""
    with open(path, "rb") as f:
        data = f.read()
    try:
        payload = serialization.msgpack_restore(data)
    except Exception as error:  # as in load_checkpoint
        found = "JSON text" if data.lstrip()[:1] in (b"{", b"[") else f"{len(data)} bytes that are not msgpack"
        raise ValueError(f"{path} is not {expected}: it holds {found} ({type(error).__name__}), truncated or of "
                         f"another kind") from None
    if not isinstance(payload, dict) or any(key not in payload for key in keys):
        found = f"keys {', '.join(map(str, payload))}" if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not {expected}: it holds a msgpack with {found}; expected {', '.join(keys)}")
    return payload


def read_vector(path, sizes, what):
    """The float32 vector in .npy file `path`, refused (naming `what` and the valid {size: description}) if unreadable
    or of another dtype, shape or size."""
    valid = " or ".join(f"{n} ({description})" for n, description in sizes.items())
    try:
        flat = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npy file ({error}); {what} is a float32 vector of {valid} "
                         f"values") from None
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size not in sizes:
        raise ValueError(f"{path} holds {flat.dtype} values of shape {flat.shape}; {what} is a float32 vector of "
                         f"{valid} values")
    return flat


def refuse_other(path, what, stored, current):
    """Refuse a file written with other settings {field: value}, naming each differing field."""
    diff = [f"{n} = {stored.get(n)!r} there, {v!r} here" for n, v in current.items() if stored.get(n) != v]
    if diff:
        raise ValueError(f"{path} is of {what}: " + ", ".join(diff))


def tuned_settings(path, env_name, optimizers):
    """{optimizer: tuned setting (learning_rate, b1, b2, decay, anneal, final_return, ...)} for `env_name` from the
    tuned settings file of baselines.py (trained/tuned.json ships them), or an error naming what is missing."""
    if not os.path.exists(path):
        raise ValueError(f"no tuned settings at {path!r}: run `python baselines.py --mode tune` first")
    with open(path) as f:
        by_env = json.load(f)
    missing = [name for name in optimizers if name not in by_env.get(env_name, {}).get("optimizers", {})]
    if missing:
        raise ValueError(f"no tuned {', '.join(missing)} for {env_name!r} in {path}; it has: "
                         + ", ".join(f"{e} ({', '.join(t['optimizers'])})" for e, t in by_env.items()))
    return {name: by_env[env_name]["optimizers"][name] for name in optimizers}


def save_figure(fig, path):
    """A matplotlib figure as a PNG, written atomically (write_atomic), then closed."""
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------- comparisons
def evaluate(env, env_params, act, rng, num_episodes, max_steps):
    """Mean return of one episode in each of `num_episodes` parallel envs, actions from `act(obs, key)`."""
    rng, reset_key = jax.random.split(rng)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_episodes), env_params)

    def step(carry, key):
        obs, state, total, running = carry
        act_key, env_key = jax.random.split(key)
        obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(env_key, num_episodes), state, act(obs, act_key), env_params)
        total = total + reward * running
        return (obs, state, total, running & ~(terminated | truncated)), None

    init = (obs, state, jnp.zeros(num_episodes), jnp.ones(num_episodes, bool))
    (_, _, total, _), _ = jax.lax.scan(step, init, jax.random.split(rng, max_steps))
    return total.mean()


def clock(seconds):
    """Seconds as h:mm:ss."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Pace:
    """The speed and time left of a loop of `total` steps (updates, generations, meta-steps) of `env_steps` env steps
    each: `pace(done, seconds)`, after `done` steps, the last one `seconds` long, -> 'N env steps/s, h:mm:ss left',
    the time left from the median step. With `compiles`, the first step includes compiling: no estimate from it."""
    def __init__(self, total, env_steps, compiles=True):
        self.total, self.env_steps, self.seconds, self.compiles = total, env_steps, [], compiles

    def __call__(self, done, seconds):
        self.seconds.append(seconds)
        speed = f"{self.env_steps / max(seconds, 1e-9):,.0f} env steps/s"
        if self.compiles and len(self.seconds) == 1:
            return f"{speed} with compiling"
        typical = float(np.median(self.seconds[self.compiles:]))
        return f"{speed}, {clock((self.total - done) * typical)} left"


class SeedProgress:
    """Progress lines of a training run from inside its jitted program (jax.debug.callback, which a vmap over seeds
    calls once per seed, one after another): each seed's values go to metrics.jsonl; one line per log interval shows
    their mean and range over the seeds, env steps/s and the time left. `flush_progress()` prints the last one."""
    held = []  # the instances with lines not yet printed

    def __init__(self, num_updates, steps_per_update, run_dir, use_wandb, label=""):
        self.num_updates, self.steps_per_update, self.run_dir, self.use_wandb = (num_updates, steps_per_update,
                                                                                  run_dir, use_wandb)
        self.label = f"{label}: " if label else ""
        self.lines, self.last, self.pace = [], None, None

    def __call__(self, seed, update_index, metrics):
        line = {"seed": int(seed), "update": int(update_index) + 1, "return": float(metrics["episode_return"]),
                "loss": float(metrics["loss"]), "dormant": float(metrics["dormant_fraction"])}
        if self.lines and self.lines[0]["update"] != line["update"]:
            self.flush()
        record(self.run_dir, line, self.use_wandb)
        self.lines.append(line)
        if self not in SeedProgress.held:
            SeedProgress.held.append(self)

    def flush(self):
        if not self.lines:
            return
        update, now, seeds = self.lines[0]["update"], time.time(), len(self.lines)
        if self.last is None or update <= self.last[0]:  # the first line of a run: no speed yet
            self.pace, speed = Pace(self.num_updates, self.steps_per_update * seeds, compiles=False), "starting"
        else:
            speed = self.pace(update, (now - self.last[1]) / (update - self.last[0]))
        mean, low, high = (f([line["return"] for line in self.lines]) for f in (np.mean, np.min, np.max))
        print(f"{self.label}update {update}/{self.num_updates}  return {mean:.2f} [{low:.2f}, {high:.2f}] over "
              f"{seeds} seeds  loss {np.mean([line['loss'] for line in self.lines]):.4f}  dormant "
              f"{np.mean([line['dormant'] for line in self.lines]):.2f}  {speed}", flush=True)
        self.lines, self.last = [], (update, now)


def flush_progress():
    """Print the progress lines still held (SeedProgress): call once a program has finished."""
    for progress in SeedProgress.held:
        progress.flush()
    SeedProgress.held = []


def log_progress(progress, seed, update_index, num_updates, log_every, metrics):
    """From inside a jitted run: hand each `log_every`-th update's metrics (and the last's) to `progress`
    (SeedProgress). The update index is the same for all vmapped seeds, so the condition stays a real branch and
    skipped updates cost nothing."""
    jax.lax.cond((update_index % log_every == 0) | (update_index == num_updates - 1),
                 lambda: jax.debug.callback(progress, seed, update_index, metrics), lambda: None)


def train_and_report(algorithm, config, train, optimizer_params):
    """Run `train` (a make_train's) over config.num_seeds seeds, vmapped and jitted, with `optimizer_params` (the
    config's hand-designed optimizer settings), and print each seed's final return."""
    seeds = jnp.arange(config.seed, config.seed + config.num_seeds)
    start = time.time()
    out = jax.block_until_ready(jax.jit(jax.vmap(train, in_axes=(0, None)))(jax.vmap(jax.random.PRNGKey)(seeds),
                                                                            optimizer_params))
    flush_progress()
    final = np.asarray(out["final_return"])
    print(f"\n{algorithm} on {config.env_name} with {config.optimizer} (lr {config.learning_rate}), "
          f"{config.total_timesteps:,} steps x {config.num_seeds} seeds in {time.time() - start:.0f} s "
          f"(compile included)")
    for seed, value in zip(np.asarray(seeds), final):
        print(f"  seed {seed}: final return {value:.2f}")
        record(config.run_dir, {"seed": int(seed), "final_return": float(value)}, config.wandb)
    print(f"  mean final return {final.mean():.2f} +- {final.std():.2f} (std over seeds)")
    return out


def reference_returns(tasks, given, tuned_path):
    """Adam's final return on each task, to normalise by: `given` (one per task), else the tuned settings' return
    in `tuned_path` (baselines.py); refused unless all are positive."""
    if given:
        references = np.asarray(given, np.float64)
        if len(references) != len(tasks):
            raise ValueError(f"adam_returns has {len(references)} values for {len(tasks)} tasks")
    else:
        references = np.array([tuned_settings(tuned_path, task, ["adam"])["adam"]["final_return"] for task in tasks])
    if not np.all(references > 0):
        raise ValueError(f"Adam's returns must be positive to normalise by them, got {references.tolist()}")
    return references


def plot_fitness(history, path, title):
    """An ES run's history: the population's mean and best return per generation, the mean's held-out returns."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    generations = np.arange(1, len(history["mean_return"]) + 1)
    ax.plot(generations, history["mean_return"], label="population mean")
    ax.plot(generations, history["best_return"], label="population best", alpha=0.6)
    ax.plot(history["eval_generation"], history["eval_return"], "o-", label="ES mean, held-out seeds")
    ax.set(xlabel="generation", ylabel="final return", title=title)
    ax.legend()
    save_figure(fig, path)


def held_out_keys(num_seeds, first=10_000):
    """Evaluation seeds, apart from the seeds of meta-training and tuning."""
    return jax.vmap(jax.random.PRNGKey)(jnp.arange(first, first + num_seeds))


def interval_estimates(scores, reps=2000, seed=0):
    """{name: array (2, 3)}: IQM and mean (rows) of a (runs, tasks) score matrix per name, as point, lower and upper
    bound (columns) of the 95% stratified bootstrap confidence interval (rliable; Agarwal et al., 2021)."""
    from rliable import library as rly
    from rliable import metrics as rly_metrics
    aggregate = lambda x: np.array([rly_metrics.aggregate_iqm(x), rly_metrics.aggregate_mean(x)])  # noqa: E731
    with warnings.catch_warnings():  # arch deprecates RandomState, which rliable passes on: keep it, reproducibly
        warnings.simplefilter("ignore", FutureWarning)
        points, intervals = rly.get_interval_estimates(scores, aggregate, reps=reps,
                                                       random_state=np.random.RandomState(seed))
    return {name: np.stack([points[name], intervals[name][0], intervals[name][1]], 1) for name in scores}


def interval_cell(estimate):
    """A table cell of (point, low, high): 'point [low, high]'."""
    return f"{estimate[0]:.3f} [{estimate[1]:.3f}, {estimate[2]:.3f}]"


def t_interval(values, level=0.90):
    """Mean over seeds (axis 0) and the half-width of its Student-t interval, t_{(1 + level) / 2, N - 1} * std /
    sqrt(N) with the sample std (Optim4RL Sec. 6: 90% confidence intervals over 10 runs)."""
    values = np.asarray(values, np.float64)
    half = scipy.stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(0, ddof=1) / np.sqrt(len(values))
    return values.mean(0), half


def compare(candidates, keys, steps_per_update, out_path, title, reps=2000, t_level=None, curve_points=40):
    """The evaluator of every script: train each candidate {name: (run, optimizer_params)} (`run(key,
    optimizer_params)` -> make_train's output, e.g. `on_levels(make_train(...), env_name)`) on every key, all in one
    jitted program, and write
        <out_path>.json  every seed's final return (evaluation of the final policy) and training return (the OPEN
                         authors' metric, PPO), and the estimates below
        <out_path>.md    IQM and mean final return with 95% stratified bootstrap CIs; with `t_level` (the Optim4RL
                         paper's 0.9) also the mean's Student-t interval
        <out_path>.png   return curves: IQM over seeds with 95% bootstrap CIs (rliable's sample-efficiency plot)
    Returns {name: {"final": (seeds,), "training": (seeds,), "curve": (seeds, updates), "iqm" and "mean": (point,
    low, high)}}."""
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import plot_utils
    from rliable.metrics import aggregate_iqm
    runs = {name: jax.vmap(run, in_axes=(0, None)) for name, (run, _) in candidates.items()}
    program = jax.jit(lambda params: {name: runs[name](keys, params[name]) for name in runs})
    start = time.time()
    out = jax.device_get(program({name: params for name, (_, params) in candidates.items()}))
    flush_progress()
    results = {name: {"final": np.asarray(out[name]["final_return"], np.float64),  # in the candidates' order
                      "training": np.asarray(out[name]["training_return"], np.float64),
                      "curve": np.asarray(out[name]["metrics"]["episode_return"], np.float64)} for name in candidates}
    seconds = time.time() - start
    estimates = interval_estimates({n: r["final"][:, None] for n, r in results.items()}, reps)
    for name, r in results.items():
        r["iqm"], r["mean"] = estimates[name]
    lines = [f"# {title}", "", f"{len(keys)} held-out seeds per optimizer, trained in one program in {seconds:.0f} s "
             f"(compile included). Final return: evaluation of the final policy; 95% stratified bootstrap CIs "
             f"(rliable, {reps} resamples)" + (f"; t: mean +- the {t_level:.0%} Student-t interval" if t_level else "")
             + "; training: mean of the OPEN authors' metric (last completed training episode of each env).", "",
             "| optimizer | IQM final return | mean final return |" + " t |" * bool(t_level) + " training |",
             "|---|---|---|" + "---|" * bool(t_level) + "---|"]
    summary = {}
    for name, r in results.items():
        t = t_interval(r["final"], t_level) if t_level else None
        training = f"{r['training'].mean():.3f}"
        lines.append(f"| {name} | {interval_cell(estimates[name][0])} | {interval_cell(estimates[name][1])} |"
                     + (f" {t[0]:.3f} +- {t[1]:.3f} |" if t else "") + f" {training} |")
        summary[name] = {"final_returns": r["final"].tolist(), "iqm": estimates[name][0].tolist(),
                         "mean": estimates[name][1].tolist(), **({"t_interval": list(map(float, t))} if t else {}),
                         "training_returns": r["training"].tolist()}
    table = "\n".join(lines) + "\n"
    write_atomic(f"{out_path}.md", table)
    write_atomic(f"{out_path}.json", json.dumps(summary, indent=1))
    curves = {n: r["curve"] for n, r in results.items()}
    finite = np.flatnonzero(np.all([np.isfinite(c).all(0) for c in curves.values()], 0))  # after a first episode
    frames = finite[np.unique(np.linspace(0, len(finite) - 1, curve_points).astype(int))] if len(finite) else finite
    if len(frames):
        with warnings.catch_warnings():  # as in interval_estimates
            warnings.simplefilter("ignore", FutureWarning)
            points, intervals = rly.get_interval_estimates(
                {n: c[:, None, frames] for n, c in curves.items()},
                lambda x: np.array([aggregate_iqm(x[..., f]) for f in range(x.shape[-1])]), reps=min(reps, 500),
                random_state=np.random.RandomState(0))
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_utils.plot_sample_efficiency_curve((frames + 1) * steps_per_update, points, intervals, list(curves),
                                                xlabel="environment steps", ylabel="IQM training return", ax=ax,
                                                labelsize="medium", ticklabelsize="small")
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
        save_figure(fig, f"{out_path}.png")
    print("\n" + table + f"({out_path}.md, .json, .png)", flush=True)
    return results


def verdict(results, name, reference):
    """In words: `name` ahead of, level with or behind `reference`, by whether the 95% CIs of their IQM final returns
    (compare's results) are apart."""
    (a, a_low, a_high), (b, b_low, b_high) = results[name]["iqm"], results[reference]["iqm"]
    word = "ahead of" if a_low > b_high else "behind" if a_high < b_low else "level with"
    return (f"{name} is {word} {reference}: IQM final return {a:.3f} [{a_low:.3f}, {a_high:.3f}] vs {b:.3f} "
            f"[{b_low:.3f}, {b_high:.3f}] (95% CIs, {'apart' if word != 'level with' else 'overlapping'})")
