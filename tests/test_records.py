"""Every run's machine-readable record: metrics.jsonl (the printed progress lines as JSON), and the same records in
Weights & Biases with --wandb (checked offline). open_es.py's and optim4rl_metagrad.py's records are checked in
their own test files, on the runs those tests make anyway."""
import glob
import json
import os
from dataclasses import replace

import numpy as np
import pytest

import open_es
import optim4rl_metagrad as om
import ppo
import runs


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as file:
        return [json.loads(line) for line in file]


def test_ppo_run_records_each_logged_update_and_final_return_also_to_wandb_offline(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = replace(ppo.PPOConfig(), env_name="Catch-bsuite", num_envs=4, num_steps=8, total_timesteps=96,
                     num_minibatches=2, update_epochs=1, width=4, eval_episodes=2, num_seeds=2, log_every=1,
                     run_dir=str(tmp_path), wandb=True)
    try:
        out = ppo.main(config)
    finally:
        wandb.finish()
    lines = records(config.run_dir)
    updates = sorted((line["seed"], line["update"]) for line in lines if "update" in line)
    assert updates == [(seed, update) for seed in (0, 1) for update in (1, 2, 3)]
    assert set(next(line for line in lines if "update" in line)) == {"seed", "update", "return", "loss", "dormant"}
    finals = {line["seed"]: line["final_return"] for line in lines if "final_return" in line}
    np.testing.assert_allclose([finals[0], finals[1]], np.asarray(out["final_return"]), rtol=1e-6)
    assert glob.glob(os.path.join(config.run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    # printed: one line per logged update for both seeds, their mean and range; speed and time left after the first
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("update ")]
    assert [line.split()[1] for line in printed] == ["1/3", "2/3", "3/3"]
    for update, line in enumerate(printed, 1):
        returns = [r["return"] for r in lines if r.get("update") == update]
        assert f"return {np.mean(returns):.2f} [{min(returns):.2f}, {max(returns):.2f}] over 2 seeds" in line
    assert printed[0].endswith("starting") and all(line.endswith(" left") for line in printed[1:])


def test_pace_gives_speed_and_the_time_left_from_the_median_step_after_the_first():
    pace = runs.Pace(10, 1000)  # 10 steps of 1000 env steps
    assert pace(1, 30.0) == "33 env steps/s with compiling"  # the first step: no estimate from it
    pace(2, 2.0)
    assert pace(3, 4.0) == "250 env steps/s, 0:00:21 left"  # 7 x median(2 s, 4 s)
    running = runs.Pace(10, 1000, compiles=False)  # every step counts
    assert running(1, 30.0) == "33 env steps/s, 0:04:30 left"  # 9 x 30 s
    assert runs.clock(3725) == "1:02:05"


@pytest.mark.parametrize("validate, config", [(ppo.validate, ppo.PPOConfig()), (open_es.validate, open_es.OpenConfig()),
                                              (om.validate, om.Optim4RLConfig())])
def test_wandb_without_the_package_is_refused_before_compiling(validate, config, monkeypatch):
    monkeypatch.setattr(runs.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="wandb = True, but wandb is not installed; valid: wandb = False"):
        validate(replace(config, wandb=True))
