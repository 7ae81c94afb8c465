"""OPEN's generalisation over gridworlds (Figures 4 and 16): a learned optimizer / Adam in distribution ('all') and out
of support (rand_dense, rand_sparse, rand_long and the three mazes), for several agent widths and training lengths.
Each seed trains on its own level, the same for both optimizers; the table is the IQM over seeds of the return
divided by Adam's mean return (the paper's metric, which needs Adam's mean well above 0: each optimizer's own IQM
return is reported next to it). Every open_es.py flag applies (--preset, --eval-seeds, --ppo.*, --out-dir).

    python analysis/open_generalisation.py --eval trained/authors/gridworld_OPEN.npy --preset gridworld
    python analysis/open_generalisation.py --eval runs/open_gridworld/optimizer.msgpack --preset gridworld \
        --widths 16 --lengths 2.0 --eval-seeds 8
"""
import argparse
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402  first: its XLA and OpenBLAS settings must come before jax starts
from rliable.metrics import aggregate_iqm  # noqa: E402

import gridworld  # noqa: E402
import open_es  # noqa: E402

LEVELS = ("all", "rand_dense", "rand_sparse", "rand_long") + tuple(gridworld.MAZES)
WIDTHS = (8, 16, 32, 64, 128)  # agent widths (Figure 4)
LENGTHS = (0.25, 0.5, 1.0, 2.0)  # training lengths, x total_timesteps (Figure 16)


def generalisation(config, optimizer_fn, meta_params, out_dir, widths=WIDTHS, lengths=LENGTHS):
    """Every level x (width, length) setting of config.ppo (open_es.versus_adam each); writes generalisation.md."""
    settings = [(f"width {w}", replace(config.ppo, width=w)) for w in widths] + \
        [(f"length x{x}", replace(config.ppo, total_timesteps=int(x * config.ppo.total_timesteps))) for x in lengths]
    label = open_es.LABELS[config.optimizer]
    lines = [f"# {label} / Adam on gridworlds ({config.eval_seeds} seeds)", "",
             f"| level | setting | IQM of return / Adam's mean | IQM return: {label}, Adam | Adam's mean return |",
             "|---|---|---|---|---|"]
    for level in LEVELS:
        for setting, ppo_config in settings:
            ppo_config = replace(ppo_config, env_name=level, eval_max_steps=gridworld.max_horizon(level))
            out_path = os.path.join(out_dir, "generalisation", f"{level}_{setting.replace(' ', '_')}")
            learned, adam = (r["final"] for r in open_es.versus_adam(config, optimizer_fn, meta_params, ppo_config,
                                                                     out_path).values())
            lines.append(f"| {level} | {setting} | {aggregate_iqm(learned[:, None] / adam.mean()):.3f} | "
                         f"{aggregate_iqm(learned[:, None]):.3f}, {aggregate_iqm(adam[:, None]):.3f} | "
                         f"{adam.mean():.3f} |")
            print(lines[-1], flush=True)
    runs.write_atomic(os.path.join(out_dir, "generalisation.md"), "\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--widths", type=int, nargs="+", default=WIDTHS)
    parser.add_argument("--lengths", type=float, nargs="+", default=LENGTHS)
    args, rest = parser.parse_known_args(argv)
    config = runs.parse_config(open_es.OpenConfig, open_es.PRESETS, rest)
    if not config.eval:
        raise SystemExit("--eval FILE is needed: the learned optimizer to evaluate")
    if min(args.widths) < 1 or min(args.lengths) <= 0:
        raise SystemExit(f"widths and lengths must be positive, got {args.widths} and {args.lengths}")
    open_es.validate(config)
    trained, meta_params = open_es.load_optimizer(config.eval)
    out_dir = config.out_dir
    config = replace(trained, ppo=config.ppo, eval_seeds=config.eval_seeds)
    generalisation(config, open_es.open_optimizer(config), meta_params, out_dir, args.widths, args.lengths)


if __name__ == "__main__":
    main()
