"""What the report writes: ``summary.csv`` (one row per run), ``verdicts.csv`` (one row per comparison),
``report.md`` and a self-contained ``index.html``."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis import Report, pct
from .figures import FOREST_PNG
from .panels import PANELS_INTRO, PANELS_TITLE, panel_lines
from .verdicts import verdicts_frame

SUMMARY_COLUMNS = ["status", "flags", "error", "params", "mult_adds", "epochs_done", "epochs_planned", "result", "final_test_acc",
                   "best_test_acc", "selection", "best_epoch", "test_acc_at_best", "final_val_acc", "best_val_acc",
                   "final_train_acc", "final_train_eval_acc", "gap_source", "gap_final", "gap_best", "seconds",
                   "images_per_second", "config_hash"]
PERCENT_COLUMNS = ("result", "final_test_acc", "best_test_acc", "test_acc_at_best", "final_val_acc", "best_val_acc",
                   "final_train_acc", "final_train_eval_acc", "gap_final", "gap_best")
VERDICTS_INTRO = ("How to read a verdict: 'A beats B by d points' means the difference in final test accuracy is "
                  "settled at this report's level after adjusting for every comparison stated; 'inconclusive' "
                  "means these seeds cannot tell which is better (not that they are equal), and the sentence after "
                  "it says how many seeds would.")


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
    return df.astype({c: "Int64" for c in ("seed", "params", "mult_adds", "epochs_done", "epochs_planned", "best_epoch")
                      if c in df})


def flags_frame(rep: Report) -> pd.DataFrame:
    """One row per flag of a run, with what the run contributes; a flag every run has is a header line instead."""
    shared = set(rep.shared_flags())

    def enters(r: Any) -> str:
        if r.result is None:
            return "no (excluded)"
        return "at chance" if "diverged" in r.flags else "yes"

    rows = [{"run": r.name, "status": r.status, "flag": f, "detail": d, "in means": enters(r)}
            for r in rep.runs for f, d in r.flags.items() if f not in shared]
    return pd.DataFrame(rows, columns=["run", "status", "flag", "detail", "in means"])


def verdicts_csv(rep: Report) -> str:
    """verdicts.csv: one row per comparison stated (fractions; ``conclusive`` true/false)."""
    df = verdicts_frame(rep.verdicts)
    for c in ("paired", "conclusive", "identical"):
        df[c] = df[c].map({True: "true", False: "false"})
    return df.to_csv(index=False)


def runs_display(rep: Report) -> pd.DataFrame:
    """:func:`summary_frame` for people: accuracies and gaps in percent, times to one decimal, no errors."""
    df = summary_frame(rep).drop(columns=["error", "config_hash"])
    for c in PERCENT_COLUMNS:
        df[c] = [pct(v) if v is not None and not pd.isna(v) else "-" for v in df[c]]
    for c in ("seconds", "images_per_second"):
        df[c] = [f"{v:.1f}" if v is not None and not pd.isna(v) else "-" for v in df[c]]
    return df


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
    counted = sum(r.result is not None for r in rep.runs)
    counts = rep.flag_counts()
    flags = ", ".join(f"{v} {k}" for k, v in counts.items())
    varying = ", ".join(rep.keys) if rep.keys else "nothing (one arm)"
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in rep.runs if r.seed is not None})) or "-"
    return [f"Runs: {n} found{exp}, {counted} counted in the means, {len(rep.arms)} arm(s).",
            f"Varying: {varying}; seeds: {seeds}.",
            f"Flags: {flags}.", *rep.notes]


def markdown(rep: Report) -> str:
    """report.md: header, verdicts, tables, flagged runs, links to the curves and the arm panels."""
    out = ["# ablate report", "", "Sweeps: " + ", ".join(f"`{s}`" for s in rep.sweeps), ""]
    out += [f"- {line}" for line in _header_lines(rep)] + [""]
    out += ["## Verdicts", ""]
    if rep.verdict_lines:
        out += [VERDICTS_INTRO, ""]
    for name, cap, _ in rep.figures:
        if name == FOREST_PNG:
            out += [f"![{cap}]({name})", ""]
    for key, lines in rep.verdict_lines:
        out += [f"**{key}**", ""] + [f"- {line}" for line in lines] + [""]
    if not rep.verdict_lines:
        out += ["Nothing varies across the runs but the seed: no comparison to make.", ""]
    if rep.warnings:
        out += ["Warnings:", ""] + [f"- {w}" for w in rep.warnings] + [""]
    out += ["## Tables", ""]
    for _, title, df in rep.tables:
        out += [f"### {title}", "", _md_table(df), ""]
    fl = flags_frame(rep)
    out += ["## Flagged runs", "", _md_table(fl) if len(fl) else "None.", ""]
    curves = [(name, cap) for name, cap, _ in rep.figures if name != FOREST_PNG]
    if curves:
        out += ["## Curves", ""] + [f"![{cap}]({name})" for name, cap in curves] + [""]
    if rep.panels or rep.panels_note:
        out += [f"## {PANELS_TITLE}", ""]
        if rep.panels_note:
            out += [f"No panels: {rep.panels_note}.", ""]
        for p in rep.panels:
            head, detail = panel_lines(rep, p, lambda n: f"`{n}`")
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
figure{margin:16px 0}figure img{width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:13px;color:#444}
ul.verdicts li{margin:3px 0}pre{white-space:pre-wrap;font-size:12px;background:#f4f4f4;padding:6px}
.scroll{overflow-x:auto}
.pair{display:flex;flex-wrap:wrap;gap:16px}.pair .side{flex:1 1 45%;min-width:320px}.pair h3{margin-top:4px}
.pair code{word-break:break-all}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _panels_html(rep: Report, out: Path | None) -> list[str]:
    e = html.escape
    p = [f"<h2 id='arm-panels'>{e(PANELS_TITLE)}</h2>"]
    if rep.panels_note:
        return p + [f"<p>No panels: {e(rep.panels_note)}.</p>"]
    p.append(f"<p>{e(PANELS_INTRO)}</p><div class='pair'>")
    for pan in rep.panels:
        head, detail = panel_lines(rep, pan, lambda n: f"\0{n}\1")  # escaped, then <code>
        detail = e(detail).replace("\0", "<code>").replace("\1", "</code>")
        p.append(f"<div class='side' id='panel-{pan.role}'><h3>{e(head)}</h3><p>{detail}</p>")
        for key, what in (("confusion", "confusion matrix"), ("gradcam", "Grad-CAM")):
            if key in pan.files:
                uri = _data_uri((out / pan.files[key]).read_bytes()) if out else pan.files[key]
                p.append(f"<figure><img alt='{e(pan.role)} arm: {what}' src='{uri}'></figure>")
        p.append("</div>")
    return p + ["</div>"]


def html_page(rep: Report, out: Path | None = None) -> str:
    """index.html: one file, images as data URIs, no external requests (``out``: where the panels are)."""
    e = html.escape
    p = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>", "<title>ablate report</title>",
         f"<style>{CSS}</style></head><body>", "<h1>ablate report</h1>",
         "<p>Sweeps: " + ", ".join(f"<code>{e(str(s))}</code>" for s in rep.sweeps) + "</p>",
         "<ul id='header'>" + "".join(f"<li>{e(line)}</li>" for line in _header_lines(rep)) + "</ul>"]
    for name, cap, png in rep.figures:
        if name == FOREST_PNG:  # the answer first: every comparison's difference and interval
            p.append(f"<figure id='forest'><img alt='{e(cap)}' src='{_data_uri(png)}'><figcaption>{e(cap)}"
                     "</figcaption></figure>")
    p.append("<h2 id='verdicts'>Verdicts</h2>")
    if rep.verdict_lines:
        p.append(f"<p>{e(VERDICTS_INTRO)}</p>")
    for key, lines in rep.verdict_lines:
        p.append(f"<h3>{e(key)}</h3><ul class='verdicts'>" + "".join(f"<li>{e(x)}</li>" for x in lines) + "</ul>")
    if not rep.verdict_lines:
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
    for r in rep.runs:
        if r.traceback:
            p.append(f"<details><summary>traceback of {e(r.name)}</summary><pre>{e(r.traceback)}</pre></details>")
    p.append("<h2 id='curves'>Curves</h2>")
    for name, cap, png in rep.figures:
        if name == FOREST_PNG:
            continue
        p.append(f"<figure><img alt='{e(cap)}' src='{_data_uri(png)}'><figcaption>{e(cap)}</figcaption></figure>")
    if rep.panels or rep.panels_note:
        p += _panels_html(rep, out)
    p.append("<h2 id='runs'>All runs</h2>")
    p.append("<p>Accuracies and gaps in percent.</p><div class='scroll'>"
             + runs_display(rep).to_html(index=False, table_id="table-runs", border=0, na_rep="") + "</div>")
    p.append("</body></html>")
    return "\n".join(p)
