"""The runs a report reads: found under the sweep directories, loaded from their files, flagged for health.

A run's numbers are recomputed from ``epochs.csv`` when it exists, so a run killed
before writing ``summary.json`` still reports what it did. Every file is read
through :mod:`ablate.rundir`, which owns the layout.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import rundir
from ..rundir import REPORT_DIR, find_runs  # noqa: F401  (part of the report API)
from ..config import ReportConf, typed

SEED_KEY = "trainer.seed"
EXCLUDING = ("failed", "diverged", "incomplete")  # flags that keep a run out of the means
FLAGS = ("failed", "diverged", "incomplete", "still improving", "overfitting")


class ReportError(ValueError):
    """Nothing to report on, or a bad argument; the message is one line."""


@dataclass
class Run:
    """One run directory, with its metrics recomputed from ``epochs.csv`` when it exists."""

    path: Path
    sweep: Path
    overrides: dict[str, str]
    choices: dict[str, Any]
    config: dict[str, Any]
    seed: int | None
    status: str
    error: str | None = None
    traceback: str | None = None
    params: int | None = None
    epochs_planned: int | None = None
    epochs_done: int = 0
    final_test_acc: float | None = None
    best_test_acc: float | None = None
    best_epoch: int | None = None
    final_train_acc: float | None = None
    gap_final: float | None = None
    gap_best: float | None = None
    seconds: float | None = None
    images_per_second: float | None = None
    epochs: pd.DataFrame | None = None
    nonfinite_epoch: int | None = None
    flags: dict[str, str] = field(default_factory=dict)  # flag -> detail
    _steps: pd.DataFrame | None = None

    @property
    def name(self) -> str:
        try:
            return str(self.path.relative_to(self.sweep)) if self.path != self.sweep else self.path.name
        except ValueError:
            return self.path.name

    @property
    def counted(self) -> bool:
        """Whether this run's numbers enter the means (it finished with finite losses)."""
        return self.final_test_acc is not None and not any(f in self.flags for f in EXCLUDING)

    @property
    def plotted(self) -> bool:
        return self.epochs is not None and len(self.epochs) > 0 and not any(
            f in self.flags for f in ("failed", "diverged"))

    def steps(self) -> pd.DataFrame | None:
        if self._steps is None:
            self._steps = _numeric_frame(rundir.steps_text(self.path))
        return self._steps

    def value(self, key: str) -> str:
        """This run's value of an override key: its override, else its group choice or config value."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return str(self.choices[key])
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return "-"
            node = node[part]
        return "-" if isinstance(node, (dict, list)) else str(node)


def _numeric_frame(text: str | None) -> pd.DataFrame | None:
    if text is None:
        return None
    df = pd.read_csv(io.StringIO(text))
    return df.apply(pd.to_numeric, errors="coerce")


def _read_epochs(run_dir: Path) -> tuple[pd.DataFrame | None, int | None]:
    """The epoch rows as numbers (empty cells -> NaN) and the first epoch with a non-finite loss."""
    text = rundir.epochs_text(run_dir)
    if text is None:
        return None, None
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    df = raw.apply(pd.to_numeric, errors="coerce")
    df = df[df["epoch"].notna()].drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    bad = None
    for col in ("train_loss", "test_loss"):
        if col in raw:
            written = raw[col].str.strip() != ""
            nonfinite = written & ~np.isfinite(pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float))
            if nonfinite.any():
                e = int(pd.to_numeric(raw.loc[nonfinite, "epoch"], errors="coerce").min())
                bad = e if bad is None else min(bad, e)
    return df, bad


def _split_override(s: str) -> tuple[str, str] | None:
    if "=" not in s:
        return None
    k, v = s.split("=", 1)
    k = k.lstrip("+~")
    if "@" in k:  # group@package=option
        k = k.split("@", 1)[0]
    return k, v


def num(v: Any) -> float | None:
    """``v`` as a finite float, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def load_run(path: Path, sweep: Path, conf: ReportConf | None = None) -> Run:
    """Read one run directory; whatever is missing is derived from what is there."""
    summary = rundir.read_summary(path) or {}
    config = rundir.read_config(path, summary)
    overrides = dict(kv for kv in map(_split_override, rundir.read_overrides(path, summary)) if kv)
    trainer = config.get("trainer") or {}
    seed = summary.get("seed", overrides.get(SEED_KEY, trainer.get("seed")))
    try:
        seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        seed = None
    planned = summary.get("epochs_planned") or trainer.get("epochs")
    run = Run(path=path, sweep=sweep, overrides=overrides, choices=rundir.read_choices(path, summary),
              config=config, seed=seed, status=summary.get("status") or "no summary.json",
              error=summary.get("error"), traceback=summary.get("traceback"), params=summary.get("params"),
              epochs_planned=int(planned) if planned else None)
    epochs, run.nonfinite_epoch = _read_epochs(path)
    run.epochs = epochs
    if epochs is not None and len(epochs):
        run.epochs_done = int(epochs["epoch"].max())
        ev = epochs[np.isfinite(epochs["test_acc"].to_numpy(dtype=float))]
        if len(ev):
            last = ev.iloc[-1]
            best = ev.loc[ev["test_acc"].idxmax()]  # the first epoch reaching the maximum
            run.final_test_acc, run.best_test_acc = float(last["test_acc"]), float(best["test_acc"])
            run.best_epoch = int(best["epoch"])
            run.gap_final = num(last["train_acc"] - last["test_acc"])
            run.gap_best = num(best["train_acc"] - best["test_acc"])
        run.final_train_acc = num(epochs["train_acc"].iloc[-1])
        run.seconds = num(epochs["epoch_seconds"].sum())
        ips = epochs["images_per_second"].dropna()
        run.images_per_second = num(ips.mean()) if len(ips) else None
    else:
        run.epochs_done = int(summary.get("epochs_done") or 0)
        for k in ("final_test_acc", "best_test_acc", "final_train_acc", "images_per_second"):
            setattr(run, k, num(summary.get(k)))
        run.best_epoch = summary.get("best_epoch")
    if summary.get("seconds") is not None:
        run.seconds = num(summary["seconds"])
    if summary.get("images_per_second") is not None:
        run.images_per_second = num(summary["images_per_second"])
    flag(run, conf or ReportConf())
    return run


def flag(run: Run, conf: ReportConf) -> None:
    """Set the run's health flags, each with a one-line detail."""
    if run.status == "failed":
        run.flags["failed"] = (run.error or "failed (no error recorded)").strip().splitlines()[0][:300]
    if run.status == "diverged" or run.nonfinite_epoch is not None:
        where = f" in epoch {run.nonfinite_epoch}" if run.nonfinite_epoch is not None else ""
        run.flags["diverged"] = run.error or f"non-finite loss{where}"
    if "failed" not in run.flags and "diverged" not in run.flags:
        short = run.epochs_planned is not None and run.epochs_done < run.epochs_planned
        if short or (run.status == "running" and run.epochs_planned is None) or run.final_test_acc is None:
            of = f"/{run.epochs_planned}" if run.epochs_planned else ""
            run.flags["incomplete"] = f"{run.epochs_done}{of} epochs ({run.status})"
        elif run.epochs is not None and run.best_epoch is not None:
            n_eval = int(np.isfinite(run.epochs["test_acc"].to_numpy(dtype=float)).sum())
            last_eval = int(run.epochs["epoch"][np.isfinite(run.epochs["test_acc"].to_numpy(dtype=float))].max())
            if n_eval >= 2 and run.best_epoch == last_eval:
                run.flags["still improving"] = f"best test accuracy at the last epoch ({last_eval})"
        if run.gap_final is not None and run.gap_final > conf.overfit_gap:
            run.flags["overfitting"] = (f"train - test accuracy {100 * run.gap_final:.1f} points "
                                        f"> {100 * conf.overfit_gap:.1f}")


def load_runs(sweeps: Sequence[Path], conf: ReportConf | None = None) -> list[Run]:
    """Every run under every sweep directory (merged), or a one-line :class:`ReportError`."""
    runs = []
    for sweep in map(Path, sweeps):
        if not sweep.is_dir():
            raise ReportError(f"{sweep} is not a directory")
        dirs = find_runs(sweep)
        if not dirs:
            raise ReportError(f"no run directories under {sweep} (looked for summary.json / epochs.csv / .hydra)")
        runs += [load_run(d, sweep, conf) for d in dirs]
    return runs


def conf_from_runs(runs: Sequence[Run], **overrides: Any) -> ReportConf:
    """The report knobs of the first run that recorded them, then ``overrides`` (CLI flags)."""
    known = {f.name for f in dataclasses.fields(ReportConf)}
    base: dict[str, Any] = {}
    for r in runs:
        node = r.config.get("report")
        if isinstance(node, dict):
            base = {k: v for k, v in node.items() if k in known}
            break
    base.update({k: v for k, v in overrides.items() if v is not None})
    return typed(base, ReportConf)


def sweep_plan(sweep: Path) -> tuple[dict[str, list[str]], int] | None:
    """The grid ``multirun.yaml`` asked for (values per swept key, job count), if it is a plain grid."""
    data = rundir.read_yaml(Path(sweep) / rundir.MULTIRUN_YAML)
    try:
        hyd = data["hydra"]
        target = str((hyd.get("sweeper") or {}).get("_target_", ""))
        if target and "BasicSweeper" not in target:
            return None  # Optuna and friends sample: the job count is not a grid
        task = list(hyd["overrides"]["task"])
        params = (hyd.get("sweeper") or {}).get("params") or {}
        task += [f"{k}={v}" for k, v in params.items()]
        from hydra.core.override_parser.overrides_parser import OverridesParser

        values: dict[str, list[str]] = {}
        n = 1
        for o in OverridesParser.create().parse_overrides(task):
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    return None
                values[o.key_or_group] = list(o.sweep_string_iterator())
                n *= len(values[o.key_or_group])
        return values, n
    except Exception:  # an unreadable or unusual multirun.yaml: fall back to what was found
        return None
