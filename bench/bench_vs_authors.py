"""This repo's speed next to the code it replaces, from one run on one machine (compile excluded throughout):

1. PPO + Adam and PPO + OPEN (the authors' released Breakout optimizer) at OPEN's Breakout-MinAtar preset (64 envs x
   128 steps, 4 epochs x 8 minibatches, 61 updates = 499,712 env steps), and their time ratio; next to PureJaxRL's PPO
   and the OPEN authors' PPO with Adam and with the same optimizer;
2. ES generations at populations 8, 16, 32 and 64 (this repo only: open_es.py's default task);
3. Optim4RL meta-training at the authors' Catch settings (64 units of one env, Dense-256 agent, M = 4): seconds a
   meta-step, env steps/s and peak resident memory; next to the authors' code (meta_rl_catch.json at one sweep point).

    python bench/bench_vs_authors.py                                  # this repo only
    python bench/bench_vs_authors.py --anchors DRIVERS --built DIR --purejaxrl REPO

The reference runs need the anchor drivers (open_driver.py, purejaxrl_driver.py, o4rl_driver.py: they import the
authors' code unchanged and split compile from run) in DRIVERS, the authors' checkouts and venvs built in DIR
(open/ with open-venv/, o4rl/ with o4rl-venv/), and a PureJaxRL checkout; each one missing is skipped with a note.
Every measurement runs in its own process, so that each peak memory is its own. Run it on a quiet machine (nothing
else running, load under about 1.5); the load is printed before and after.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPDATES = 61  # the anchors' 5e5 steps at 64 x 128 steps an update


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(command, cwd=ROOT, env=None):
    """stdout of `command` (a list) and its peak resident memory in GiB, the command run under a small wrapper process
    so that RUSAGE_CHILDREN is this command's alone."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=cwd, env={**os.environ, **(env or {})},
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout, int(re.search(r"PEAK_RSS_KIB (\d+)", result.stdout).group(1)) / 2**20


def field(text, name, line_start="RESULT"):
    """The value of `name=` on the first line starting with `line_start`."""
    line = next(x for x in text.splitlines() if x.startswith(line_start))
    return float(re.search(rf"{re.escape(name)}=([0-9.]+)", line).group(1))


def ours(populations):
    out, _ = run([sys.executable, "bench/bench_open.py", "--updates", str(UPDATES), "--populations",
                  *map(str, populations)])
    speeds = {name: float(re.search(rf"PPO \+ {name}\s.*?:\s+([0-9,]+) env steps/s", out).group(1).replace(",", ""))
              for name in ("Adam", "OPEN")}
    generations = re.findall(r"ES generation, population\s+(\d+):\s+([0-9.]+) s,\s+([0-9,]+)", out)
    out, rss = run([sys.executable, "bench/bench_optim4rl.py", "--updates", "0"])
    seconds, steps = re.search(r"meta-step\s+:\s+([0-9.]+) s \(([0-9,]+)", out).groups()
    return speeds, generations, (float(seconds), float(steps.replace(",", "")), rss)


def anchors(drivers, built, purejaxrl):
    """The reference figures that can be run here; a note for each that cannot."""
    found, notes = {}, []
    driver = lambda name: os.path.join(drivers or "", name)  # noqa: E731
    if drivers and purejaxrl and os.path.isfile(driver("purejaxrl_driver.py")):
        out, _ = run([sys.executable, driver("purejaxrl_driver.py"), "--repo", purejaxrl, "--runs", "3"])
        found["PureJaxRL PPO + Adam"] = field(out, "steps_per_s")
    else:
        notes.append("PureJaxRL: skipped (needs --anchors with purejaxrl_driver.py and --purejaxrl)")
    open_python = os.path.join(built or "", "open-venv", "bin", "python")
    if drivers and os.path.isfile(open_python) and os.path.isfile(driver("open_driver.py")):
        for opt, name in (("adam", "OPEN authors' PPO + Adam"), ("open", "OPEN authors' PPO + OPEN")):
            out, _ = run([open_python, driver("open_driver.py"), "--repo", os.path.join(built, "open"), "--env",
                          "breakout", "--opt", opt, "--seeds", "1"], env={"WANDB_MODE": "disabled"})
            found[name] = field(out, "steps_per_s")
    else:
        notes.append("OPEN authors' code: skipped (needs --anchors with open_driver.py and --built with open-venv/)")
    o4rl_python = os.path.join(built or "", "o4rl-venv", "bin", "python")
    if drivers and os.path.isfile(o4rl_python) and os.path.isfile(driver("o4rl_driver.py")):
        out, rss = run([o4rl_python, driver("o4rl_driver.py"), "--repo", os.path.join(built, "o4rl"), "--config",
                        "configs/meta_rl_catch_bench.json", "--idx", "1", "--mode", "meta"])
        found["Optim4RL authors"] = (field(out, "s_per_meta_iter(median 2..N)"), field(out, "steps_per_s"), rss)
    else:
        notes.append("Optim4RL authors' code: skipped (needs --anchors with o4rl_driver.py and --built with "
                     "o4rl-venv/)")
    return found, notes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--anchors", help="folder of the anchor drivers")
    parser.add_argument("--built", help="folder with the authors' checkouts and venvs (open/, open-venv/, o4rl/, ...)")
    parser.add_argument("--purejaxrl", help="a PureJaxRL checkout (holds purejaxrl/ppo.py)")
    parser.add_argument("--populations", type=int, nargs="+", default=[8, 16, 32, 64])
    args = parser.parse_args()
    print(f"load before: {load()}")
    (speeds, generations, meta), (reference, notes) = ours(args.populations), anchors(args.anchors, args.built,
                                                                                      args.purejaxrl)
    print(f"load after: {load()}\n")
    print(f"Breakout-MinAtar, {UPDATES} updates of 64 envs x 128 steps, 1 seed; env steps/s")
    print(f"  this repo   PPO + Adam {speeds['Adam']:10,.0f}   PPO + OPEN {speeds['OPEN']:10,.0f}   OPEN / Adam "
          f"{speeds['Adam'] / speeds['OPEN']:.2f}x")
    if "PureJaxRL PPO + Adam" in reference:
        print(f"  PureJaxRL   PPO + Adam {reference['PureJaxRL PPO + Adam']:10,.0f}   this repo / PureJaxRL "
              f"{speeds['Adam'] / reference['PureJaxRL PPO + Adam']:.2f}x")
    if "OPEN authors' PPO + OPEN" in reference:
        adam, open_ = reference["OPEN authors' PPO + Adam"], reference["OPEN authors' PPO + OPEN"]
        print(f"  OPEN's code PPO + Adam {adam:10,.0f}   PPO + OPEN {open_:10,.0f}   OPEN / Adam {adam / open_:.2f}x   "
              f"this repo / theirs, with OPEN: {speeds['OPEN'] / open_:.2f}x")
    print("ES generations (open_es.py's default task; training env steps/s)")
    for population, seconds, steps in generations:
        print(f"  population {population:>3}: {seconds:>6} s  {steps:>10} env steps/s")
    print("Optim4RL meta-training, Catch, 64 units x 1 env, Dense 256, M = 4")
    print(f"  this repo   {meta[0]:6.2f} s a meta-step  {meta[1]:9,.0f} env steps/s  peak RSS {meta[2]:.2f} GiB")
    if "Optim4RL authors" in reference:
        seconds, steps, rss = reference["Optim4RL authors"]
        print(f"  authors     {seconds:6.2f} s a meta-step  {steps:9,.0f} env steps/s  peak RSS {rss:.2f} GiB   "
              f"this repo / theirs per env step: {meta[1] / steps:.2f}x")
    for note in notes:
        print(f"  {note}")


if __name__ == "__main__":
    main()
