"""What a run is: one definition, used by the config hash, the job directory's name and the report's arms."""

from __future__ import annotations

import json

import pytest

from ablate import rundir
from ablate.compose import compose
from ablate.config import ConfigError
from ablate.identity import (BOOKKEEPING_KEYS, EXECUTION_KEYS, check_sweep, config_hash, is_factor_key,
                             is_identity_key, job_dirname)
from conftest import make_cfg, run_cli

# A value other than the default for every key outside a run's identity.
OTHER = {"trainer.device": "cpu", "trainer.pipeline": "dataloader", "trainer.num_workers": "0",
         "trainer.channels_last": "true", "trainer.compile": "true", "trainer.cuda_graph": "false",
         "trainer.cudnn_benchmark": "false", "trainer.eval_batch_size": "64", "trainer.log_every": "7",
         "trainer.checkpoint_every": "3", "trainer.fail_fast": "true", "trainer.failure_value": "-1",
         "trainer.save_best": "false"}


def test_every_key_outside_the_identity_leaves_hash_and_name_alone():
    assert set(OTHER) == EXECUTION_KEYS | BOOKKEEPING_KEYS
    base = make_cfg()
    for key, value in OTHER.items():
        override = f"{key}={value}"
        assert config_hash(make_cfg([override])) == config_hash(base), key
        assert not is_identity_key(key) and job_dirname([override, "scheduler=step"]) == "scheduler=step", key
    for override in ("optimizer.lr=0.5", "trainer.seed=3", "trainer.amp=bf16", "model=lenet", "trainer.epochs=3",
                     "dataset.val_size=0.2", "dataset.split_seed=1", "trainer.train_eval_size=10"):
        assert config_hash(make_cfg([override])) != config_hash(base), override
        assert job_dirname([override]) == override
    for key in ("data.root", "data.download", "report.arm_panels", "dry_run", "hydra/launcher", "logger"):
        assert not is_identity_key(key) and not is_factor_key(key), key
    assert all(is_factor_key(k) for k in EXECUTION_KEYS)  # a merged report may compare how runs executed
    assert not any(is_factor_key(k) for k in BOOKKEEPING_KEYS)


def test_job_dirs_are_named_by_the_identity_definition():
    """conf/config.yaml names job dirs through ablate.identity.job_dirname, nothing of its own."""
    cfg = compose(["scheduler=step", "trainer.seed=1", "trainer.device=cpu", "data.root=/x", "report.min_seeds=2",
                   "experiment=lenet_fashion"], return_hydra_config=True)
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == "${ablate_subdir:${hydra.overrides.task}}"
    assert job_dirname(list(cfg.hydra.overrides.task)) == "experiment=lenet_fashion,scheduler=step,trainer.seed=1"
    assert job_dirname(["data.root=/x"]) == "default"


def test_sweeping_an_execution_option_is_refused_by_name():
    check_sweep(["scheduler=step,cosine", "trainer.seed=0,1", "trainer.device=cpu"])  # fine
    with pytest.raises(Exception, match="trainer.cuda_graph is swept"):
        check_sweep(["scheduler=step", "trainer.cuda_graph=true,false"])
    # Old: keys outside the run's groups passed, and data.root=/a,/b trained once and skipped once in one directory.
    for swept in ("data.root=/a,/b", "logger=csv,tensorboard", "report.confidence=0.9,0.95"):
        with pytest.raises(ConfigError, match=f"{swept.split('=')[0]} is swept, but it says where data is read"):
            check_sweep(["scheduler=step", swept])
    check_sweep(["hydra/launcher=basic", "+variant=base,dropout", "structure=base,deep"])  # fine


@pytest.mark.slow
def test_relaunch_with_other_execution_options_skips_every_finished_run_in_place(tmp_path):
    sweep = tmp_path / "sweep"
    base = ["-m", "scheduler=step,cosine", "model=lenet", "trainer.epochs=1", "trainer.limit_batches=2",
            "trainer.eval_batch_size=500", f"hydra.sweep.dir={sweep}", "report.arm_panels=false"]
    first = run_cli(base, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {d.name: (d / rundir.EPOCHS_CSV).read_bytes() for d in sweep.iterdir() if rundir.is_run_dir(d)}
    assert sorted(before) == ["model=lenet,scheduler=cosine,trainer.epochs=1,trainer.limit_batches=2",
                              "model=lenet,scheduler=step,trainer.epochs=1,trainer.limit_batches=2"]
    again = run_cli(base + ["trainer.cuda_graph=false", "trainer.pipeline=dataloader", "trainer.num_workers=0",
                            "trainer.compile=true", "trainer.device=cpu", f"data.root={tmp_path / 'elsewhere'}"],
                    tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    after = {d.name: (d / rundir.EPOCHS_CSV).read_bytes() for d in sweep.iterdir() if rundir.is_run_dir(d)}
    assert after == before  # no new directory, no retraining
    assert (again.stdout + again.stderr).count("already completed with this config; skipping") == 2
    refused = run_cli(["-m", "trainer.cuda_graph=true,false", f"hydra.sweep.dir={tmp_path / 'other'}"], tmp_path)
    assert refused.returncode != 0 and "trainer.cuda_graph is swept" in refused.stderr
    assert not (tmp_path / "other").exists()
    summary = json.loads((sweep / next(iter(before)) / rundir.SUMMARY_JSON).read_text())
    assert summary["config_hash"] == config_hash(summary["config"])
