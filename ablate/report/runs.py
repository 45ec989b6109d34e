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

from .. import rundir, runlock
from ..rundir import REPORT_DIR, find_runs  # noqa: F401  (part of the report API)
from ..config import ReportConf, typed
from ..identity import split_override

SEED_KEY = "trainer.seed"
EXCLUDING = ("failed", "diverged", "incomplete")  # flags that keep a run's own final accuracy out of the means
FLAGS = ("failed", "diverged", "incomplete", "still improving", "overfitting")
TIMING_COLUMNS = ("epoch_seconds", "images_per_second")  # how fast a run went, not what it learnt
# The header line when a flag is on every run of a report (instead of a row per run).
FLAG_ADVICE = {
    "failed": "all {n} runs failed: see the first error below and fix it before comparing",
    "diverged": "all {n} runs diverged (non-finite loss): lower the learning rate before comparing",
    "incomplete": "all {n} runs are incomplete (still running, or stopped early): nothing is compared yet",
    "still improving": "all {n} runs were still improving at the last epoch: train longer before comparing",
    "overfitting": "all {n} runs overfit ({detail}): more data, augmentation or regularisation may close the gap",
}


RESULT_RULE = ("a diverged run is a result, not missing data: it enters at chance accuracy (1 / number of "
               "classes) and is marked; a failed run (a crash) or one stopped before its last epoch (killed, "
               "interrupted, still running) has no result: it is left out and counted as excluded")
GAP_SOURCES = {"train_eval": "clean train accuracy (eval mode, no augmentation) minus test accuracy",
               "train": "running train accuracy (measured during training, under augmentation and dropout, so "
                        "not the generalisation gap) minus test accuracy"}


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
    mult_adds: int | None = None  # per image, recorded at train time (runs before that have none)
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
    config_hash: str | None = None
    selection: str = "test"  # the split that chose the best epoch (and drove plateau): "val" or "test"
    scheduler_metric: str | None = None  # the epoch metric the scheduler stepped on, if any ("val_loss")
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    test_acc_at_best: float | None = None  # test accuracy at the best epoch (chosen on ``selection``)
    final_train_eval_acc: float | None = None  # clean pass over the training split (eval mode, no augmentation)
    gap_source: str | None = None  # "train_eval" (clean) or "train" (running, under augmentation and dropout)
    chance: float | None = None  # 1 / number of classes: what a diverged run scores
    epochs: pd.DataFrame | None = None
    nonfinite_epoch: int | None = None
    flags: dict[str, str] = field(default_factory=dict)  # flag -> detail
    _steps: pd.DataFrame | None = None
    _trace: tuple[tuple[str, ...], np.ndarray] | None = None

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
    def result(self) -> float | None:
        """What this run contributes to the tables and verdicts (see :data:`RESULT_RULE`)."""
        if "failed" in self.flags:
            return None
        if "diverged" in self.flags:
            return self.chance
        return self.final_test_acc if self.counted else None

    @property
    def plotted(self) -> bool:
        return self.epochs is not None and len(self.epochs) > 0 and not any(
            f in self.flags for f in ("failed", "diverged"))

    def trace(self) -> tuple[tuple[str, ...], np.ndarray] | None:
        """What the run learnt, epoch by epoch: every epochs.csv column but the timing, as one array."""
        if self._trace is None and self.epochs is not None:
            cols = tuple(sorted(c for c in self.epochs.columns if c not in TIMING_COLUMNS))
            self._trace = cols, self.epochs[list(cols)].to_numpy(float)
        return self._trace

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
    df = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])  # only an empty cell is missing
    bad = None
    for col in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[col])
        if col in ("train_loss", "test_loss"):  # a written loss that is not finite: the run diverged there
            v = df[col].to_numpy(dtype=float) if numeric else pd.to_numeric(df[col], errors="coerce").to_numpy(float)
            nonfinite = np.isinf(v) if numeric else df[col].notna().to_numpy() & ~np.isfinite(v)
            if nonfinite.any():
                e = int(np.nanmin(df["epoch"].to_numpy(dtype=float)[nonfinite]))
                bad = e if bad is None else min(bad, e)
        if not numeric:  # a cell pandas did not read as a number ("nan")
            df[col] = pd.to_numeric(df[col], errors="coerce")
    df = df[df["epoch"].notna()].drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    return df, bad


def num(v: Any) -> float | None:
    """``v`` as a finite float, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _finite_rows(epochs: pd.DataFrame, col: str) -> np.ndarray:
    """Mask of the rows where ``col`` exists and is finite (none when the column is absent: an older run)."""
    if col not in epochs:
        return np.zeros(len(epochs), dtype=bool)
    return np.isfinite(epochs[col].to_numpy(dtype=float))


def _from_epochs(run: Run, epochs: pd.DataFrame) -> None:
    """Final and best numbers from the epoch rows. The best epoch is chosen on validation accuracy when
    the run held a validation split out, else (an older run, or ``val_size: 0``) on test accuracy."""
    col = {c: epochs[c].to_numpy(dtype=float) for c in epochs.columns}
    run.epochs_done = int(col["epoch"].max())
    ev = _finite_rows(epochs, "test_acc")
    val = ev & _finite_rows(epochs, "val_acc")
    if ev.any():
        last = int(np.flatnonzero(ev)[-1])
        chooser = "val_acc" if val.any() else "test_acc"
        rows = np.flatnonzero(val if val.any() else ev)
        best = int(rows[np.argmax(col[chooser][rows])])  # the first epoch reaching the maximum
        run.selection = "val" if val.any() else "test"
        test = col["test_acc"]
        run.final_test_acc, run.best_test_acc = float(test[last]), float(test[ev].max())
        run.best_epoch, run.test_acc_at_best = int(col["epoch"][best]), float(test[best])
        if val.any():
            run.final_val_acc, run.best_val_acc = num(col["val_acc"][rows[-1]]), num(col["val_acc"][best])
        clean = ev & _finite_rows(epochs, "train_eval_acc")
        train = "train_eval_acc" if clean[last] else "train_acc"
        run.gap_source = "train_eval" if clean[last] else "train"
        run.gap_final = num(col[train][last] - test[last])
        run.gap_best = num(col[train][best] - test[best])
        if clean.any():
            run.final_train_eval_acc = num(col["train_eval_acc"][np.flatnonzero(clean)[-1]])
    run.final_train_acc = num(col["train_acc"][-1])
    run.seconds = num(np.nansum(col["epoch_seconds"]))
    ips = col["images_per_second"][np.isfinite(col["images_per_second"])]
    run.images_per_second = num(ips.mean()) if ips.size else None


def model_size(runs: Sequence[Run]) -> dict[str, list[int]]:
    """Distinct parameter counts and multiply-adds per image of ``runs`` (one each when they share a model)."""
    return {k: sorted({int(getattr(r, k)) for r in runs if getattr(r, k) is not None})
            for k in ("params", "mult_adds")}


def chance_accuracy(config: dict[str, Any]) -> float | None:
    """1 / the number of classes of the run's data set (None when its config does not say)."""
    from ..config import ConfigError
    from ..data import dataset_shape  # numpy only at import: the report stays torch-free

    try:
        return 1.0 / dataset_shape(config["dataset"])[3]
    except (ConfigError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def load_run(path: Path, sweep: Path, conf: ReportConf | None = None) -> Run:
    """Read one run directory; whatever is missing is derived from what is there."""
    summary = rundir.read_summary(path) or {}
    config = rundir.read_config(path, summary)
    overrides = dict(kv for kv in map(split_override, rundir.read_overrides(path, summary)) if kv)
    trainer = config.get("trainer") or {}
    seed = summary.get("seed", overrides.get(SEED_KEY, trainer.get("seed")))
    try:
        seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        seed = None
    planned = summary.get("epochs_planned") or trainer.get("epochs")
    run = Run(path=path, sweep=sweep, overrides=overrides, choices=rundir.read_choices(path, summary),
              config=config, seed=seed, status=runlock.shown_status(path, summary) or "no summary.json",
              error=summary.get("error"), traceback=summary.get("traceback"), params=summary.get("params"),
              mult_adds=summary.get("mult_adds"),
              epochs_planned=int(planned) if planned else None)
    run.config_hash = summary.get("config_hash")
    run.scheduler_metric = summary.get("scheduler_metric")
    run.chance = chance_accuracy(config)
    epochs, run.nonfinite_epoch = _read_epochs(path)
    run.epochs = epochs
    if epochs is not None and len(epochs):
        _from_epochs(run, epochs)
    else:
        run.epochs_done = int(summary.get("epochs_done") or 0)
        for k in ("final_test_acc", "best_test_acc", "final_train_acc", "images_per_second", "final_val_acc",
                  "best_val_acc", "test_acc_at_best", "final_train_eval_acc"):
            setattr(run, k, num(summary.get(k)))
        run.best_epoch = summary.get("best_epoch")
        if run.test_acc_at_best is None:
            run.test_acc_at_best = run.best_test_acc
        if summary.get("selection") in ("val", "test"):
            run.selection = summary["selection"]
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
        unfinished = run.status in ("running", "interrupted") and run.epochs_planned is None
        if short or unfinished or run.final_test_acc is None:
            of = f"/{run.epochs_planned}" if run.epochs_planned else ""
            run.flags["incomplete"] = f"{run.epochs_done}{of} epochs ({run.status})"
        elif run.epochs is not None and run.best_epoch is not None:
            chose = _finite_rows(run.epochs, "val_acc" if run.selection == "val" else "test_acc")
            if chose.sum() >= 2 and run.best_epoch == int(run.epochs["epoch"].to_numpy()[chose].max()):
                split = "validation" if run.selection == "val" else "test"
                run.flags["still improving"] = f"best {split} accuracy at the last epoch ({run.best_epoch})"
        # Judged on a run's final epoch only: an interrupted run's last rows are no verdict on it.
        if "incomplete" not in run.flags and run.gap_final is not None and run.gap_final > conf.overfit_gap:
            which = "clean train" if run.gap_source == "train_eval" else "running train"
            run.flags["overfitting"] = (f"{which} - test accuracy {100 * run.gap_final:.1f} points "
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
        params = (hyd.get("sweeper") or {}).get("params") or {}
        task = [*(f"{k}={v}" for k, v in params.items()), *hyd["overrides"]["task"]]
        from hydra.core.override_parser.overrides_parser import OverridesParser

        last = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(task)}  # Hydra's rule: the
        values: dict[str, list[str]] = {}  # command line's value of a key the preset's params also sweep
        for key, o in last.items():
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    return None
                values[key] = list(o.sweep_string_iterator())
        return values, math.prod(len(v) for v in values.values())
    except Exception:  # an unreadable or unusual multirun.yaml: fall back to what was found
        return None
