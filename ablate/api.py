"""The Python API: train a run or launch a sweep from overrides, and load results as pandas tables.

    import ablate
    summary = ablate.train_run(["model=lenet", "trainer.epochs=3"])
    sweep = ablate.sweep(["scheduler=step,cosine", "trainer.seed=0,1"])
    runs, epochs = ablate.load_runs(sweep), ablate.load_epochs(sweep)

Overrides are the command line's (``GROUP=OPTION``, ``KEY=VALUE``). A run trained here
leaves the same run directory as ``python -m ablate.run``; a sweep *is* that command
(``-m``), in a subprocess, so launchers, the report and its verdicts work unchanged.
The tables are read from run directories through :mod:`ablate.rundir`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

from . import rundir, runlock
from .identity import is_factor_key, split_override

SUMMARY_COLUMNS = ["status", "epochs_done", "epochs_planned", "final_test_acc", "final_val_acc", "selection",
                   "best_epoch", "best_val_acc", "test_acc_at_best", "best_test_acc", "final_train_acc",
                   "final_train_eval_acc", "final_test_loss", "final_train_loss", "params", "mult_adds", "seconds",
                   "images_per_second", "config_hash", "error"]


def train_run(overrides: Sequence[str] = (), run_dir: Optional[Path | str] = None) -> dict:
    """Train one run composed from ``overrides`` into ``run_dir`` (default: a new ``outputs/runs/DATE/TIME``);
    returns its summary (also in ``run_dir/summary.json``).

    As the CLI does: a run already completed there with the same config is not retrained
    (its summary is returned), a checkpoint of the same config is resumed. Errors raise."""
    from omegaconf import OmegaConf, open_dict

    from .compose import compose
    from .job import hydra_record, run_choices, run_job

    overrides = list(overrides)
    cfg = compose(overrides, return_hydra_config=True)
    run_dir = (Path(run_dir) if run_dir is not None else Path(str(cfg.hydra.run.dir))).resolve()
    choices, root = run_choices(cfg.hydra), OmegaConf.masked_copy(cfg, "hydra")
    with open_dict(cfg):
        del cfg["hydra"]
    summary, error = run_job(cfg, run_dir, overrides, choices, hydra_record(cfg, root))
    if error is not None:
        raise error
    return summary


def sweep(overrides: Sequence[str] = (), sweep_dir: Optional[Path | str] = None,
          extra_args: Sequence[str] = ()) -> Path:
    """Run ``python -m ablate.run -m *overrides`` into ``sweep_dir`` (default: a new ``outputs/multirun/DATE/TIME``);
    returns the sweep directory (its runs, and ``report/`` at the end). Output streams to this process's.

    Raises ``subprocess.CalledProcessError`` when the command exits non-zero: a bad override, or a run that
    failed (the sweep still ran to its end: every run directory and the report are written, and
    ``load_runs(sweep_dir)`` reads them, the failed run's error included)."""
    overrides = list(overrides)
    if sweep_dir is None:  # where the CLI would put it: hydra.sweep.dir of conf/config.yaml
        from .compose import compose

        sweep_dir = compose(return_hydra_config=True).hydra.sweep.dir
    sweep_dir = Path(str(sweep_dir))
    here = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(here), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-m", "ablate.run", "-m", *overrides, *extra_args,
                    f"hydra.sweep.dir={sweep_dir.resolve()}"], check=True, env=env)
    return sweep_dir


# ----------------------------------------------------------------------------- results as tables
def run_dirs(sweeps: Path | str | Iterable[Path | str]) -> list[Path]:
    """The run directories of one or more sweep directories (a run directory stands for itself), found as the
    report finds them; ``FileNotFoundError`` when a path is not a directory or none holds a run."""
    roots = [Path(sweeps)] if isinstance(sweeps, (str, Path)) else [Path(s) for s in sweeps]
    for root in roots:  # a mistyped path is an error here, as in ablate.report, not an empty table
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a directory: pass a sweep directory or a run directory")
    runs = [run for root in roots for run in rundir.find_runs(root)]
    if not runs:
        raise FileNotFoundError(f"no run directories under {', '.join(map(str, roots))} (a run directory holds "
                                f"summary.json, epochs.csv or .hydra/)")
    return runs


def _value(v: str) -> Any:
    import yaml

    try:
        parsed = yaml.safe_load(v)
    except yaml.YAMLError:
        return v
    return parsed if isinstance(parsed, (int, float, bool)) else v


def _run_row(run: Path) -> dict[str, Any]:
    summary = rundir.read_summary(run) or {}
    row: dict[str, Any] = {"run": run.name, "path": str(run)}
    for key, value in filter(None, map(split_override, rundir.read_overrides(run, summary))):
        if is_factor_key(key):
            row[key] = _value(value)
    row.update({k: summary.get(k) for k in SUMMARY_COLUMNS})
    # As the report shows it: a 'running' run whose writer is gone is interrupted.
    row["status"] = runlock.shown_status(run, summary) or ("running" if rundir.epochs_text(run) else "launched")
    return row


def load_runs(sweeps: Path | str | Iterable[Path | str]) -> "Any":
    """One row per run: ``run`` (its directory's name), ``path``, the overrides that say what it is or how it ran
    as columns (values parsed:
    ``trainer.seed`` is an int), then status, final/best test accuracy, best epoch, params, seconds, ..."""
    import pandas as pd

    return pd.DataFrame([_run_row(r) for r in run_dirs(sweeps)])


def load_epochs(sweeps: Path | str | Iterable[Path | str]) -> "Any":
    """One row per run x epoch: ``run``, the run's override columns, then every ``epochs.csv`` column."""
    import io

    import pandas as pd

    frames = []
    for run in run_dirs(sweeps):
        text = rundir.epochs_text(run)
        if text is None:
            continue
        df = pd.read_csv(io.StringIO(text))
        head = {k: v for k, v in _run_row(run).items() if k not in SUMMARY_COLUMNS and k != "path"}
        for i, (k, v) in enumerate(head.items()):
            df.insert(i, k, v)
        frames.append(df)
    columns = ["run", *rundir.EPOCH_COLUMNS]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
