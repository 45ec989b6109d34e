"""``python -m ablate.report SWEEP_DIR [SWEEP_DIR ...] [--out DIR]``: compare the runs of a sweep.

The report is built from the run directories alone (``summary.json``,
``epochs.csv``, ``steps.csv``, ``.hydra/``), never from what Hydra hands its
end-of-sweep hook, so it works on a sweep that is partly failed, killed or
still running, on a single run, and on several sweeps merged. It writes
``report/`` with ``summary.csv`` (one row per run), ``report.md`` (tables and
verdicts), the curves as PNGs and ``index.html`` (all of it, self-contained);
with ``report.arm_panels`` also the confusion matrix and Grad-CAM of the best
and the worst arm (``best_*``, ``worst_*``; see :func:`draw_arm_panels`).

Runs are grouped into *arms* by every override that varies across the runs
except the seed. A run counts in the means only if it finished every planned
epoch with finite losses; failed, diverged and incomplete runs are flagged and
listed instead of being averaged in silently.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import rundir, stats
from .config import ConfigError, ReportConf, is_factor_key, typed

SEED_KEY = "trainer.seed"
EXCLUDING = ("failed", "diverged", "incomplete")  # flags that keep a run out of the means
FLAGS = ("failed", "diverged", "incomplete", "still improving", "overfitting")
MAX_LINES = 10  # arms drawn per panel (the best by mean); more is unreadable
MAX_PANELS = 12
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ("-", "v"), ("--", "x"), (":", "*"), ("-.", "P"),
          ("-", "X"), ("--", "h")]


class ReportError(ValueError):
    """Nothing to report on, or a bad argument; the message is one line."""


# ----------------------------------------------------------------------------- loading


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
            self._steps = _read_numeric_csv(self.path / rundir.STEPS_CSV)
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


def find_runs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) holding summary.json, epochs.csv or .hydra/.

    ``report/`` is skipped and a run directory's own subfolders are not searched."""
    found = []
    stack = [Path(root)]
    while stack:
        d = stack.pop()
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        names = {e.name for e in entries}
        if rundir.SUMMARY_JSON in names or rundir.EPOCHS_CSV in names or ".hydra" in names:
            found.append(d)
            continue
        stack.extend(sorted((e for e in entries if e.is_dir() and e.name not in ("report", ".hydra")
                             and not e.name.startswith(".")), reverse=True))
    return sorted(found)


def _trim_text(path: Path) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    if not text.endswith("\n"):  # a torn last line from a killed writer
        text = text[: text.rfind("\n") + 1]
    return text if text.count("\n") >= 2 else None


def _read_numeric_csv(path: Path) -> pd.DataFrame | None:
    text = _trim_text(path)
    if text is None:
        return None
    df = pd.read_csv(io.StringIO(text))
    return df.apply(pd.to_numeric, errors="coerce")


def _read_epochs(path: Path) -> tuple[pd.DataFrame | None, int | None]:
    """The epoch rows as numbers (empty cells -> NaN) and the first epoch with a non-finite loss."""
    text = _trim_text(path)
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


def _yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _split_override(s: str) -> tuple[str, str] | None:
    if "=" not in s:
        return None
    k, v = s.split("=", 1)
    k = k.lstrip("+~")
    if "@" in k:  # group@package=option
        k = k.split("@", 1)[0]
    return k, v


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def load_run(path: Path, sweep: Path, conf: ReportConf | None = None) -> Run:
    """Read one run directory; whatever is missing is derived from what is there."""
    summary = rundir.read_json(path / rundir.SUMMARY_JSON) or {}
    hyd = path / ".hydra"
    overrides_list = summary.get("overrides")
    if overrides_list is None:
        overrides_list = _yaml(hyd / "overrides.yaml")
    if overrides_list is None:  # launched, nothing written yet: the job dir is named from its overrides
        parts = re.split(r"(?<!\\),", path.name.split("~")[0])
        overrides_list = parts if all("=" in p for p in parts) else []
    config = summary.get("config") or _yaml(hyd / "config.yaml") or {}
    choices = summary.get("choices")
    if choices is None:
        h = _yaml(hyd / "hydra.yaml") or {}
        choices = ((h.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    overrides = dict(kv for kv in map(_split_override, overrides_list) if kv)
    trainer = config.get("trainer") or {}
    seed = summary.get("seed", overrides.get(SEED_KEY, trainer.get("seed")))
    try:
        seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        seed = None
    planned = summary.get("epochs_planned") or trainer.get("epochs")
    run = Run(path=path, sweep=sweep, overrides=overrides, choices=dict(choices), config=config, seed=seed,
              status=summary.get("status") or "no summary.json", error=summary.get("error"),
              traceback=summary.get("traceback"), params=summary.get("params"),
              epochs_planned=int(planned) if planned else None)
    epochs, run.nonfinite_epoch = _read_epochs(path / rundir.EPOCHS_CSV)
    run.epochs = epochs
    if epochs is not None and len(epochs):
        run.epochs_done = int(epochs["epoch"].max())
        ev = epochs[np.isfinite(epochs["test_acc"].to_numpy(dtype=float))]
        if len(ev):
            last = ev.iloc[-1]
            best = ev.loc[ev["test_acc"].idxmax()]  # the first epoch reaching the maximum
            run.final_test_acc, run.best_test_acc = float(last["test_acc"]), float(best["test_acc"])
            run.best_epoch = int(best["epoch"])
            run.gap_final = _num(last["train_acc"] - last["test_acc"])
            run.gap_best = _num(best["train_acc"] - best["test_acc"])
        run.final_train_acc = _num(epochs["train_acc"].iloc[-1])
        run.seconds = _num(epochs["epoch_seconds"].sum())
        ips = epochs["images_per_second"].dropna()
        run.images_per_second = _num(ips.mean()) if len(ips) else None
    else:
        run.epochs_done = int(summary.get("epochs_done") or 0)
        for k in ("final_test_acc", "best_test_acc", "final_train_acc", "images_per_second"):
            setattr(run, k, _num(summary.get(k)))
        run.best_epoch = summary.get("best_epoch")
    if summary.get("seconds") is not None:
        run.seconds = _num(summary["seconds"])
    if summary.get("images_per_second") is not None:
        run.images_per_second = _num(summary["images_per_second"])
    _flag(run, conf or ReportConf())
    return run


def _flag(run: Run, conf: ReportConf) -> None:
    """Health flags, each with a one-line detail."""
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


def _sweep_plan(sweep: Path) -> tuple[dict[str, list[str]], int] | None:
    """The grid ``multirun.yaml`` asked for (values per swept key, job count), if it is a plain grid."""
    data = _yaml(sweep / "multirun.yaml")
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


# ----------------------------------------------------------------------------- analysis


@dataclass
class Report:
    runs: list[Run]
    conf: ReportConf
    sweeps: list[Path]
    keys: list[str]  # varying overrides, seed excluded, in command-line order
    arms: dict[tuple[str, ...], list[Run]]
    expected: dict[tuple[str, ...], int]
    n_expected: int | None
    tables: list[tuple[str, str, pd.DataFrame]] = field(default_factory=list)  # (id, title, display)
    verdicts: list[tuple[str, list[str]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file name, caption, png)
    panels: list[ArmPanel] = field(default_factory=list)  # best and worst arm, drawn by write()
    panels_note: str | None = None  # why there is no best/worst pair (fewer than two arms), if so

    def label(self, arm: tuple[str, ...]) -> str:
        return ", ".join(f"{k}={v}" for k, v in zip(self.keys, arm)) if self.keys else "all runs"

    def short(self, arm: tuple[str, ...], skip: Sequence[str] = ()) -> str:
        parts = [v if len(self.keys) == 1 else f"{k}={v}" for k, v in zip(self.keys, arm) if k not in skip]
        return ", ".join(parts) or "all runs"

    def flag_counts(self) -> dict[str, int]:
        return {f: sum(f in r.flags for r in self.runs) for f in FLAGS}


def _sort_levels(levels: Sequence[str]) -> list[str]:
    nums = [_num(v) for v in levels]
    if all(n is not None for n in nums):
        return [v for _, v in sorted(zip(nums, levels))]
    return list(levels)


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value differs between runs (the seed and bookkeeping keys excluded)."""
    order: list[str] = []
    for r in runs:
        order += [k for k in r.overrides if k not in order]
    keys = [k for k in order if k != SEED_KEY and is_factor_key(k)]
    return [k for k in keys if len({r.value(k) for r in runs}) > 1]


def analyse(runs: list[Run], conf: ReportConf, sweeps: Sequence[Path]) -> Report:
    """Arms, ranked tables, verdicts and warnings (no plotting, no writing)."""
    keys = varying_keys(runs)
    arms: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        arms.setdefault(tuple(r.value(k) for k in keys), []).append(r)
    expected: dict[tuple[str, ...], int] = {a: 0 for a in arms}
    n_expected: int | None = 0
    for sweep in map(Path, sweeps):
        plan = _sweep_plan(sweep)
        if n_expected is not None:
            n_expected = n_expected + plan[1] if plan else None
        for a, members in arms.items():
            mine = [r for r in members if r.sweep == sweep]
            if mine:
                per_arm = len(plan[0].get(SEED_KEY, [None])) if plan else len(mine)
                expected[a] += max(per_arm, len(mine))
    if n_expected is not None and n_expected < len(runs):
        n_expected = None
    rep = Report(runs, conf, [Path(s) for s in sweeps], keys, arms, expected, n_expected)

    for k in keys:
        i = keys.index(k)
        groups: dict[str, list[tuple[str, ...]]] = {}
        for a in arms:
            groups.setdefault(a[i], []).append(a)
        rows = {lvl: _group_stats([r for a in g for r in arms[a]], sum(expected[a] for a in g))
                for lvl, g in groups.items()}
        pooled = " (pooled over the other factors)" if len(keys) > 1 else ""
        rep.tables.append((f"table-factor-{_slug(k)}", f"By {k}{pooled}", _display(rows, [k])))
        rep.verdicts.append((k, _verdicts(rep, k)))
    if len(keys) >= 2 or not keys:
        rows = {a: _group_stats(arms[a], expected[a]) for a in arms}
        title = "Full grid (every arm)" if keys else "All runs (nothing varies but the seed)"
        rep.tables.append(("table-grid", title, _display(rows, keys)))

    short = [(a, n) for a, n in ((a, sum(r.counted for r in m)) for a, m in arms.items()) if n < conf.min_seeds]
    if len(short) > 5:
        rep.warnings.append(f"{len(short)} of {len(arms)} arms have fewer than {conf.min_seeds} finished seeds "
                            f"(min_seeds): their means and verdicts rest on little data")
    else:
        rep.warnings += [f"{rep.label(a)} has {n} finished seed{'s' if n != 1 else ''}, fewer than "
                         f"min_seeds={conf.min_seeds}" for a, n in short]
    return rep


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()


def _mean(vals: Sequence[float | None]) -> float:
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else math.nan


def _group_stats(runs: Sequence[Run], expected: int) -> dict[str, Any]:
    ok = [r for r in runs if r.counted]
    m, s = stats.mean_std([r.final_test_acc for r in ok])
    return dict(n=len(ok), expected=max(expected, len(runs)), mean=m, std=s,
                best=_mean([r.best_test_acc for r in ok]), best_epoch=_mean([r.best_epoch for r in ok]),
                gap_final=_mean([r.gap_final for r in ok]), gap_best=_mean([r.gap_best for r in ok]),
                seconds=_mean([r.seconds for r in ok]), ips=_mean([r.images_per_second for r in ok]),
                flagged=sum(bool(r.flags) for r in runs))


def _pct(x: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _display(rows: dict[Any, dict[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    """A ranked table for people: percentages, mean ± std, ties as ``=k``."""
    items = sorted(rows.items(), key=lambda kv: (-kv[1]["mean"] if math.isfinite(kv[1]["mean"]) else math.inf))
    ranks = stats.tie_ranks([v["mean"] for _, v in items], [v["std"] for _, v in items])
    out = []
    for (lvl, v), rank in zip(items, ranks):
        lvl = lvl if isinstance(lvl, tuple) else (lvl,)
        row: dict[str, Any] = dict(zip(keys, lvl)) if keys else {"arm": "all runs"}
        acc = "-" if not math.isfinite(v["mean"]) else (
            _pct(v["mean"]) + (f" ± {_pct(v['std'])}" if math.isfinite(v["std"]) else " (1 seed)"))
        row.update({
            "rank": rank, "test acc % (mean ± std)": acc, "finished / expected": f"{v['n']} / {v['expected']}",
            "best acc %": _pct(v["best"]),
            "best epoch": "-" if not math.isfinite(v["best_epoch"]) else f"{v['best_epoch']:.1f}",
            "gap final (pts)": _pct(v["gap_final"], 1), "gap at best (pts)": _pct(v["gap_best"], 1),
            "seconds": "-" if not math.isfinite(v["seconds"]) else f"{v['seconds']:.1f}",
            "images/s": "-" if not math.isfinite(v["ips"]) else f"{v['ips']:.0f}",
            "flagged runs": v["flagged"],
        })
        out.append(row)
    return pd.DataFrame(out)


def factor_values(rep: Report, key: str) -> dict[str, dict[tuple, float]]:
    """Per level of ``key``: final test accuracy of each counted run, keyed by its pairing unit.

    The unit is (the other varying overrides, seed): two levels are compared on
    runs that differ in ``key`` only. A unit seen twice (merged reruns) is averaged."""
    i = rep.keys.index(key)
    acc: dict[str, dict[tuple, list[float]]] = {}
    for arm, members in rep.arms.items():
        other = arm[:i] + arm[i + 1:]
        for r in members:
            if r.counted:
                acc.setdefault(arm[i], {}).setdefault(other + (r.seed,), []).append(r.final_test_acc)
    return {lvl: {u: float(np.mean(v)) for u, v in units.items()} for lvl, units in acc.items()}


def compare_levels(rep: Report, key: str, a: str, b: str) -> stats.Comparison:
    """Level ``a`` against level ``b`` of ``key``: paired on shared units when at least two are shared."""
    vals = factor_values(rep, key)
    va, vb = vals.get(a, {}), vals.get(b, {})
    shared = [u for u in va if u in vb]
    c = rep.conf
    if len(shared) >= 2:
        return stats.compare([va[u] for u in shared], [vb[u] for u in shared], True, c.bootstrap, c.confidence,
                             c.seed)
    return stats.compare(list(va.values()), list(vb.values()), False, c.bootstrap, c.confidence, c.seed)


def _verdicts(rep: Report, key: str) -> list[str]:
    vals = factor_values(rep, key)
    if len(vals) < 2:
        return [f"{key}: fewer than two levels have finished runs; nothing to compare"]
    means = {lvl: float(np.mean(list(v.values()))) for lvl, v in vals.items()}
    order = sorted(means, key=means.get, reverse=True)
    best = order[0]
    others = order[1:]
    lines = []
    pct = int(round(100 * rep.conf.confidence))
    unit = "seeds" if len(rep.keys) == 1 else "runs"
    for other in others[:MAX_LINES]:
        c = compare_levels(rep, key, best, other)
        d, lo, hi = 100 * c.diff, 100 * c.lo, 100 * c.hi
        how = f"{c.n_a} {unit}, paired" if c.paired else f"{c.n_a} vs {c.n_b} {unit}, unpaired"
        if rep.keys != [key] and c.paired:
            how = f"{c.n_a} runs matched on seed and the other factors, paired"
        p = f"P({best} > {other} on a fresh seed) = {c.p_beats:.2f}"
        if not c.has_interval:
            lines.append(f"{best} vs {other}: inconclusive, {d:+.2f} points from {how} (too few for a {pct}% "
                         f"interval); {p}")
        elif c.conclusive:
            lines.append(f"{best} beats {other} by {d:+.2f} points ({pct}% CI {lo:+.2f} to {hi:+.2f}, {how}); {p}")
        else:
            lines.append(f"{best} vs {other}: inconclusive, {d:+.2f} points ({pct}% CI {lo:+.2f} to {hi:+.2f} "
                         f"crosses zero, {how}); {p}")
    if len(others) > MAX_LINES:
        lines.append(f"... and {len(others) - MAX_LINES} more levels below these (see the table)")
    return lines


# ----------------------------------------------------------------------------- tables out


SUMMARY_COLUMNS = ["status", "flags", "error", "params", "epochs_done", "epochs_planned", "final_test_acc",
                   "best_test_acc", "best_epoch", "final_train_acc", "gap_final", "gap_best", "seconds",
                   "images_per_second"]


def summary_frame(rep: Report) -> pd.DataFrame:
    """One row per run: the varying overrides, the seed, status, flags and every number (fractions)."""
    rows = []
    multi = len(rep.sweeps) > 1
    for r in rep.runs:
        row: dict[str, Any] = {"run": r.name}
        if multi:
            row["sweep"] = str(r.sweep)
        row.update({k: r.value(k) for k in rep.keys})
        row["seed"] = r.seed
        row.update({c: getattr(r, c) for c in SUMMARY_COLUMNS if hasattr(r, c)})
        row["flags"] = "; ".join(r.flags)
        row["error"] = r.error
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.astype({c: "Int64" for c in ("seed", "params", "epochs_done", "epochs_planned", "best_epoch")
                      if c in df})


def flags_frame(rep: Report) -> pd.DataFrame:
    rows = [{"run": r.name, "status": r.status, "flag": f, "detail": d, "in means": "yes" if r.counted else "no"}
            for r in rep.runs for f, d in r.flags.items()]
    return pd.DataFrame(rows, columns=["run", "status", "flag", "detail", "in means"])


def _md_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("|", "\\|").replace(
            "\n", " ")

    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _header_lines(rep: Report) -> list[str]:
    n = len(rep.runs)
    exp = f" of {rep.n_expected} expected" if rep.n_expected is not None else ""
    counted = sum(r.counted for r in rep.runs)
    counts = rep.flag_counts()
    flags = ", ".join(f"{v} {k}" for k, v in counts.items())
    varying = ", ".join(rep.keys) if rep.keys else "nothing (one arm)"
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in rep.runs if r.seed is not None})) or "-"
    return [f"Runs: {n} found{exp}, {counted} counted in the means, {len(rep.arms)} arm(s).",
            f"Varying: {varying}; seeds: {seeds}.",
            f"Flags: {flags}.",
            f"Means and verdicts use the final test accuracy of runs that finished every epoch with finite "
            f"losses; ties (=k) are arms whose mean ± std intervals overlap."]


def markdown(rep: Report) -> str:
    out = ["# ablate report", "", "Sweeps: " + ", ".join(f"`{s}`" for s in rep.sweeps), ""]
    out += [f"- {line}" for line in _header_lines(rep)] + [""]
    out += ["## Verdicts", ""]
    for key, lines in rep.verdicts:
        out += [f"**{key}**", ""] + [f"- {line}" for line in lines] + [""]
    if not rep.verdicts:
        out += ["Nothing varies across the runs but the seed: no comparison to make.", ""]
    if rep.warnings:
        out += ["Warnings:", ""] + [f"- {w}" for w in rep.warnings] + [""]
    out += ["## Tables", ""]
    for _, title, df in rep.tables:
        out += [f"### {title}", "", _md_table(df), ""]
    fl = flags_frame(rep)
    out += ["## Flagged runs", "", _md_table(fl) if len(fl) else "None.", ""]
    if rep.figures:
        out += ["## Curves", ""] + [f"![{cap}]({name})" for name, cap, _ in rep.figures] + [""]
    if rep.panels or rep.panels_note:
        out += [f"## {PANELS_TITLE}", ""]
        if rep.panels_note:
            out += [f"No panels: {rep.panels_note}.", ""]
        for p in rep.panels:
            head, detail = _panel_lines(rep, p, lambda n: f"`{n}`")
            links = "" if p.skipped else (
                f" [Confusion matrix]({p.files['confusion']}) ([counts]({p.files['confusion_csv']})), "
                f"[Grad-CAM]({p.files['gradcam']}).")
            out += [f"- **{head}.** {detail}{links}"]
        out += [""]
    return "\n".join(out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#111;background:#fff;padding:0 16px}
h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eee}
tr:nth-child(even) td{background:#f7f7f7}.warn{color:#8a4b00}.flag{font-weight:600}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#444}
ul.verdicts li{margin:3px 0}pre{white-space:pre-wrap;font-size:12px;background:#f4f4f4;padding:6px}
.scroll{overflow-x:auto}
.pair{display:flex;flex-wrap:wrap;gap:16px}.pair .side{flex:1 1 45%;min-width:320px}.pair h3{margin-top:4px}
.pair code{word-break:break-all}
"""


def html_page(rep: Report, out: Path | None = None) -> str:
    """index.html: one file, images as data URIs, no external requests (``out``: where the panels are)."""
    e = html.escape
    p = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>", "<title>ablate report</title>",
         f"<style>{CSS}</style></head><body>", "<h1>ablate report</h1>",
         "<p>Sweeps: " + ", ".join(f"<code>{e(str(s))}</code>" for s in rep.sweeps) + "</p>",
         "<ul id='header'>" + "".join(f"<li>{e(line)}</li>" for line in _header_lines(rep)) + "</ul>",
         "<h2 id='verdicts'>Verdicts</h2>"]
    for key, lines in rep.verdicts:
        p.append(f"<h3>{e(key)}</h3><ul class='verdicts'>" + "".join(f"<li>{e(x)}</li>" for x in lines) + "</ul>")
    if not rep.verdicts:
        p.append("<p>Nothing varies across the runs but the seed: no comparison to make.</p>")
    if rep.warnings:
        p.append("<ul class='warn'>" + "".join(f"<li>warning: {e(w)}</li>" for w in rep.warnings) + "</ul>")
    p.append("<h2 id='tables'>Tables</h2>")
    for tid, title, df in rep.tables:
        p.append(f"<h3>{e(title)}</h3><div class='scroll'>"
                 + df.to_html(index=False, table_id=tid, border=0, na_rep="") + "</div>")
    p.append("<h2 id='flags'>Flagged runs</h2>")
    fl = flags_frame(rep)
    p.append("<div class='scroll'>" + fl.to_html(index=False, table_id="table-flags", border=0, na_rep="") + "</div>")
    tbs = [r for r in rep.runs if r.traceback]
    for r in tbs:
        p.append(f"<details><summary>traceback of {e(r.name)}</summary><pre>{e(r.traceback)}</pre></details>")
    p.append("<h2 id='curves'>Curves</h2>")
    for name, cap, png in rep.figures:
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        p.append(f"<figure><img alt='{e(cap)}' src='{uri}'><figcaption>{e(cap)}</figcaption></figure>")
    if rep.panels or rep.panels_note:
        p.append(f"<h2 id='arm-panels'>{e(PANELS_TITLE)}</h2>")
        if rep.panels_note:
            p.append(f"<p>No panels: {e(rep.panels_note)}.</p>")
        else:
            p.append(f"<p>{e(PANELS_INTRO)}</p><div class='pair'>")
            for pan in rep.panels:
                head, detail = _panel_lines(rep, pan, lambda n: f"\0{n}\1")  # escaped, then <code>
                detail = e(detail).replace("\0", "<code>").replace("\1", "</code>")
                p.append(f"<div class='side' id='panel-{pan.role}'><h3>{e(head)}</h3><p>{detail}</p>")
                for key, what in (("confusion", "confusion matrix"), ("gradcam", "Grad-CAM")):
                    if key in pan.files:
                        uri = "data:image/png;base64," + base64.b64encode(
                            (out / pan.files[key]).read_bytes()).decode() if out else pan.files[key]
                        p.append(f"<figure><img alt='{e(pan.role)} arm: {what}' src='{uri}'></figure>")
                p.append("</div>")
            p.append("</div>")
    p.append("<h2 id='runs'>All runs</h2>")
    df = summary_frame(rep).drop(columns=["error"])
    for c in ("final_test_acc", "best_test_acc", "final_train_acc", "gap_final", "gap_best"):
        df[c] = [_pct(v) if v is not None and not pd.isna(v) else "-" for v in df[c]]
    for c in ("seconds", "images_per_second"):
        df[c] = [f"{v:.1f}" if v is not None and not pd.isna(v) else "-" for v in df[c]]
    p.append("<p>Accuracies and gaps in percent.</p><div class='scroll'>"
             + df.to_html(index=False, table_id="table-runs", border=0, na_rep="") + "</div>")
    p.append("</body></html>")
    return "\n".join(p)


# ----------------------------------------------------------------------------- curves


def _png(fig: Any) -> bytes:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _aligned(runs: Sequence[Run], col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Epochs and the mean, min and max of ``col`` across runs, aligned by epoch (no smoothing)."""
    series = {i: r.epochs.set_index("epoch")[col] for i, r in enumerate(runs)}
    if not series:
        return None
    m = pd.DataFrame(series).astype(float).replace([np.inf, -np.inf], np.nan)
    m = m[m.notna().any(axis=1)]
    if m.empty:
        return None
    return m.index.to_numpy(float), m.mean(axis=1).to_numpy(), m.min(axis=1).to_numpy(), m.max(axis=1).to_numpy()


def _style(i: int) -> dict[str, Any]:
    ls, mk = STYLES[i % len(STYLES)]
    return dict(linestyle=ls, marker=mk, color=f"C{i % 10}", markersize=4)


def _panels(rep: Report) -> list[tuple[str, list[tuple[str, ...]]]]:
    """Small multiples: one panel per level of the second factor (else one panel), best arms first."""
    def score(a: tuple[str, ...]) -> float:
        m = _mean([r.final_test_acc for r in rep.arms[a] if r.counted])
        return -m if math.isfinite(m) else math.inf

    arms = sorted(rep.arms, key=score)
    if len(rep.keys) < 2:
        return [("", arms[:MAX_LINES])]
    k = rep.keys[1]
    levels = _sort_levels(list(dict.fromkeys(a[1] for a in rep.arms)))
    return [(f"{k}={lvl}", [a for a in arms if a[1] == lvl][:MAX_LINES]) for lvl in levels[:MAX_PANELS]]


def _grid(n: int, w: float = 4.6, h: float = 3.3) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    if n == 1:
        w, h = 7.5, 4.2
    W, H = w * cols, h * rows + 0.4
    fig = Figure(figsize=(W, H))  # fixed margins: constrained layout costs more than the drawing
    fig.subplots_adjust(left=0.75 / W, right=1 - 0.2 / W, bottom=0.6 / H, top=1 - 0.6 / H,
                        wspace=0.28, hspace=0.45)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def figures(rep: Report) -> list[tuple[str, str, bytes]]:
    """The curves as PNG bytes (matplotlib's Agg canvas via Figure, no pyplot state)."""
    out: list[tuple[str, str, bytes]] = []
    panels = _panels(rep)
    skip = rep.keys[1:2]
    n_arms = len(rep.arms)
    more = f" (the best {MAX_LINES} arms per panel of {n_arms})" if any(
        len(arms) == MAX_LINES for _, arms in panels) and n_arms > MAX_LINES else ""

    for col, ylabel, name, pct in (("test_acc", "test accuracy (%)", "test_acc.png", True),
                                   ("test_loss", "test loss", "test_loss.png", False)):
        fig, axes = _grid(len(panels))
        drawn = False
        for ax, (title, arms) in zip(axes, panels):
            for i, a in enumerate(arms):  # style by position in the panel: the same in every figure
                c = _aligned([r for r in rep.arms[a] if r.plotted], col)
                if c is None:
                    continue
                x, m, lo, hi = (c[0], *(100 * v if pct else v for v in c[1:]))
                st = _style(i)
                ax.plot(x, m, label=rep.short(a, skip), markevery=max(1, len(x) // 12), **st)
                ax.fill_between(x, lo, hi, color=st["color"], alpha=0.15, linewidth=0)
                drawn = True
            ax.set(title=title, xlabel="epoch", ylabel=ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        if drawn:
            fig.suptitle(f"{ylabel.split(' (')[0].capitalize()} per arm (line: mean; band: min to max over seeds)",
                         fontsize=11)
            out.append((name, f"{ylabel.split(' (')[0].capitalize()} per arm by epoch (unsmoothed; band spans "
                              f"the seeds){more}", _png(fig)))

    # Overfitting picture: train against test accuracy, one panel per arm.
    arms = [a for _, p in panels for a in p][:MAX_PANELS]
    fig, axes = _grid(len(arms), 4.0, 3.0)
    drawn = False
    for ax, a in zip(axes, arms):
        runs = [r for r in rep.arms[a] if r.plotted]
        for col, ls, mk, lab in (("train_acc", "--", "^", "train"), ("test_acc", "-", "o", "test")):
            c = _aligned(runs, col)
            if c is not None:
                ax.plot(c[0], 100 * c[1], linestyle=ls, marker=mk, color="k" if lab == "test" else "0.45",
                        markersize=4, label=lab, markevery=max(1, len(c[0]) // 12))
                ax.fill_between(c[0], 100 * c[2], 100 * c[3], color="0.5", alpha=0.15, linewidth=0)
                drawn = True
        ax.set(title=rep.short(a), xlabel="epoch", ylabel="accuracy (%)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if drawn:
        out.append(("train_vs_test.png", "Train (dashed) vs test (solid) accuracy per arm: the gap is overfitting",
                    _png(fig)))

    # What each scheduler really did: the lr of one run per distinct scheduler setting.
    groups: dict[str, Run] = {}
    for a in rep.arms:
        for r in rep.arms[a]:
            if r.epochs is None or not len(r.epochs):
                continue
            ident = json.dumps([r.choices.get("scheduler"), r.config.get("scheduler"),
                                (r.config.get("optimizer") or {}).get("lr")], sort_keys=True, default=str)
            groups.setdefault(ident, r)
            break
    if groups:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4))
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.9)
        ax = fig.subplots()
        names = [str(r.choices.get("scheduler", "?")) for r in groups.values()]
        positive = True
        for i, r in enumerate(list(groups.values())[:MAX_LINES]):
            label = names[i] if names.count(names[i]) == 1 else f"{names[i]} ({rep.short(_arm_of(rep, r))})"
            s = r.steps()
            if s is not None and len(s) and {"epoch", "lr"} <= set(s.columns):
                pos = s.groupby("epoch").cumcount().to_numpy()
                cnt = s.groupby("epoch")["epoch"].transform("size").to_numpy()
                x, y = s["epoch"].to_numpy() - 1 + pos / cnt, s["lr"].to_numpy()
            else:
                x, y = r.epochs["epoch"].to_numpy() - 1, r.epochs["lr"].to_numpy()
            k = max(1, len(x) // 3000)
            x, y = np.append(x[::k], np.ceil(x[-1] + 1e-9)), np.append(y[::k], y[-1])  # close the last step
            positive &= bool(np.all(y[np.isfinite(y)] > 0))
            st = _style(i)
            ax.plot(x, y, drawstyle="steps-post", label=label, markevery=max(1, len(x) // 12), **st)
        if positive and ax.get_ylim()[1] / max(ax.get_ylim()[0], 1e-300) > 100:
            ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate as applied, per scheduler")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(("lr.png", "Learning rate vs epoch per scheduler (per step where steps.csv has it)", _png(fig)))

    # Per-iteration training loss: raw faintly, EMA-smoothed on top.
    fig, axes = _grid(len(panels))
    drawn = False
    for ax, (title, arms) in zip(axes, panels):
        for i, a in enumerate(arms):
            frames = [s for r in rep.arms[a] if r.plotted and (s := r.steps()) is not None and "loss" in s]
            if not frames:
                continue
            loss = pd.concat(frames).replace([np.inf, -np.inf], np.nan).groupby("step")["loss"].mean()
            smooth = loss.ewm(alpha=1 - rep.conf.smoothing, ignore_na=True).mean() if rep.conf.smoothing else loss
            k = max(1, len(loss) // 3000)
            x = loss.index.to_numpy()[::k]
            st = _style(i)
            ax.plot(x, loss.to_numpy()[::k], color=st["color"], alpha=0.25, linewidth=0.6)
            ax.plot(x, smooth.to_numpy()[::k], label=rep.short(a, skip), markevery=max(1, len(x) // 10), **st)
            drawn = True
        ax.set(title=title, xlabel="step", ylabel="training loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if drawn:
        out.append(("train_loss.png", f"Training loss per iteration (mean over seeds): raw faint, EMA "
                                      f"{rep.conf.smoothing} on top{more}", _png(fig)))
    return out


def _arm_of(rep: Report, run: Run) -> tuple[str, ...]:
    return tuple(run.value(k) for k in rep.keys)


# ----------------------------------------------------------------------------- best vs worst arm

PANEL_ROLES = ("best", "worst")
PANEL_FILES = {"confusion": "confusion.png", "confusion_csv": "confusion.csv", "gradcam": "gradcam.png"}


@dataclass
class ArmPanel:
    """One side of the best-vs-worst section: the arm, the run drawn and its files, or why not."""

    role: str  # "best" or "worst"
    arm: tuple[str, ...]
    mean: float  # mean final test accuracy of the arm's counted runs
    n: int  # counted runs
    run: Run | None = None  # the representative run (None: no counted run has model.pt)
    files: dict[str, str] = field(default_factory=dict)  # PANEL_FILES key -> file name in report/
    skipped: str | None = None  # one line: why nothing was drawn

    def label(self, rep: Report) -> str:
        seeds = f"{self.n} seed{'s' if self.n != 1 else ''}"
        return f"{self.role} arm: {rep.label(self.arm)} (mean test accuracy {_pct(self.mean)} %, {seeds})"


def ranked_arms(rep: Report) -> list[tuple[tuple[str, ...], float, int]]:
    """(arm, mean final test accuracy, counted runs) of every arm with a counted run, best first.

    Only counted runs (finished every epoch, finite losses) enter, as in the tables;
    an arm none of whose runs counts is not ranked at all."""
    rows = []
    for arm, members in rep.arms.items():
        ok = [r for r in members if r.counted]
        if ok:
            rows.append((arm, _mean([r.final_test_acc for r in ok]), len(ok)))
    return sorted(rows, key=lambda t: -t[1])  # stable: equal means keep the arms' order


def representative_run(runs: Sequence[Run]) -> Run | None:
    """The run that stands for its arm in the panels: the counted seed whose final test accuracy is
    closest to the arm's mean (ties: the lower seed), among those that kept ``model.pt``.

    The seed nearest the mean rather than the best seed: the best seed of each arm
    would flatter both, and the picture should be of a typical run of the arm."""
    ok = [r for r in runs if r.counted]
    if not ok:
        return None
    m = _mean([r.final_test_acc for r in ok])
    have = [r for r in ok if (r.path / "model.pt").is_file()]
    key = lambda r: (abs(r.final_test_acc - m), r.seed if r.seed is not None else math.inf, r.name)  # noqa: E731
    return min(have, key=key) if have else None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _clear_panels(out: Path) -> None:
    for role in PANEL_ROLES:
        for name in PANEL_FILES.values():
            (out / f"{role}_{name}").unlink(missing_ok=True)


def draw_arm_panels(rep: Report, out: Path) -> None:
    """Confusion matrix and Grad-CAM of the best and the worst arm into ``out`` (``best_*``, ``worst_*``).

    Each arm is drawn from its :func:`representative_run`, reloaded on the CPU
    with :func:`ablate.inspect.arm_panels` on the same fixed test images (the first
    test image of each class in turn, identical for runs on the same data set),
    never downloading data. Whatever fails (no ``model.pt``, the data set not on
    this machine, a model that does not load) leaves that arm's panel out and one
    line in ``ArmPanel.skipped``; the report itself is never stopped. Sets
    ``rep.panels`` (or ``rep.panels_note`` when fewer than two arms are ranked).
    The files appear whole or not at all (drawn in a temporary folder, renamed in)."""
    rep.panels, rep.panels_note = [], None
    ranked = ranked_arms(rep)
    if len(ranked) < 2:
        rep.panels_note = (f"needs two arms with finished runs; this report has {len(ranked)}, "
                           "so there is no best and worst to compare")
        return
    for role, (arm, mean, n) in zip(PANEL_ROLES, (ranked[0], ranked[-1])):
        panel = ArmPanel(role, arm, mean, n, representative_run(rep.arms[arm]))
        rep.panels.append(panel)
        if panel.run is None:
            panel.skipped = "none of its finished runs has a model.pt to reload"
            continue
        tmp = None
        try:
            from .data import DataError  # torch: imported only when there is a model to draw
            from .inspect import InspectError, arm_panels

            tmp = Path(tempfile.mkdtemp(prefix=".arm-panels-", dir=out))
            try:
                written = arm_panels(panel.run.path, tmp, None, prefix=f"{role}_",
                                     title=f"{role} arm ({rep.short(arm)})",
                                     device="cpu", data_overrides={"download": False})
            except DataError as e:
                panel.skipped = f"its data set is not available on this machine: {_one_line(e)}"
            except (InspectError, ConfigError) as e:
                panel.skipped = _one_line(e)
            else:
                for key, path in written.items():
                    os.replace(path, out / path.name)
                    panel.files[key] = path.name
        except Exception as e:  # noqa: BLE001  (a panel must never stop the report)
            panel.skipped = f"could not be drawn ({type(e).__name__}: {_one_line(e)})"
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _panel_lines(rep: Report, p: ArmPanel, code: Any = str) -> tuple[str, str]:
    """(heading, detail) of one side of the section; ``code`` formats the run's name (escaped for HTML)."""
    head = p.label(rep)
    head = head[0].upper() + head[1:]
    if p.skipped:
        return head, f"No panel: {p.skipped}."
    r = p.run
    return head, (f"Drawn from run {code(r.name)} (seed {r.seed}, final test accuracy "
                  f"{_pct(r.final_test_acc)} %: the seed closest to the arm's mean).")


PANELS_TITLE = "Best vs worst arm: what they look at"
PANELS_INTRO = ("The best and the worst arm by mean final test accuracy, one representative run each (the seed "
                "closest to the arm's mean), reloaded from model.pt on the CPU: the confusion matrix on the whole "
                "test set (rows: true class) and Grad-CAM on the same fixed test images (the first of each class "
                "in turn), for the predicted class (red title: a wrong prediction) and for the true class.")


# ----------------------------------------------------------------------------- entry points


def build(sweeps: Sequence[Path | str], conf: ReportConf | None = None, plots: bool = True,
          **overrides: Any) -> Report:
    """Load, analyse and (with ``plots``) draw; knobs: ``conf``, else the runs' own, then ``overrides``."""
    sweeps = [Path(s) for s in sweeps]
    runs = load_runs(sweeps, conf)
    if conf is None:
        conf = conf_from_runs(runs, **overrides)
        for r in runs:  # re-flag with the knobs just read (overfit_gap)
            r.flags.clear()
            _flag(r, conf)
    rep = analyse(runs, conf, sweeps)
    if plots:
        rep.figures = figures(rep)
    return rep


def write(rep: Report, out: Path) -> Path:
    """Write report/ (summary.csv, report.md, PNGs, best/worst arm panels, index.html); returns index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write_bytes(out / "summary.csv", summary_frame(rep).to_csv(index=False).encode())
    for name, _, png in rep.figures:
        rundir.atomic_write_bytes(out / name, png)
    _clear_panels(out)  # an earlier report's panels must not outlive it
    rep.panels, rep.panels_note = [], None
    if rep.conf.arm_panels:
        draw_arm_panels(rep, out)
    rundir.atomic_write_bytes(out / "report.md", markdown(rep).encode())
    rundir.atomic_write_bytes(out / "index.html", html_page(rep, out).encode())
    for p in out.iterdir():
        if p.is_file():
            p.chmod(0o644)  # mkstemp made them private; a report is meant to be read and served
    return out / "index.html"


def make_report(sweeps: Sequence[Path | str], out: Path | str | None = None, conf: ReportConf | None = None,
                **overrides: Any) -> Path:
    """Build and write the report of ``sweeps``; returns the path of index.html."""
    sweeps = [Path(s) for s in sweeps]
    if not sweeps:
        raise ReportError("no sweep directory given")
    if out is None:
        if len(sweeps) > 1:
            raise ReportError("several SWEEP_DIRs are merged into one report: say where it goes with --out DIR")
        out = sweeps[0] / "report"
    return write(build(sweeps, conf, **overrides), Path(out))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ablate.report",
        description="Compare the runs of one or more sweep (or run) directories: writes summary.csv, report.md, "
                    "the curves and a self-contained index.html.",
        epilog="With one SWEEP_DIR the report goes to SWEEP_DIR/report/. Several SWEEP_DIRs are merged into one "
               "report and then --out is required (writing into one sweep would mix in the others' runs and be "
               "overwritten by that sweep's own report). Knobs default to the runs' recorded report config.")
    ap.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR", type=Path)
    ap.add_argument("--out", type=Path, help="report directory (default: SWEEP_DIR/report; required with several)")
    ap.add_argument("--overfit-gap", type=float, help="flag runs whose final train - test accuracy exceeds this")
    ap.add_argument("--bootstrap", type=int, help="bootstrap resamples for the verdict intervals")
    ap.add_argument("--confidence", type=float, help="interval level, e.g. 0.95")
    ap.add_argument("--min-seeds", type=int, help="warn when an arm has fewer finished seeds")
    ap.add_argument("--smoothing", type=float, help="EMA factor of the per-iteration loss curve (0 = raw)")
    ap.add_argument("--seed", type=int, help="bootstrap RNG seed")
    ap.add_argument("--arm-panels", action=argparse.BooleanOptionalAction, default=None,
                    help="draw the confusion matrix and Grad-CAM of the best and the worst arm (from model.pt, "
                         "on the CPU)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = make_report(a.sweeps, a.out, overfit_gap=a.overfit_gap, bootstrap=a.bootstrap,
                           confidence=a.confidence, min_seeds=a.min_seeds, smoothing=a.smoothing, seed=a.seed,
                           arm_panels=a.arm_panels)
    except (ReportError, ConfigError) as e:
        print(f"ablate.report: {e}", file=sys.stderr)
        return 2
    print(f"Report: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
