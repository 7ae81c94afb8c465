"""Where PPO's time goes: one traced run (jax.profiler) of ppo.py's jitted training program, each XLA op's time
attributed to the line of this repo it came from (the compiled HLO's stack frames), the top ones printed with their
share.

    python bench/profile_ppo.py                            # Breakout-MinAtar (OPEN Table 3), Adam, 8 updates
    python bench/profile_ppo.py --optimizer open           # the same with the authors' released Breakout OPEN

Loop ops (while, conditional, call) are left out, as their time is that of the ops inside them; compile is excluded.
Run it on a quiet machine: the shares hold under load only roughly, the times not at all.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402, F401  first: its XLA and OpenBLAS settings must come before jax starts
import argparse
import collections
import glob
import re
import tempfile
import time
from dataclasses import replace

import jax

import open_es  # noqa: E402
import ppo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = {"jit(train)", "while", "body", "closed_call", "vmap()", "cond", "branch_0_fun", "branch_1_fun"}


def source_of_ops(hlo_text):
    """{HLO instruction name: 'file:line op'}: the innermost line of this repo in the op's stack (the compiled
    module's FileNames, FileLocations and StackFrames tables), and its op name."""
    table = {"FileNames": {}, "FileLocations": {}, "StackFrames": {}}
    section, sources = None, {}
    for line in hlo_text.splitlines():
        if line.strip() in table:
            section = table[line.strip()]
        elif section is not None and re.match(r"\d+ ", line):
            key, value = line.split(" ", 1)
            section[int(key)] = value
        elif section is not None and line.strip() == "":
            section = None
    files = {k: os.path.relpath(v.strip('"'), ROOT) for k, v in table["FileNames"].items()}
    locations = {k: (files[int(re.search(r"file_name_id=(\d+)", v).group(1))], re.search(r" line=(\d+)", v).group(1))
                 for k, v in table["FileLocations"].items()}
    frames = {k: (int(re.search(r"file_location_id=(\d+)", v).group(1)), int(re.search(r"parent_frame_id=(\d+)",
                                                                                          v).group(1)))
              for k, v in table["StackFrames"].items()}

    def repo_line(frame):
        for _ in range(64):  # innermost first, up to the caller in this repo
            if frame not in frames:
                return "?"
            location, parent = frames[frame]
            file, number = locations[location]
            if not file.startswith(("..", ".venv")):
                return f"{file}:{number}"
            frame = parent if parent != frame else None
        return "?"

    for line in hlo_text.splitlines():
        name, frame = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line), re.search(r"stack_frame_id=(\d+)", line)
        if name and frame:
            op = re.search(r'op_name="([^"]+)"', line)
            path = [p for p in (op.group(1).split("/") if op else []) if p not in NOISE]
            sources[name.group(1)] = f"{repo_line(int(frame.group(1)))} {'/'.join(path[-3:])}"
    return sources


def profile(train, args, sources, top):
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        jax.block_until_ready(train(*args))
        seconds = time.perf_counter() - start
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
    by_source, total = collections.Counter(), 0
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                op = stats.get("hlo_op")
                if op is None or stats.get("hlo_module") != "jit_train" or op.startswith(("while", "conditional",
                                                                                          "call")):
                    continue
                by_source[sources.get(op, op)] += event.duration_ns
                total += event.duration_ns
    print(f"  wall {seconds:.2f} s; op time {total / 1e9:.2f} s (both cores' threads together)")
    for where, ns in by_source.most_common(top):
        print(f"  {100 * ns / total:5.1f}%  {ns / 1e6:9.1f} ms  {where}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="breakout")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "open"))
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    config = ppo.preset(args.preset, log_every=0, eval_episodes=1, eval_max_steps=1)
    config = replace(config, total_timesteps=config.num_envs * config.num_steps * args.updates)
    if args.optimizer == "open":
        optimizer_fn, optimizer_params = open_es.learned_optimizer(
            os.path.join(ROOT, "trained", "authors", f"{args.preset}_OPEN.npy"))
    else:
        optimizer_fn, optimizer_params = ppo.hand_designed("adam"), ppo.hyperparameters(config)
    inputs = (jax.random.PRNGKey(0), optimizer_params)
    compiled = jax.jit(ppo.make_train(config, optimizer_fn)).lower(*inputs).compile()
    jax.block_until_ready(compiled(*inputs))
    print(f"{config.env_name}, PPO + {args.optimizer}, {args.updates} updates of {config.num_envs} envs x "
          f"{config.num_steps} steps, {config.update_epochs} epochs x {config.num_minibatches} minibatches; load "
          f"{os.getloadavg()[0]:.2f}")
    profile(compiled, inputs, source_of_ops(compiled.as_text()), args.top)


if __name__ == "__main__":
    main()
