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


def test_ppo_run_records_each_logged_update_and_final_return_also_to_wandb_offline(tmp_path, monkeypatch):
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


@pytest.mark.parametrize("validate, config", [(ppo.validate, ppo.PPOConfig()), (open_es.validate, open_es.OpenConfig()),
                                              (om.validate, om.Optim4RLConfig())])
def test_wandb_without_the_package_is_refused_before_compiling(validate, config, monkeypatch):
    monkeypatch.setattr(runs.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="wandb = True, but wandb is not installed; valid: wandb = False"):
        validate(replace(config, wandb=True))
