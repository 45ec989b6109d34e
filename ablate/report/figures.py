"""The report's curves, one function per figure, each returning its PNG (None: nothing to draw).

Drawn on matplotlib's Agg canvas through ``Figure`` (no pyplot state), imported
only when a figure is drawn, so importing the report stays light. Curves are the
mean over an arm's seeds with a band from their minimum to their maximum,
unsmoothed, aligned by epoch; only the per-iteration loss is EMA-smoothed. Every
figure is as wide as the page (PAGE_WIDTH at DPI), and an arm keeps one colour
and marker in every panel of every figure (:func:`line_styles`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..stats import t_interval
from .analysis import Report, sort_levels
from .runs import Run, model_size
from .verdicts import Verdict

MAX_LINES = 10  # arms drawn per panel (the best by mean); more is unreadable
MAX_PANELS = 12
MAX_POINTS = 3000  # a longer curve is thinned to about this many points
MAX_FOREST = 40  # comparisons drawn in the forest plot (conclusive first); verdicts.csv has every one
FOREST_PNG = "verdicts.png"
DPI = 90
PAGE_WIDTH = 13.3  # inches: 1200 px at DPI, the report page's width
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ("-", "v"), ("--", "x"), (":", "*"), ("-.", "P"),
          ("-", "X"), ("--", "h")]


# ----------------------------------------------------------------------------- shared helpers
def _png(fig: Any) -> bytes:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
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


def _by_mean(rep: Report) -> list[tuple[str, ...]]:
    def score(a: tuple[str, ...]) -> float:
        m = rep.arm_mean(a)
        return -m if math.isfinite(m) else math.inf

    return sorted(rep.arms, key=score)


def line_styles(rep: Report) -> dict[str, dict[str, Any]]:
    """One colour and marker per line label (the arm less the panels' factor), fixed for the whole report,
    so an arm looks the same in every panel of every figure; the best arm by mean gets the first."""
    labels = dict.fromkeys(rep.short(a, rep.keys[1:2]) for a in _by_mean(rep))
    return {lab: _style(i) for i, lab in enumerate(labels)}


def _panels(rep: Report) -> list[tuple[str, list[tuple[str, ...]]]]:
    """Small multiples: one panel per level of the second factor (else one panel), best arms first."""
    arms = _by_mean(rep)
    if len(rep.keys) < 2:
        return [("", arms[:MAX_LINES])]
    k = rep.keys[1]
    levels = sort_levels(list(dict.fromkeys(a[1] for a in rep.arms)))
    return [(f"{k}={lvl}", [a for a in arms if a[1] == lvl][:MAX_LINES]) for lvl in levels[:MAX_PANELS]]


def _grid(n: int, h: float = 3.6, cols: int = 3) -> tuple[Any, list[Any]]:
    """A page-wide figure of ``n`` panels, ``cols`` a row."""
    from matplotlib.figure import Figure

    cols = min(n, cols)
    rows = math.ceil(n / cols)
    if n == 1:
        h = 4.6
    W, H = PAGE_WIDTH, h * rows + 0.4
    fig = Figure(figsize=(W, H))  # fixed margins: constrained layout costs more than the drawing
    fig.subplots_adjust(left=0.75 / W, right=1 - 0.2 / W, bottom=0.6 / H, top=1 - 0.6 / H,
                        wspace=0.28, hspace=0.45)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _finish(ax: Any, **labels: str) -> None:
    ax.set(**labels)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _panel_grid(rep: Report) -> tuple[Any, list[tuple[Any, str, list[tuple[tuple, str, dict]]]]]:
    """A figure of one panel per level of the second factor and, per panel, its axes, title and arms, each
    with its label and its :func:`line_styles` style (the same in every figure)."""
    panels = _panels(rep)
    skip = rep.keys[1:2]
    styles = line_styles(rep)
    fig, axes = _grid(len(panels))
    return fig, [(ax, title, [(a, rep.short(a, skip), styles[rep.short(a, skip)]) for a in arms])
                 for ax, (title, arms) in zip(axes, panels)]


def _more(rep: Report) -> str:
    """The caption's note when panels leave arms out."""
    n_arms = len(rep.arms)
    cut = any(len(arms) == MAX_LINES for _, arms in _panels(rep)) and n_arms > MAX_LINES
    return f" (the best {MAX_LINES} arms per panel of {n_arms})" if cut else ""


# ----------------------------------------------------------------------------- one function per figure
def per_arm_figure(rep: Report, col: str, what: str, ylabel: str, pct: bool) -> Any | None:
    """An ``epochs.csv`` column per arm by epoch (a matplotlib Figure): the mean over seeds, a band from
    min to max; one panel per level of the second factor, each arm in its :func:`line_styles` style."""
    fig, panels = _panel_grid(rep)
    drawn = False
    for ax, title, arms in panels:
        for a, label, st in arms:
            c = _aligned([r for r in rep.arms[a] if r.plotted], col)
            if c is None:
                continue
            x, m, lo, hi = (c[0], *(100 * v if pct else v for v in c[1:]))
            ax.plot(x, m, label=label, markevery=max(1, len(x) // 12), **st)
            ax.fill_between(x, lo, hi, color=st["color"], alpha=0.15, linewidth=0)
            drawn = True
        _finish(ax, title=title, xlabel="epoch", ylabel=ylabel)
    if not drawn:
        return None
    fig.suptitle(f"{what} per arm (line: mean; band: min to max over seeds)", fontsize=11)
    return fig


def accuracy_figure(rep: Report) -> bytes | None:
    """Test accuracy per arm by epoch."""
    fig = per_arm_figure(rep, "test_acc", "Test accuracy", "test accuracy (%)", True)
    return None if fig is None else _png(fig)


def loss_figure(rep: Report) -> bytes | None:
    """Test loss per arm by epoch."""
    fig = per_arm_figure(rep, "test_loss", "Test loss", "test loss", False)
    return None if fig is None else _png(fig)


SPLIT_LINES = (("train_acc", "--", "^", "0.6", "running train"), ("train_eval_acc", "-.", "v", "0.35", "clean train"),
               ("val_acc", ":", "s", "C0", "validation"), ("test_acc", "-", "o", "k", "test"))


def train_vs_test_figure(rep: Report) -> bytes | None:
    """The overfitting picture, one panel per arm: train accuracy (running, and clean where logged),
    validation (where held out) and test."""
    arms = [a for _, p in _panels(rep) for a in p][:MAX_PANELS]
    fig, axes = _grid(len(arms), 3.0, 4)
    drawn = False
    for ax, a in zip(axes, arms):
        runs = [r for r in rep.arms[a] if r.plotted]
        for col, ls, mk, colour, lab in SPLIT_LINES:
            c = _aligned(runs, col) if all(col in r.epochs for r in runs) else None
            if c is not None:
                ax.plot(c[0], 100 * c[1], linestyle=ls, marker=mk, color=colour, markersize=4, label=lab,
                        markevery=max(1, len(c[0]) // 12))
                ax.fill_between(c[0], 100 * c[2], 100 * c[3], color=colour, alpha=0.12, linewidth=0)
                drawn = True
        ax.set(title=rep.short(a), xlabel="epoch", ylabel="accuracy (%)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig) if drawn else None


def lr_figure(rep: Report) -> bytes | None:
    """What each scheduler really did: the lr of one run per distinct scheduler setting."""
    groups: dict[str, Run] = {}
    for a in rep.arms:
        for r in rep.arms[a]:
            if r.epochs is None or not len(r.epochs):
                continue
            ident = json.dumps([r.choices.get("scheduler"), r.config.get("scheduler"),
                                (r.config.get("optimizer") or {}).get("lr")], sort_keys=True, default=str)
            groups.setdefault(ident, r)
            break
    if not groups:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PAGE_WIDTH, 4.4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9)
    ax = fig.subplots()
    names = [str(r.choices.get("scheduler", "?")) for r in groups.values()]
    styles = line_styles(rep)
    positive = True
    for i, r in enumerate(list(groups.values())[:MAX_LINES]):
        label = names[i] if names.count(names[i]) == 1 else f"{names[i]} ({rep.short(rep.arm_of(r))})"
        own = rep.short(rep.arm_of(r), rep.keys[1:2])
        s = r.steps()
        if s is not None and len(s) and {"epoch", "lr"} <= set(s.columns):
            pos = s.groupby("epoch").cumcount().to_numpy()
            cnt = s.groupby("epoch")["epoch"].transform("size").to_numpy()
            x, y = s["epoch"].to_numpy() - 1 + pos / cnt, s["lr"].to_numpy()
        else:
            x, y = r.epochs["epoch"].to_numpy() - 1, r.epochs["lr"].to_numpy()
        k = max(1, len(x) // MAX_POINTS)
        x, y = np.append(x[::k], np.ceil(x[-1] + 1e-9)), np.append(y[::k], y[-1])  # close the last step
        positive &= bool(np.all(y[np.isfinite(y)] > 0))
        st = styles.get(label, styles.get(own, _style(i)))
        ax.plot(x, y, drawstyle="steps-post", label=label, markevery=max(1, len(x) // 12), **st)
    if positive and ax.get_ylim()[1] / max(ax.get_ylim()[0], 1e-300) > 100:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate as applied, per scheduler")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def train_loss_figure(rep: Report) -> bytes | None:
    """Per-iteration training loss (mean over seeds): raw faintly, EMA-smoothed on top."""
    fig, panels = _panel_grid(rep)
    drawn = False
    for ax, title, arms in panels:
        for a, label, st in arms:
            frames = [s for r in rep.arms[a] if r.plotted and (s := r.steps()) is not None and "loss" in s]
            if not frames:
                continue
            loss = pd.concat(frames).replace([np.inf, -np.inf], np.nan).groupby("step")["loss"].mean()
            smooth = loss.ewm(alpha=1 - rep.conf.smoothing, ignore_na=True).mean() if rep.conf.smoothing else loss
            k = max(1, len(loss) // MAX_POINTS)
            x = loss.index.to_numpy()[::k]
            ax.plot(x, loss.to_numpy()[::k], color=st["color"], alpha=0.25, linewidth=0.6)
            ax.plot(x, smooth.to_numpy()[::k], label=label, markevery=max(1, len(x) // 10), **st)
            drawn = True
        _finish(ax, title=title, xlabel="step", ylabel="training loss")
    return _png(fig) if drawn else None


def compute_figure(rep: Report) -> bytes | None:
    """Final test accuracy against multiply-adds per image (log x), one point per arm: the mean over
    seeds with its Student t interval, each seed faintly, the arm's parameters in the legend; so a
    bigger model and a better one can be told apart. Drawn only when the arms differ in size."""
    sizes = {a: model_size(members) for a, members in rep.arms.items()}
    known = {(tuple(v["params"]), tuple(v["mult_adds"])) for v in sizes.values() if len(v["mult_adds"]) == 1}
    if len(known) < 2:
        return None
    fig, panels = _panel_grid(rep)
    for ax, title, arms in panels:
        at = [sizes[a]["mult_adds"][0] if len(sizes[a]["mult_adds"]) == 1 else None for a, _, _ in arms]
        for i, (a, label, st) in enumerate(arms):
            accs = [100 * v for u in rep.units[a].values() if (v := u.value) is not None]  # the tables' seeds
            if at[i] is None or not accs:
                continue
            # Arms of equal compute side by side, 2% apart on the log axis, so their bars do not overlap.
            x = at[i] * 1.02 ** (at[:i].count(at[i]) - (at.count(at[i]) - 1) / 2)
            m, lo, hi = t_interval(accs, rep.conf.confidence)
            size = f" ({sizes[a]['params'][0] / 1e6:.3g} M params)" if len(sizes[a]["params"]) == 1 else ""
            ax.scatter([x] * len(accs), accs, color=st["color"], marker=st["marker"], s=12, alpha=0.3, linewidths=0)
            ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]] if math.isfinite(lo) else None, fmt=st["marker"],
                        color=st["color"], markersize=7, capsize=4, label=label + size)
        ax.set_xscale("log")
        _finish(ax, title=title, xlabel="multiply-adds per image (log scale)", ylabel="final test accuracy (%)")
    level = round(100 * rep.conf.confidence)
    fig.suptitle(f"Accuracy against compute per arm (mean, {level}% t interval over seeds)", fontsize=11)
    return _png(fig)


def _forest_rows(rep: Report) -> list[Verdict]:
    """The comparisons drawn (those with a test: two seeds a side or more): all of them up to MAX_FOREST,
    else the conclusive and pooled ones first."""
    vs = [v for v in rep.verdicts if math.isfinite(v.c.p_value)]
    if len(vs) > MAX_FOREST:
        keep = set(sorted(range(len(vs)), key=lambda i: (not vs[i].conclusive, not vs[i].pooled,
                                                         -abs(vs[i].c.diff)))[:MAX_FOREST])
        vs = [v for i, v in enumerate(vs) if i in keep]
    return vs


def forest_figure(rep: Report) -> bytes | None:
    """Every comparison stated: its difference with its interval (a forest plot), conclusive ones filled."""
    rows = _forest_rows(rep)
    if not rows:
        return None
    from matplotlib.figure import Figure

    labels = [f"{v.factor}: {v.a} - {v.b}" + (f"  [{v.within}]" if v.within else "") for v in rows]
    H = 0.9 + 0.3 * len(rows)
    fig = Figure(figsize=(PAGE_WIDTH, H))
    left = min(0.5, 0.03 + 0.0062 * max(map(len, labels)))  # room for the longest label at fontsize 8
    fig.subplots_adjust(left=left, right=0.98, bottom=0.55 / H, top=1 - 0.35 / H)
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]
    for y, v in zip(ys, rows):
        c = v.c
        colour = "C3" if v.conclusive else ("0.55" if v.identical is not None else "C0")
        if c.has_interval:
            ax.plot([100 * c.ci_low, 100 * c.ci_high], [y, y], color=colour, linewidth=2)
        marker = "x" if v.identical is not None else "o"
        ax.plot([100 * c.diff], [y], marker=marker, color=colour, markersize=7,
                markerfacecolor=colour if v.conclusive else "white")
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("difference in final test accuracy (points): a - b, with its Holm-adjusted interval")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def figures(rep: Report) -> list[tuple[str, str, bytes]]:
    """(file name, caption, PNG) of every figure there is something to draw for, in the report's order."""
    more = _more(rep)
    shown, tested = len(_forest_rows(rep)), sum(math.isfinite(v.c.p_value) for v in rep.verdicts)
    cut = f" ({shown} of {tested}: the conclusive and pooled ones first)" if shown < tested else ""
    made = [
        (FOREST_PNG, forest_figure,
         f"Every comparison stated{cut}: the difference in final test accuracy with its interval at the level "
         f"Holm tested it at; filled red = conclusive, open blue = inconclusive (the interval crosses zero), "
         f"grey x = identical runs. verdicts.csv has the numbers."),
        ("test_acc.png", accuracy_figure,
         f"Test accuracy per arm by epoch (unsmoothed; band spans the seeds){more}"),
        ("test_loss.png", loss_figure, f"Test loss per arm by epoch (unsmoothed; band spans the seeds){more}"),
        ("train_vs_test.png", train_vs_test_figure,
         "Train vs test accuracy per arm: running train (dashed; under augmentation and dropout), clean train "
         "(dash-dot; eval mode, where logged), validation (dotted, where held out), test (solid). The gap between "
         "clean train and test is overfitting"),
        ("lr.png", lr_figure, "Learning rate vs epoch per scheduler (per step where steps.csv has it)"),
        ("train_loss.png", train_loss_figure,
         f"Training loss per iteration (mean over seeds): raw faint, EMA {rep.conf.smoothing} on top{more}"),
        ("accuracy_vs_compute.png", compute_figure,
         f"Final test accuracy against multiply-adds per image (log scale), per arm: mean with a "
         f"{round(100 * rep.conf.confidence)}% Student t interval over seeds, parameters in the legend{more}"),
    ]
    return [(name, caption, png) for name, draw, caption in made if (png := draw(rep)) is not None]
