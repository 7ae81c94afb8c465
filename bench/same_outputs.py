"""Do two checkouts compute the same results? For restructurings, which must not change behaviour: a fixed set of
short runs of every script, run in this checkout and in another one (e.g. a git worktree of the commit before), one
checkout after the other on this machine, then every number they wrote (metrics.jsonl, the reports' .json files,
learned optimizers and checkpoints) compared bit for bit, timings left out. Never compares against stored numbers:
XLA's code differs between CPUs, and with the number of threads it may use, so record both with the same pinning
(e.g. `taskset -c 0 python ...`): the same code pinned and unpinned differs in the last bits.

    git worktree add /tmp/before HEAD~5 && python bench/same_outputs.py /tmp/before
    python bench/same_outputs.py /tmp/before --only ppo_default open_es     # some of the runs
    python /tmp/before/bench/same_outputs.py    # no other checkout: only record this one's outputs (a copy of
    python bench/same_outputs.py /tmp/before --recorded   # this script there), then compare with them later
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from flax import serialization

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = "runs/same_outputs"  # relative to each checkout, so that configs that record their out_dir agree
TIMINGS = {"seconds"}  # record fields that measure time, not results
BREAKOUT = ["--preset", "breakout", "--total-timesteps", "32768", "--num-seeds", "2", "--log-every", "1"]
RUNS = {  # name: script and arguments ({out}: the run's output directory)
    "ppo_default": ["ppo.py", "--run-dir", "{out}"],
    "ppo_breakout": ["ppo.py", *BREAKOUT, "--run-dir", "{out}"],
    "ppo_breakout_bootstrap": ["ppo.py", *BREAKOUT, "--time-limit", "bootstrap", "--run-dir", "{out}"],
    "ppo_ant_optim4rl": ["ppo.py", "--preset", "ant_optim4rl", "--num-envs", "64", "--total-timesteps", "20480",
                         "--num-seeds", "1", "--log-every", "1", "--eval-episodes", "2", "--episode-length", "50",
                         "--run-dir", "{out}"],
    "open_es": ["open_es.py", "--generations", "4", "--eval-every", "2", "--eval-seeds", "4", "--out-dir", "{out}",
                "--ppo.total-timesteps", "32768", "--ppo.learning-rate", "0.003", "--ppo.b2", "0.999"],  # issue 30's
    "optim4rl_metagrad": ["optim4rl_metagrad.py", "--num-meta-steps", "4", "--checkpoint-every", "2",
                          "--eval-timesteps", "20000", "--eval-seeds", "2", "--run-dir", "{out}"],
    "baselines": ["baselines.py", "--num-learning-rates", "1", "--betas", "0.9", "--anneal", "False", "--tune-seeds",
                  "1", "--eval-seeds", "2", "--bootstrap-reps", "100", "--learned", "trained/open_catch.msgpack",
                  "--out-dir", "{out}"],
    "eval_breakout_OPEN": ["open_es.py", "--eval", "trained/authors/breakout_OPEN.npy", "--preset", "breakout",
                           "--eval-seeds", "2", "--ppo.total-timesteps", "32768", "--out-dir", "{out}"],
}


def run_all(checkout, names):
    """Run each named run in `checkout` (its own copy of the repo); return {name: (seconds, return code)}."""
    done = {}
    for name in names:
        out = os.path.join(OUT, name)
        shutil.rmtree(os.path.join(checkout, out), ignore_errors=True)
        command = [sys.executable, RUNS[name][0]] + [a.format(out=out) for a in RUNS[name][1:]]
        start = time.time()
        os.makedirs(os.path.join(checkout, OUT), exist_ok=True)
        with open(os.path.join(checkout, OUT, f"{name}.log"), "w") as log:  # the run's printed lines
            code = subprocess.run(command, cwd=checkout, stdout=log, stderr=subprocess.STDOUT).returncode
        done[name] = (time.time() - start, code)
        print(f"  {checkout}: {name} in {done[name][0]:.0f} s, exit {code}", flush=True)
    return done


def numbers(path):
    """Every result a file holds, as a flat {key: value}: JSON (without timings), msgpack arrays."""
    if path.endswith(".msgpack"):
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    else:
        with open(path) as f:
            tree = [json.loads(line) for line in f] if path.endswith(".jsonl") else json.load(f)
    flat = {}

    def walk(node, key):
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in TIMINGS:
                    walk(v, f"{key}/{k}")
        elif isinstance(node, str) and node.startswith("{"):  # a config stored as JSON text: field by field
            walk(json.loads(node), key)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        else:
            flat[key] = np.asarray(node)
    walk(tree, "")
    return flat


def differences(a_dir, b_dir):
    """(files compared, [what differs]) between two output directories of the same run."""
    files = sorted(os.path.relpath(os.path.join(root, f), a_dir) for root, _, fs in os.walk(a_dir) for f in fs
                   if f.endswith((".json", ".jsonl", ".msgpack")) and "wandb" not in root)
    diffs = []
    for rel in files:
        other = os.path.join(b_dir, rel)
        if not os.path.exists(other):
            diffs.append(f"{rel}: missing in the other checkout")
            continue
        a, b = numbers(os.path.join(a_dir, rel)), numbers(other)
        diffs += [f"{rel}{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b))
                  if k not in a or k not in b or a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
    return len(files), diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", nargs="?", help="the other checkout (a directory with the same scripts)")
    parser.add_argument("--recorded", action="store_true", help="use the other checkout's recorded outputs")
    parser.add_argument("--compare-only", action="store_true", help="compare both checkouts' recorded outputs")
    parser.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS), metavar="RUN",
                        help=f"some of the runs: {', '.join(RUNS)}")
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}; running {len(args.only)} runs in {HERE}")
    if args.other is None:
        sys.exit(any(code for _, code in run_all(HERE, args.only).values()))
    other = os.path.abspath(args.other)
    if not os.path.isfile(os.path.join(other, "ppo.py")):
        raise SystemExit(f"{other} is not a checkout of this repo (no ppo.py)")
    recorded = {name: (float("nan"), 0) for name in args.only}
    mine = recorded if args.compare_only else run_all(HERE, args.only)
    theirs = recorded if args.recorded or args.compare_only else run_all(other, args.only)
    print("\n| run | files | identical | this checkout (s) | other (s) |\n|---|---|---|---|---|")
    failed = False
    for name in args.only:
        count, diffs = differences(os.path.join(HERE, OUT, name), os.path.join(other, OUT, name))
        ok = mine[name][1] == theirs[name][1] == 0 and count > 0 and not diffs
        failed |= not ok
        print(f"| {name} | {count} | {'yes' if ok else 'NO'} | {mine[name][0]:.0f} | {theirs[name][0]:.0f} |")
        for line in diffs[:5] + [f"... {len(diffs) - 5} more"] * (len(diffs) > 5):
            print(f"    {line}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
