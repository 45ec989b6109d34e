"""Best vs worst arm: the confusion matrix and Grad-CAM of one representative run of each, and their texts.

The drawing is :func:`ablate.inspect.runs.arm_panels` (torch), imported only when
there is a model to draw, so the rest of the report never loads torch.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import rundir
from ..config import ConfigError
from .analysis import Report, pct, ranked_arms
from .runs import Run

PANEL_ROLES = ("best", "worst")
PANEL_FILES = {"confusion": "confusion.png", "confusion_csv": "confusion.csv", "gradcam": "gradcam.png"}
PANELS_TITLE = "Best vs worst arm: what they look at"
PANELS_INTRO = ("The best and the worst arm by mean final test accuracy (the tables' mean: a diverged run counts at "
                "chance), one representative run each (the finished seed closest to the mean of the arm's finished "
                "seeds), reloaded from model.pt on the CPU: the confusion matrix on the whole "
                "test set (rows: true class) and Grad-CAM on the same fixed test images (the first of each class "
                "in turn), for the predicted class (red title: a wrong prediction) and for the true class.")


@dataclass
class ArmPanel:
    """One side of the best-vs-worst section: the arm, the run drawn and its files, or why not."""

    role: str  # "best" or "worst"
    arm: tuple[str, ...]
    mean: float  # the arm's mean final test accuracy over its seeds (the tables' number: diverged at chance)
    n: int  # seeds with a result
    run: Run | None = None  # the representative run (None: no counted run has model.pt)
    files: dict[str, str] = field(default_factory=dict)  # PANEL_FILES key -> file name in report/
    skipped: str | None = None  # one line: why nothing was drawn

    def label(self, rep: Report) -> str:
        seeds = f"{self.n} seed{'s' if self.n != 1 else ''}"
        return f"{self.role} arm: {rep.label(self.arm)} (mean test accuracy {pct(self.mean)} %, {seeds})"


def finished_mean(runs: Sequence[Run]) -> float:
    """Mean final test accuracy of the runs that finished (counted); what the representative run is nearest."""
    return statistics.fmean(r.final_test_acc for r in runs if r.counted)


def representative_run(runs: Sequence[Run]) -> Run | None:
    """The run that stands for its arm in the panels: the counted seed whose final test accuracy is
    closest to the arm's mean (ties: the lower seed), among those that kept ``model.pt``.

    The seed nearest the mean rather than the best seed: the best seed of each arm
    would flatter both, and the picture should be of a typical run of the arm."""
    ok = [r for r in runs if r.counted]
    if not ok:
        return None
    m = finished_mean(runs)  # of the runs it can stand for (diverged ones cannot)
    have = [r for r in ok if (r.path / rundir.MODEL).is_file()]
    key = lambda r: (abs(r.final_test_acc - m), r.seed if r.seed is not None else math.inf, r.name)  # noqa: E731
    return min(have, key=key) if have else None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def draw_arm_panels(rep: Report, out: Path) -> None:
    """Confusion matrix and Grad-CAM of the best and the worst arm into ``out`` (``best_*``, ``worst_*``).

    Each arm is drawn from its :func:`representative_run`, reloaded on the CPU
    with :func:`ablate.inspect.runs.arm_panels` on the same fixed test images (the
    first test image of each class in turn, identical for runs on the same data set),
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
            from ..data import DataError  # torch: imported only when there is a model to draw
            from ..inspect.runs import InspectError, arm_panels

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


def panel_lines(rep: Report, p: ArmPanel, code: Callable[[str], str] = str) -> tuple[str, str]:
    """(heading, detail) of one side of the section; ``code`` formats the run's name (escaped for HTML)."""
    head = p.label(rep)
    head = head[0].upper() + head[1:]
    if p.skipped:
        return head, f"No panel: {p.skipped}."
    r = p.run
    return head, (f"Drawn from run {code(r.name)} (seed {r.seed}, final test accuracy "
                  f"{pct(r.final_test_acc)} %: {_closest(rep, p)}).")


def _closest(rep: Report, p: ArmPanel) -> str:
    """Which mean the drawn run is closest to: the arm's, or its finished seeds' when some did not finish."""
    runs = rep.arms[p.arm]
    if all(r.counted for r in runs if r.result is not None):  # the tables' mean is the finished runs' mean
        return "the seed closest to the arm's mean"
    n = sum(r.counted for r in runs)
    return f"the finished seed closest to the mean of the arm's {n} finished seeds, {pct(finished_mean(runs))} %"
