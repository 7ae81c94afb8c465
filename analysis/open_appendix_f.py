"""Appendix F of OPEN (Goldie et al., 2024) on a trained optimizer: PPO agents trained with the learned optimizer (and
with Adam, for comparison) over several seeds, vmapped in one jitted program, and per-update statistics of the
optimizer's updates over training, written as PNG plots (mean and standard error over seeds) and a text summary.

    python analysis/open_appendix_f.py        # the shipped trained/open_catch.msgpack on its own task (Catch), CPU
    python analysis/open_appendix_f.py --optimizer runs/open_catch/optimizer.msgpack --ppo.num-seeds 8
    python analysis/open_appendix_f.py --preset breakout   # runs/open_breakout/optimizer.msgpack on Breakout: GPUs

The statistics (App. F), each computed in every optimizer update for the actor and the critic separately (one
optimizer call updates both, ppo.py), then averaged over the epochs and minibatches of each PPO update:
    dormancy.png           F.1: fraction of tau = 0 dormant neurons (eq. 6) in the actor's hidden layers, as ppo.py
                           reports it (last minibatch of each update), OPEN vs Adam.
    cosine_similarity.png  F.2: cos(u, g) and cos(u, m_beta) for OPEN's six momenta (m_t, which already includes g_t,
                           Algorithm 1), over each network's flat parameter vector; u = -(applied update), the step
                           p_t - p_t+1, so that descent along g is positive; g is the clipped gradient the optimizer
                           receives. cos(u, g) also for Adam.
    update_magnitude.png   F.3: E_i |u_hat_i / p_i|, u_hat = a1 m exp(a2 e) the non-stochastic update of eq. 7
                           (before noise and zero-meaning); Adam's E_i |u_i / p_i| for reference.
    stochasticity.png      F.4, actor only: E_i |delta_i / p_i|, delta the network's raw noise output (the noise added
                           to p_i has std a3 |delta_i|, a3 = 0.001 in App. B.4), and the noise share ||n|| / ||u||
                           over the actor, n = u - (u computed without noise) = a3 delta eps - mean(a3 delta eps).
p is the parameter before the update; entries with p_i = 0 (biases at initialisation) are left out of |. / p_i|. The
paper's mean over parameters is dominated by the few parameters near 0, so the plots also show the median.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402  first: its XLA and OpenBLAS settings must come before jax starts
import time
from dataclasses import dataclass, replace

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

import open_es  # noqa: E402
import ppo  # noqa: E402
from ppo import PPOConfig  # noqa: E402


@dataclass(frozen=True)
class AnalysisConfig:
    optimizer: str = "trained/open_catch.msgpack"  # a learned optimizer saved by open_es.py
    # The task: PPO settings and the Adam it is compared with (default: open_es's Catch task, on which the shipped
    # optimizer was meta-trained). num_seeds agents (App. F: 16) from seed `seed` on, vmapped.
    ppo: PPOConfig = replace(open_es.CATCH, num_seeds=16)
    out_dir: str = "runs/open_appendix_f"  # PNG plots and summary.md


PRESETS = {
    "default": {},
    **{name: dict(optimizer=f"runs/open_{name}/optimizer.msgpack", out_dir=f"runs/open_appendix_f_{name}",
                  ppo=ppo.preset(name, num_seeds=16, log_every=0))
       for name in ("asterix", "breakout", "freeway", "spaceinvaders")},
}


def validate(config):
    """Refuse bad settings with a message naming the value, before anything compiles."""
    ppo.validate(config.ppo)
    if not os.path.isfile(config.optimizer):
        raise ValueError(f"no learned optimizer at {config.optimizer!r}; pass a file saved by open_es.py with "
                         f"--optimizer (paths are relative to the working directory)")


# ----------------------------------------------------------------------------------------------- the statistics
def cosine_similarity(a, b):
    """a.b / (|a| |b|) of two flat vectors; 0 where either is zero."""
    return jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-30)


def normalised_magnitudes(name, x, params, mask):
    """{name: E_i |x_i / p_i| (App. F.3, F.4), name_median: its median over i}, over the entries with mask_i = 1 and
    p_i != 0; NaN if there are none. The mean is heavy-tailed (parameters near 0); the median is not."""
    use = (mask > 0) & (params != 0)
    ratio = jnp.where(use, jnp.abs(x) / jnp.where(use, jnp.abs(params), 1.0), jnp.nan)
    return {name: jnp.nanmean(ratio), f"{name}_median": jnp.nanmedian(ratio)}


def norm_share(part, whole, mask):
    """||part|| / ||whole|| over the entries with mask_i = 1; 0 where that part of `whole` is zero."""
    return jnp.linalg.norm(part * mask) / jnp.maximum(jnp.linalg.norm(whole * mask), 1e-30)


def open_outputs_of(update):
    """Call `update` (an OPEN update) and also return the (N, 3) outputs (m, e, delta) of its network, captured
    from the call with flax's method interception, so the update itself runs unchanged."""
    def wrapped(*args, **kwargs):
        captured = []

        def capture(next_fun, call_args, call_kwargs, context):
            out = next_fun(*call_args, **call_kwargs)
            if isinstance(context.module, open_es.OpenNetwork) and context.method_name == "__call__":
                captured.append(out[1])
            return out

        with nn.intercept_methods(capture):
            result = update(*args, **kwargs)
        return result, captured[-1]
    return wrapped


def with_statistics(optimizer_fn, open_config=None):
    """Wrap `optimizer_fn` so that its state carries App. F statistics of its latest update under "metrics", which
    ppo.make_train reports per update (metrics["optimizer"]); the updates themselves are unchanged. The optimizer acts
    on {network name: params} (PPO: actor and critic); the statistics are per network: metrics[name]. For every
    optimizer: cos_gradient and update_magnitude (E|u/p| of the applied update). With `open_config` (the optimizer is
    open_es's OPEN with it), also cos_momenta (6,), non_stochastic_magnitude (F.3), stochasticity (F.4) and
    noise_share (the last two on actor parameters only: NaN and 0 without an actor mask). Every magnitude also comes
    as a median ("..._median")."""
    def wrapped_fn(optimizer_params):
        inner = optimizer_fn(optimizer_params)

        def update(grads, state, params=None, actor_mask=None, **context):
            flat = lambda tree: jax.flatten_util.ravel_pytree(tree)[0]  # noqa: E731
            if open_config is None:
                updates, inner_state = inner.update(grads, state["inner"], params, actor_mask=actor_mask, **context)
            else:
                (updates, inner_state), outputs = open_outputs_of(inner.update)(
                    grads, state["inner"], params, actor_mask=actor_mask, **context)
                # the noise part of -updates: u - u without noise (the zero-mean is over all networks together)
                noise = -flat(updates) - open_es.update_from_outputs(outputs, jnp.zeros(outputs.shape[0]), open_config)
            metrics, start = {}, 0
            for name in sorted(grads):  # flat vectors of the whole agent hold each network's parameters in turn
                g, p, u = flat(grads[name]), flat(params[name]), -flat(updates[name])
                mask = jnp.zeros_like(g) if actor_mask is None else flat(actor_mask[name])
                part, start = slice(start, start + g.size), start + g.size
                metrics[name] = {"cos_gradient": cosine_similarity(u, g),
                                 **normalised_magnitudes("update_magnitude", u, p, jnp.ones_like(g))}
                if open_config is not None:
                    m, e, delta = outputs[part].T
                    u_hat = open_config.alpha1 * m * jnp.exp(open_config.alpha2 * e)  # eq. 7
                    metrics[name].update(
                        cos_momenta=jax.vmap(cosine_similarity, in_axes=(None, 0))(u, inner_state["momenta"][:, part]),
                        **normalised_magnitudes("non_stochastic_magnitude", u_hat, p, jnp.ones_like(g)),
                        **normalised_magnitudes("stochasticity", delta, p, mask),
                        noise_share=norm_share(noise[part], u, mask))
            return updates, {"inner": inner_state, "metrics": metrics}

        def init(params):
            state = {"inner": inner.init(params), "metrics": {}}
            shapes = jax.eval_shape(lambda: update(params, state, params)[1]["metrics"])
            return dict(state, metrics=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

        return optax.GradientTransformationExtraArgs(init, update)
    return wrapped_fn


# ----------------------------------------------------------------------------------------------- the runs
def run(config, open_config, meta_params):
    """Train config.ppo.num_seeds PPO agents with OPEN and with Adam, all in one jitted program. Returns host arrays
    {"OPEN": out, "Adam": out}, each out = ppo.make_train's output without the parameters, seeds first."""
    adam = ppo.hand_designed("adam", ppo.optimizer_steps(config.ppo) if config.ppo.anneal_lr else None)
    trains = {"OPEN": (ppo.make_train(config.ppo, with_statistics(open_es.open_optimizer(open_config), open_config)),
                       meta_params),
              "Adam": (ppo.make_train(config.ppo, with_statistics(adam)), ppo.hyperparameters(config.ppo))}

    @jax.jit
    def train_all(keys):
        outs = {name: jax.vmap(train, in_axes=(0, None))(keys, optimizer_params)
                for name, (train, optimizer_params) in trains.items()}
        return {name: {k: v for k, v in out.items() if k != "params"} for name, out in outs.items()}

    seeds = jnp.arange(config.ppo.seed, config.ppo.seed + config.ppo.num_seeds)
    return jax.device_get(train_all(jax.vmap(jax.random.PRNGKey)(seeds)))


# ----------------------------------------------------------------------------------------------- plots and summary
COLORS = {"OPEN": "C0", "Adam": "C1"}


def mean_and_standard_error(x):
    """Over seeds (axis 0), ignoring NaN."""
    count = np.sum(np.isfinite(x), 0)
    return np.nanmean(x, 0), np.nanstd(x, 0) / np.sqrt(np.maximum(count, 1))


def plot_curve(ax, steps, values, label, **style):
    mean, se = mean_and_standard_error(values)
    line, = ax.plot(steps, mean, label=label, **style)
    ax.fill_between(steps, mean - se, mean + se, alpha=0.2, color=line.get_color())


def plot_all(runs, config, out_dir):
    """The four PNGs of the module docstring; returns their paths."""
    import matplotlib.pyplot as plt
    steps = (np.arange(runs["OPEN"]["metrics"]["episode_return"].shape[1]) + 1) * config.ppo.num_envs * \
        config.ppo.num_steps
    stats = {name: run["metrics"]["optimizer"] for name, run in runs.items()}
    title = f"{config.ppo.env_name}, {config.ppo.num_seeds} seeds (mean, s.e.)"
    paths = {name: os.path.join(out_dir, f"{name}.png")
             for name in ("dormancy", "cosine_similarity", "update_magnitude", "stochasticity")}

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        plot_curve(ax, steps, run["metrics"]["dormant_fraction"], name, color=COLORS[name])
    ax.set(xlabel="environment steps", ylabel="fraction of dormant neurons (tau = 0)",
           title=f"F.1 dormancy of the actor: {title}")
    ax.legend()
    runs.save_figure(fig, paths["dormancy"])

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True)
    panels = [("gradient", lambda s: s["cos_gradient"])] + [
        (f"momentum beta = {beta}", lambda s, i=i: s["cos_momenta"][..., i])
        for i, beta in enumerate(open_es.MOMENTUM_BETAS)]
    for ax, (what, select) in zip(axes.flat, panels):
        for name, s in stats.items():
            if name == "OPEN" or what == "gradient":
                for network, style in (("actor", "-"), ("critic", "--")):
                    plot_curve(ax, steps, select(s[network]), f"{name} {network}", linestyle=style,
                               color=COLORS[name])
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set(title=f"cos(update, {what})", xlabel="environment steps")
    axes.flat[0].legend()
    axes.flat[-1].axis("off")
    fig.suptitle(f"F.2 cosine similarity of the update with the gradient and momenta: {title}")
    runs.save_figure(fig, paths["cosine_similarity"])

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (suffix, over) in zip(axes, (("", "mean (App. F.3)"), ("_median", "median"))):
        for network, style in (("actor", "-"), ("critic", "--")):
            plot_curve(ax, steps, stats["OPEN"][network]["non_stochastic_magnitude" + suffix],
                       f"OPEN |u_hat / p| {network}", linestyle=style, color=COLORS["OPEN"])
            plot_curve(ax, steps, stats["Adam"][network]["update_magnitude" + suffix], f"Adam |u / p| {network}",
                       linestyle=style, color=COLORS["Adam"])
        ax.set(xlabel="environment steps", ylabel=f"{over} over parameters of |update_i / p_i|", yscale="log")
    axes[0].legend()
    fig.suptitle(f"F.3 normalised non-stochastic update: {title}")
    runs.save_figure(fig, paths["update_magnitude"])

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, (suffix, over) in zip(axes, (("", "mean (App. F.4)"), ("_median", "median"))):
        plot_curve(ax, steps, stats["OPEN"]["actor"]["stochasticity" + suffix], "OPEN actor", color=COLORS["OPEN"])
        ax.set(xlabel="environment steps", ylabel=f"{over} over parameters of |delta_i / p_i|", yscale="log")
    plot_curve(axes[2], steps, stats["OPEN"]["actor"]["noise_share"], "OPEN actor", color=COLORS["OPEN"])
    axes[2].set(xlabel="environment steps", ylabel="||noise part|| / ||update||",
                title="share of the actor's update that is noise")
    fig.suptitle(f"F.4 learned stochasticity: {title}")
    runs.save_figure(fig, paths["stochasticity"])
    return list(paths.values())


def summary(runs, config, seconds):
    """Markdown: final returns, and each statistic's mean over seeds in the first and last tenth of training."""
    updates = runs["OPEN"]["metrics"]["episode_return"].shape[1]
    tenth = max(updates // 10, 1)
    early_late = lambda x: (np.nanmean(x[:, :tenth]), np.nanmean(x[:, -tenth:]))  # noqa: E731
    lines = [f"# OPEN Appendix F analysis: {config.optimizer} on {config.ppo.env_name}", "",
             f"PPO {config.ppo.total_timesteps:,} steps ({updates} updates), {config.ppo.num_seeds} seeds; "
             f"{seconds:.0f} s (compile included).", ""]
    for name, run in runs.items():
        final = run["final_return"]
        lines.append(f"- {name}: final return {final.mean():.3f} +- {final.std() / np.sqrt(final.size):.3f} (s.e.)")
    if config.ppo.activation != "relu":
        lines.append(f"- note: activation {config.ppo.activation}: tau = 0 dormancy is only meaningful for ReLU (F.1)")
    lines += ["", f"| statistic | first {tenth} updates | last {tenth} updates |", "|---|---|---|"]
    rows = [(f"{name} dormant fraction (actor)", run["metrics"]["dormant_fraction"]) for name, run in runs.items()]
    for network in ("actor", "critic"):
        s, adam = runs["OPEN"]["metrics"]["optimizer"][network], runs["Adam"]["metrics"]["optimizer"][network]
        rows += [(f"OPEN cos(u, g) {network}", s["cos_gradient"]), (f"Adam cos(u, g) {network}", adam["cos_gradient"])]
        rows += [(f"OPEN cos(u, m_{beta}) {network}", s["cos_momenta"][..., i])
                 for i, beta in enumerate(open_es.MOMENTUM_BETAS)]
        for suffix, over in (("", "mean"), ("_median", "median")):
            rows += [(f"OPEN {over} abs(u_hat / p) {network}", s["non_stochastic_magnitude" + suffix]),
                     (f"Adam {over} abs(u / p) {network}", adam["update_magnitude" + suffix])]
    actor = runs["OPEN"]["metrics"]["optimizer"]["actor"]
    rows += [("OPEN mean abs(delta / p) actor", actor["stochasticity"]),
             ("OPEN median abs(delta / p) actor", actor["stochasticity_median"]),
             ("OPEN noise share of the update, actor", actor["noise_share"])]
    lines += [f"| {label} | {early_late(x)[0]:.4g} | {early_late(x)[1]:.4g} |" for label, x in rows]
    return "\n".join(lines) + "\n"


def main(config):
    validate(config)
    open_config, meta_params = open_es.load_optimizer(config.optimizer)
    if replace(open_config.ppo, num_seeds=0, seed=0) != replace(config.ppo, num_seeds=0, seed=0):
        print(f"note: {config.optimizer} was meta-trained on {open_config.ppo.env_name} with other PPO settings; "
              f"analysing it on {config.ppo.env_name}")
    start = time.time()
    runs = run(config, open_config, meta_params)
    seconds = time.time() - start
    os.makedirs(config.out_dir, exist_ok=True)
    paths = plot_all(runs, config, config.out_dir)
    text = summary(runs, config, seconds)
    runs.write_atomic(os.path.join(config.out_dir, "summary.md"), text)
    print(text)
    print("plots: " + ", ".join(paths))
    return runs


if __name__ == "__main__":
    main(runs.parse_config(AnalysisConfig, PRESETS))
