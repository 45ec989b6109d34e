"""The command line of the report: ``python -m ablate.report SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [knobs]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from . import ReportError, make_report


def main(argv: Sequence[str] | None = None) -> int:
    """Build the report; 0 on success, 2 (one line on stderr) for a bad argument or nothing to report on."""
    ap = argparse.ArgumentParser(
        prog="python -m ablate.report",
        description="Compare the runs of one or more sweep (or run) directories: writes summary.csv, "
                    "verdicts.csv, report.md, the figures and a self-contained index.html.",
        epilog="With one SWEEP_DIR the report goes to SWEEP_DIR/report/. Several SWEEP_DIRs are merged into one "
               "report and then --out is required (writing into one sweep would mix in the others' runs and be "
               "overwritten by that sweep's own report). Knobs default to the runs' recorded report config.")
    ap.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR", type=Path)
    ap.add_argument("--out", type=Path, help="report directory (default: SWEEP_DIR/report; required with several)")
    ap.add_argument("--overfit-gap", type=float, help="flag runs whose final train - test accuracy exceeds this")
    ap.add_argument("--confidence", type=float,
                    help="1 - the family-wise error of all verdicts together, e.g. 0.95")
    ap.add_argument("--min-seeds", type=int, help="warn when an arm has fewer finished seeds")
    ap.add_argument("--smoothing", type=float, help="EMA factor of the per-iteration loss curve (0 = raw)")
    ap.add_argument("--arm-panels", action=argparse.BooleanOptionalAction, default=None,
                    help="draw the confusion matrix and Grad-CAM of the best and the worst arm (from model.pt, "
                         "on the CPU)")
    ap.add_argument("--no-figures", dest="figures", action="store_false",
                    help="write the tables and verdicts.csv only: no plots and no arm panels")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = make_report(a.sweeps, a.out, figures=a.figures, overfit_gap=a.overfit_gap,
                           confidence=a.confidence, min_seeds=a.min_seeds, smoothing=a.smoothing,
                           arm_panels=False if not a.figures and a.arm_panels is None else a.arm_panels)
    except (ReportError, ConfigError) as e:
        print(f"ablate.report: {e}", file=sys.stderr)
        return 2
    print(f"Report: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0
