"""Compare the runs of a sweep: ``python -m ablate.report SWEEP_DIR [SWEEP_DIR ...] [--out DIR]``.

The report is built from the run directories alone (``summary.json``,
``epochs.csv``, ``steps.csv``, ``.hydra/``), never from what Hydra hands its
end-of-sweep hook, so it works on a sweep that is partly failed, killed or
still running, on a single run, and on several sweeps merged. It writes
``report/`` with ``summary.csv`` (one row per run), ``verdicts.csv`` (one row
per comparison stated), ``report.md`` (tables and verdicts), the forest plot and
the curves as PNGs and ``index.html`` (all of it, self-contained); with
``report.arm_panels`` also the confusion matrix and Grad-CAM of the best and the
worst arm (``best_*``, ``worst_*``; see :func:`draw_arm_panels`).

Runs are grouped into *arms* by every override that varies across the runs
except the seed; an arm's runs of one seed are one unit (repeats count once).
A run that finished every epoch enters with its final test accuracy, a diverged
one at chance accuracy (marked); failed and unfinished runs are left out and
counted as excluded in every verdict they would have entered.

The parts, in the order data flows: :mod:`.runs` (reading and flagging runs),
:mod:`.units` (repeats and results), :mod:`.verdicts` (the comparisons, one Holm
family), :mod:`.analysis` (arms, tables, header notes), :mod:`.figures` (forest
plot, curves), :mod:`.panels` (best vs worst arm), :mod:`.tables` (summary.csv,
verdicts.csv, report.md, index.html); :mod:`.cli` is the command line. Importing
this package loads no torch, no scipy and no matplotlib.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import ReportConf
from .analysis import Report, analyse, compare_levels, factor_values, ranked_arms, varying_keys
from .figures import figures as draw_figures  # not `figures`: that name is the submodule
from .generation import write_generation
from .panels import ArmPanel, draw_arm_panels, representative_run
from .runs import REPORT_DIR, ReportError, Run, conf_from_runs, find_runs, flag, load_run, load_runs
from .tables import flags_frame, html_page, markdown, summary_frame, verdicts_csv
from .verdicts import Verdict, verdicts_frame

__all__ = ["ArmPanel", "Report", "ReportError", "Run", "analyse", "build", "compare_levels",
           "conf_from_runs", "draw_arm_panels", "draw_figures", "factor_values", "find_runs", "flags_frame",
           "html_page", "load_run", "load_runs", "make_report", "markdown", "ranked_arms", "representative_run",
           "summary_frame", "varying_keys", "Verdict", "verdicts_frame", "write"]


def build(sweeps: Sequence[Path | str], conf: ReportConf | None = None, plots: bool = True,
          **overrides: Any) -> Report:
    """Load, analyse and (with ``plots``) draw; knobs: ``conf``, else the runs' own, then ``overrides``."""
    sweeps = [Path(s) for s in sweeps]
    runs = load_runs(sweeps, conf)
    given = {k: v for k, v in overrides.items() if v is not None}
    if conf is None or given:
        conf = conf_from_runs(runs, **overrides) if conf is None else dataclasses.replace(conf, **given)
        for r in runs:  # re-flag with the knobs just read (overfit_gap)
            r.flags.clear()
            flag(r, conf)
    rep = analyse(runs, conf, sweeps)
    if plots:
        rep.figures = draw_figures(rep)
    return rep


def write(rep: Report, out: Path) -> Path:
    """Write report/ (summary.csv, verdicts.csv, report.md, PNGs, best/worst arm panels, index.html) as one generation
    (:mod:`.generation`); returns index.html. A folder that cannot be written is a one-line ReportError."""
    out = Path(out)

    def fill(folder: Path) -> None:
        rundir.atomic_write_bytes(folder / "summary.csv", summary_frame(rep).to_csv(index=False).encode())
        rundir.atomic_write_bytes(folder / "verdicts.csv", verdicts_csv(rep).encode())
        for name, _, png in rep.figures:
            rundir.atomic_write_bytes(folder / name, png)
        rep.panels, rep.panels_note = [], None
        if rep.conf.arm_panels:
            draw_arm_panels(rep, folder)
        rundir.atomic_write_bytes(folder / "report.md", markdown(rep).encode())
        rundir.atomic_write_bytes(folder / "index.html", html_page(rep, folder).encode())

    try:
        write_generation(out, fill)
    except OSError as e:
        raise ReportError(f"cannot write the report to {out} ({e.strerror or e}); "
                          "give --out DIR somewhere writable") from None
    return out / "index.html"


def make_report(sweeps: Sequence[Path | str], out: Path | str | None = None, conf: ReportConf | None = None,
                figures: bool = True, **overrides: Any) -> Path:
    """Build and write the report of ``sweeps``; returns the path of index.html. ``figures=False`` and
    ``arm_panels=False`` write the tables and verdicts.csv only (no matplotlib, no torch)."""
    sweeps = [Path(s) for s in sweeps]
    if not sweeps:
        raise ReportError("no sweep directory given")
    if out is None:
        if len(sweeps) > 1:
            raise ReportError("several SWEEP_DIRs are merged into one report: say where it goes with --out DIR")
        out = sweeps[0] / REPORT_DIR
    return write(build(sweeps, conf, plots=figures, **overrides), Path(out))
