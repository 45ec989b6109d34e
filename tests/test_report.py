"""The sweep report on synthetic run directories with known numbers (tests/rundirs.py)."""

from __future__ import annotations

import base64
import csv
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import yaml
from omegaconf import OmegaConf

import rundirs
from ablate import report, runlock, stats
from ablate.callbacks import ReportCallback
from ablate.config import ConfigError, ReportConf
from ablate.report import verdicts as vd
from ablate.report.cli import main as report_main
from ablate.report.panels import panel_lines
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]

FINALS = {"step": [0.80, 0.82, 0.81], "cosine": [0.83, 0.84, 0.845], "plateau": [0.805, 0.83, 0.80]}


@pytest.fixture
def sweep3(tmp_path):
    return rundirs.sweep(tmp_path / "sweep", FINALS)


def _table(rep: report.Report, tid: str):
    return {t: df for t, _, df in rep.tables}[tid]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_arms_mean_std_and_summary_csv(sweep3):
    out = report.make_report([sweep3])
    assert out == sweep3 / "report" / "index.html"
    rep = report.build([sweep3], plots=False)
    assert rep.keys == ["scheduler"]
    assert sorted(rep.arms) == [("cosine",), ("plateau",), ("step",)]
    assert all(len(runs) == 3 for runs in rep.arms.values())
    df = _table(rep, "table-factor-scheduler").set_index("scheduler")
    for lvl, accs in FINALS.items():
        m, s = 100 * np.mean(accs), 100 * np.std(accs, ddof=1)
        assert df.loc[lvl, "test acc % (mean ± std)"] == f"{m:.2f} ± {s:.2f}"
        assert df.loc[lvl, "results / expected"] == "3 / 3"
    assert list(df.index) == ["cosine", "plateau", "step"]  # rank (all =1 here), then mean
    rows = _rows(sweep3 / "report" / "summary.csv")
    assert len(rows) == 9
    assert {"scheduler", "seed", "status", "params", "result", "final_test_acc", "best_test_acc", "best_epoch",
            "test_acc_at_best", "selection", "final_train_acc", "gap_final", "gap_best", "seconds",
            "images_per_second", "config_hash"} <= set(rows[0])
    assert "trainer.seed" not in rows[0]  # the seed is its own column, not an arm factor
    r = next(r for r in rows if r["scheduler"] == "step" and r["seed"] == "1")
    assert float(r["final_test_acc"]) == pytest.approx(0.82)
    assert float(r["best_test_acc"]) == pytest.approx(0.825) and r["best_epoch"] == "4"
    assert r["selection"] == "test" and float(r["result"]) == pytest.approx(0.82)
    assert float(r["gap_final"]) == pytest.approx(0.02) and float(r["seconds"]) == pytest.approx(10.0)
    md = (sweep3 / "report" / "report.md").read_text()
    assert "| cosine | =1 | 83.83 ± 0.76 | 3 / 3 | 0 | 0 |" in md
    assert "std is the sample standard deviation (ddof = 1)" in md


def test_paired_difference_interval_and_verdict_line(sweep3):
    rep = report.build([sweep3], plots=False)
    v = report.compare_levels(rep, "scheduler", "cosine", "step")
    d = np.array(FINALS["cosine"]) - np.array(FINALS["step"])  # paired by seed
    raw = [stats.compare(FINALS[x], FINALS[y], True) for x, y in (("cosine", "step"), ("cosine", "plateau"),
                                                                    ("plateau", "step"))]
    _, levels = stats.holm([c.p_value for c in raw])
    half = st.t.ppf(1 - levels[0] / 2, 2) * d.std(ddof=1) / math.sqrt(3)
    c = v.c
    assert (v.a, v.b, c.paired, c.n, c.method) == ("cosine", "step", True, 3, "paired t")
    assert c.diff == pytest.approx(d.mean()) and (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half,
                                                                                       d.mean() + half))
    assert c.p_adjusted == pytest.approx(3 * raw[0].p_value) and not v.conclusive  # p = 0.023 alone, 0.07 of 3
    assert v.seeds_needed == stats.seeds_needed(c.sd, c.diff, levels[0]) and v.seeds_needed > 3
    line = next(x for x in rep.verdict_lines[0][1] if x.startswith("cosine vs step"))
    assert line == (f"cosine vs step: inconclusive, cosine ahead by {100 * d.mean():.2f} points "
                    f"({100 * (1 - levels[0]):.4g}% CI {100 * c.ci_low:+.2f} to {100 * c.ci_high:+.2f}, adjusted p = "
                    f"{c.p_adjusted:.3g}; paired t on 3 seeds, cosine won 3 of 3 seeds; the interval crosses zero). "
                    f"With 3 seeds, differences under {100 * v.min_detectable:.2f} points cannot be told apart; "
                    f"about {v.seeds_needed} seeds would settle this one.")


def test_verdicts_csv_one_row_per_comparison(sweep3):
    report.make_report([sweep3], figures=False, arm_panels=False)
    rows = _rows(sweep3 / "report" / "verdicts.csv")
    rep = report.build([sweep3], plots=False)
    assert len(rows) == len(rep.verdicts) == 3
    assert {"factor", "a", "b", "diff", "ci_low", "ci_high", "n_a", "n_b", "paired", "p_value", "p_adjusted",
            "conclusive", "seeds_needed", "excluded", "within", "method"} <= set(rows[0])
    for row, v in zip(rows, rep.verdicts):
        assert (row["factor"], row["within"], row["a"], row["b"]) == ("scheduler", "", v.a, v.b)
        assert float(row["diff"]) == pytest.approx(v.c.diff) and 0 <= float(row["diff"]) < 1  # a fraction
        assert row["conclusive"] in ("true", "false") and row["paired"] == "true"
        assert row["method"] == "paired t; Holm over 3 comparisons" and row["excluded"] == "0"
        assert int(row["seeds_needed"]) == v.seeds_needed


def test_every_health_flag(tmp_path):
    sweep = tmp_path / "s"
    ok = [rundirs.write_run(sweep, ["model=a", f"trainer.seed={s}"], rundirs.curve(0.8 + s / 100)) for s in range(3)]
    rundirs.write_run(sweep, ["model=b", "trainer.seed=0"], [0.5, 0.6], status="failed",
                      error="RuntimeError: CUDA out of memory\nmore")
    rundirs.write_run(sweep, ["model=b", "trainer.seed=1"], [0.5, 0.6], train_loss=[0.9, float("nan")],
                      test_loss=[0.5, None], status="diverged", error="non-finite training loss in epoch 2")
    rundirs.write_run(sweep, ["model=b", "trainer.seed=2"], [0.5, 0.6], epochs_planned=5, status="running")
    rundirs.write_run(sweep, ["model=c", "trainer.seed=0"], [0.5, 0.6, 0.7])  # best epoch = last
    rundirs.write_run(sweep, ["model=c", "trainer.seed=1"], [0.7, 0.72, 0.71], train_acc=[0.8, 0.9, 0.99])
    rep = report.build([sweep], plots=False)
    flags = {r.path.name: r.flags for r in rep.runs}
    assert flags["model=b,trainer.seed=0"] == {"failed": "RuntimeError: CUDA out of memory"}
    assert set(flags["model=b,trainer.seed=1"]) == {"diverged"}
    assert flags["model=b,trainer.seed=2"] == {"incomplete": "2/5 epochs (running)"}
    assert set(flags["model=c,trainer.seed=0"]) == {"still improving"}
    assert set(flags["model=c,trainer.seed=1"]) == {"overfitting"}  # gap 0.99 - 0.71 > 0.10
    assert all(not flags[p.name] for p in ok)
    # A non-finite loss in epochs.csv is caught even when the summary does not say so.
    rundirs.write_run(tmp_path / "t", ["model=d"], [0.5, 0.6], train_loss=[0.9, float("inf")])
    assert "diverged" in report.load_run(tmp_path / "t" / "model=d", tmp_path / "t").flags
    # model=b: the diverged run is its one result, at chance; the failed and unfinished ones are excluded.
    # Flagged-but-valid runs (model=c) are kept in.
    df = _table(rep, "table-factor-model").set_index("model")
    assert df.loc["b", "test acc % (mean ± std)"] == "10.00 (1 seed)" and df.loc["b", "results / expected"] == "1 / 3"
    assert (df.loc["b", "diverged"], df.loc["b", "excluded"], df.loc["b", "flagged runs"]) == (1, 2, 3)
    c = [0.7, 0.71]
    assert df.loc["c", "test acc % (mean ± std)"] == f"{100 * np.mean(c):.2f} ± {100 * np.std(c, ddof=1):.2f}"
    md = report.markdown(rep)
    assert "Flags: 1 failed, 1 diverged, 1 incomplete, 1 still improving, 1 overfitting." in md
    assert "| model=b,trainer.seed=0 | failed | failed | RuntimeError: CUDA out of memory | no (excluded) |" in md
    assert "| model=b,trainer.seed=1 | diverged | diverged | non-finite training loss in epoch 2 | at chance |" in md
    assert "model=c has 2 finished seeds" in md


def test_a_run_whose_writer_died_is_interrupted_and_flags_nothing_else(tmp_path):
    """summary.json still says running; no live process holds the run: it is shown interrupted, and its
    partial epochs (train 0.9 vs test 0.3 after one of three) raise no overfitting flag."""
    sweep = tmp_path / "s"
    live = rundirs.write_run(sweep, ["trainer.seed=0"], [0.3], train_acc=[0.9], epochs_planned=3, status="running")
    dead = rundirs.write_run(sweep, ["trainer.seed=1"], [0.3], train_acc=[0.9], epochs_planned=3, status="running")
    with runlock.RunLock(dead):
        pass  # its writer took the lock, then died (the kernel dropped the lock)
    with runlock.RunLock(live):
        rep = report.build([sweep], plots=False)
    runs = {r.path: r for r in rep.runs}
    assert (runs[live].status, runs[dead].status) == ("running", "interrupted")
    assert runs[live].flags == {"incomplete": "1/3 epochs (running)"}
    assert runs[dead].flags == {"incomplete": "1/3 epochs (interrupted)"}
    assert list(report.summary_frame(rep)["status"]) == ["running", "interrupted"]


def test_partial_sweep_still_reports(tmp_path):
    sweep = rundirs.sweep(tmp_path / "s", {"step": [0.8, 0.81, 0.82], "cosine": [0.83, 0.84]})
    # cosine seed 2: killed after two epochs, no summary.json yet.
    rundirs.write_run(sweep, ["scheduler=cosine", "trainer.seed=2"], [0.6, 0.7], epochs_planned=5, summary=False)
    # A torn last line from the killed writer is ignored.
    with open(sweep / "scheduler=cosine,trainer.seed=2" / "epochs.csv", "a") as f:
        f.write("3,0.1,0.5")
    # A run that finished every epoch but whose summary.json is missing counts, from epochs.csv.
    shutil.rmtree(sweep / "scheduler=step,trainer.seed=2")
    rundirs.write_run(sweep, ["scheduler=step", "trainer.seed=2"], rundirs.curve(0.82), summary=False)
    rundirs.write_run(sweep, ["scheduler=plateau", "trainer.seed=0"], [0.3], status="failed", error="ValueError: x")
    (sweep / "scheduler=plateau,trainer.seed=1" / ".hydra").mkdir(parents=True)  # launched, nothing written
    rundirs.write_multirun(sweep, ["scheduler=step,cosine,plateau", "trainer.seed=0,1,2"])
    out = report.make_report([sweep])
    rep = report.build([sweep], plots=False)
    by = {r.path.name: r for r in rep.runs}
    killed = by["scheduler=cosine,trainer.seed=2"]
    assert killed.status == "no summary.json" and killed.epochs_done == 2 and "incomplete" in killed.flags
    nosum = by["scheduler=step,trainer.seed=2"]
    assert nosum.counted and nosum.final_test_acc == pytest.approx(0.82) and nosum.seed == 2
    assert "failed" in by["scheduler=plateau,trainer.seed=0"].flags
    assert "incomplete" in by["scheduler=plateau,trainer.seed=1"].flags
    df = _table(rep, "table-factor-scheduler").set_index("scheduler")
    assert df["results / expected"].to_dict() == {"cosine": "2 / 3", "step": "3 / 3", "plateau": "0 / 3"}
    assert df["excluded"].to_dict() == {"cosine": 1, "step": 0, "plateau": 2}
    assert rep.n_expected == 9
    md = (out.parent / "report.md").read_text()
    assert "Runs: 8 found of 9 expected, 5 counted in the means" in md
    assert "plateau: no run has a result (1 failed, 1 incomplete); not compared" in md
    v = report.compare_levels(rep, "scheduler", "cosine", "step")
    assert (v.excluded_a, v.c.n, v.unpartnered) == (1, 2, 1)


def test_merge_two_sweeps_and_cli(tmp_path, capsys):
    a = rundirs.sweep(tmp_path / "a", {"step": [0.80, 0.82, 0.81], "cosine": [0.83, 0.84, 0.845]})
    b = rundirs.sweep(tmp_path / "b", {"plateau": [0.805, 0.83, 0.80], "cosine": [0.85]})
    assert report_main([str(a), str(b)]) == 2
    assert "--out" in capsys.readouterr().err
    assert report_main([str(a), str(b), "--out", str(tmp_path / "merged"), "--confidence", "0.9"]) == 0
    assert "Report: " + str(tmp_path / "merged" / "index.html") in capsys.readouterr().out
    rows = _rows(tmp_path / "merged" / "summary.csv")
    assert len(rows) == 10 and {r["sweep"] for r in rows} == {str(a), str(b)}
    assert {r["confidence"] for r in _rows(tmp_path / "merged" / "verdicts.csv")} <= {"0.9", str(1 - 0.1 / 3),
                                                                                    str(1 - 0.1 / 2)}
    rep = report.build([a, b], plots=False)
    assert rep.conf.confidence == 0.95  # the runs' recorded report config
    assert sorted(rep.arms) == [("cosine",), ("plateau",), ("step",)]
    cos = sorted(r.final_test_acc for r in rep.arms[("cosine",)])
    assert cos == pytest.approx([0.83, 0.84, 0.845, 0.85])
    # The repeated (cosine, seed 0) unit is averaged, in the table as in the verdicts.
    vals = report.factor_values(rep, "scheduler")["cosine"]
    assert vals[(0,)] == pytest.approx((0.83 + 0.85) / 2)
    df = _table(rep, "table-factor-scheduler").set_index("scheduler")
    assert df.loc["cosine", "results / expected"] == "3 / 3"  # b planned seeds 0-2 for cosine too: the same ones
    units = list(vals.values())
    assert df.loc["cosine", "test acc % (mean ± std)"] == (f"{100 * np.mean(units):.2f} ± "
                                                         f"{100 * np.std(units, ddof=1):.2f}")


def test_two_factors_grid_single_run_and_errors(tmp_path):
    sweep = tmp_path / "g"
    for model in ("lenet", "cnn3"):
        for sch, base in (("step", 0.8), ("cosine", 0.82)):
            for seed in range(3):
                rundirs.write_run(sweep, [f"model={model}", f"scheduler={sch}", f"trainer.seed={seed}"],
                                  rundirs.curve(base + (0.05 if model == "cnn3" else 0) + seed / 200))
    rep = report.build([sweep])
    assert rep.keys == ["model", "scheduler"]
    assert {t for t, _, _ in rep.tables} == {"table-factor-model", "table-factor-scheduler", "table-grid"}
    v = report.compare_levels(rep, "scheduler", "cosine", "step")
    assert v.c.paired and v.c.n == 6 and v.c.diff == pytest.approx(0.02) and not v.c.has_interval  # no spread
    assert v.unit == "(model, seed) pairs"
    w = report.compare_levels(rep, "scheduler", "cosine", "step", within="model=lenet")
    assert w.c.n == 3 and w.unit == "seeds" and {x.c.family for x in rep.verdicts} == {len(rep.verdicts)}
    assert len(rep.verdicts) == 2 * 3  # per factor: pooled + within each level of the other
    assert {n for n, _, _ in rep.figures} == {"verdicts.png", "test_acc.png", "test_loss.png", "train_vs_test.png",
                                              "lr.png", "train_loss.png"}
    # A single run directory is its own sweep.
    one = rundirs.write_run(tmp_path / "single", [], [0.5, 0.6, 0.55])
    assert report.make_report([one]) == one / "report" / "index.html"
    rep1 = report.build([one], plots=False)
    assert rep1.keys == [] and rep1.verdicts == [] and [t for t, _, _ in rep1.tables] == ["table-grid"]
    assert rep1.verdict_lines == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ReportError, match=r"^no run directories under .*empty \(looked for summary.json"):
        report.make_report([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="report.confidence"):
        report.make_report([one], confidence=1.5)


def test_figure_free_path_writes_tables_and_verdicts_only(sweep3, tmp_path):
    out = report.make_report([sweep3], tmp_path / "a", figures=False, arm_panels=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.html", "report.md", "summary.csv", "verdicts.csv"]
    assert "<img" not in out.read_text()
    assert report_main([str(sweep3), "--out", str(tmp_path / "b"), "--no-figures"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(p.name for p in out.parent.iterdir())
    assert (tmp_path / "b" / "verdicts.csv").read_text() == (out.parent / "verdicts.csv").read_text()


def test_a_flag_every_run_has_is_one_header_line(tmp_path):
    sweep = tmp_path / "s"
    for sch in ("step", "cosine", "plateau"):
        for seed in range(3):  # best epoch = the last: every run was still improving
            rundirs.write_run(sweep, [f"scheduler={sch}", f"trainer.seed={seed}"], [0.5, 0.6, 0.7 + seed / 100])
    rundirs.write_run(sweep, ["scheduler=step", "trainer.seed=3"], [0.5, 0.6, 0.8], train_acc=[0.9, 0.99, 1.0])
    rep = report.build([sweep], plots=False)
    assert rep.shared_flags() == ["still improving"]
    md = report.markdown(rep)
    assert "- all 10 runs were still improving at the last epoch: train longer before comparing." in md
    fl = report.flags_frame(rep)
    assert fl["flag"].tolist() == ["overfitting"]  # the one flag not every run has keeps its row


def test_validation_split_chooses_the_best_epoch_and_test_chooses_nothing(tmp_path):
    sweep = tmp_path / "s"
    for seed in range(2):
        # Validation peaks in epoch 2, test in epoch 3: the best epoch shown is 2, with epoch 2's test accuracy.
        rundirs.write_run(sweep, ["scheduler=plateau", f"trainer.seed={seed}"], [0.70, 0.72, 0.74, 0.73],
                          val_acc=[0.71, 0.76, 0.75, 0.74], train_eval_acc=[0.72, 0.8, 0.85, 0.9],
                          scheduler_metric="val_loss")
    rep = report.build([sweep], plots=False)
    r = rep.runs[0]
    assert (r.selection, r.best_epoch, r.test_acc_at_best, r.best_val_acc) == ("val", 2, 0.72, 0.76)
    assert r.final_test_acc == 0.73 and r.best_test_acc == 0.74 and r.final_val_acc == 0.74
    df = _table(rep, "table-grid")
    assert (df.loc[0, "best epoch"], df.loc[0, "test acc at best epoch %"]) == ("2.0", "72.00")
    assert "Best epoch: chosen on the validation split; the test set chose nothing" in report.markdown(rep)
    assert not any("still improving" in r.flags for r in rep.runs)  # validation's best is not the last epoch
    # val_size 0, as the tutorial presets: plateau steps on the test loss, and the header says so.
    tut = tmp_path / "t"
    for seed in range(2):
        rundirs.write_run(tut, ["scheduler=plateau", f"trainer.seed={seed}"], [0.70, 0.72, 0.74, 0.73],
                          selection="test", scheduler_metric="test_loss")
        rundirs.write_run(tut, ["scheduler=cosine", f"trainer.seed={seed}"], [0.70, 0.72, 0.74, 0.73],
                          selection="test")
    md = report.markdown(report.build([tut], plots=False))
    assert "No validation split in every run (dataset.val_size 0)" in md
    assert "plateau stepped on the test loss, as the tutorial did: its test accuracy is optimistic." in md
    assert "cosine stepped" not in md
    # Older run directories (no val or clean-train columns, no selection) read as before, and say the same.
    old = rundirs.sweep(tmp_path / "old", {"plateau": [0.8, 0.81], "step": [0.79, 0.8]})
    rep = report.build([old, sweep], plots=False, arm_panels=False)
    assert {r.selection for r in rep.runs} == {"val", "test"}
    assert "No validation split in 4 runs" in report.markdown(rep)


def test_each_arm_keeps_one_style_in_every_panel(tmp_path):
    sweep = tmp_path / "g"
    for model, bump in (("lenet", 0.0), ("cnn3", 0.05)):
        for sch, base in (("step", 0.8), ("cosine", 0.82), ("plateau", 0.78)):
            for seed in range(2):
                rundirs.write_run(sweep, [f"scheduler={sch}", f"model={model}", f"trainer.seed={seed}"],
                                  rundirs.curve(base + (0.06 if (model, sch) == ("lenet", "plateau") else bump)
                                                + seed / 200))
    rep = report.build([sweep], plots=False)
    from ablate.report import figures

    fig = figures.per_arm_figure(rep, "test_acc", "Test accuracy", "%", True)
    seen: dict[str, tuple] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            style = (line.get_color(), line.get_marker(), line.get_linestyle())
            assert seen.setdefault(line.get_label(), style) == style  # the same arm, the same look, every panel
    assert len(seen) == 3 and len(set(seen.values())) == 3 and len(fig.axes) == 2


def test_report_conf_matches_default_yaml():
    node = yaml.safe_load((ROOT / "conf" / "report" / "default.yaml").read_text())
    node.pop("defaults")
    assert ReportConf(**node) == ReportConf()


def test_a_hundred_one_seed_arms_rank_together_and_state_no_test(tmp_path):
    sweep = tmp_path / "optuna"
    rng = np.random.default_rng(0)
    for i, lr in enumerate(np.exp(rng.uniform(-9, -2, 100))):
        rundirs.write_run(sweep, [f"optimizer.lr={lr:.6g}"], rundirs.curve(0.7 + 0.1 * rng.random(), 10),
                          steps_per_epoch=20)
    rep = report.build([sweep])
    report.write(rep, tmp_path / "out")
    assert rep.keys == ["optimizer.lr"] and len(rep.arms) == 100
    df = _table(rep, "table-factor-optimizer-lr")
    assert len(df) == 100 and df["test acc % (mean ± std)"].str.endswith("(1 seed)").all()
    assert (df["rank"] == "=1").all()  # nothing separates them
    assert "100 of 100 arms have fewer than 3 finished seeds" in rep.warnings[0]
    assert rep.verdicts == [] and list(rep.untested) == [("optimizer.lr", "")]  # one seed each: no test
    assert len(rep.untested[("optimizer.lr", "")][vd.TOO_FEW]) == 100 * 99 // 2
    assert "4950 pairs of levels cannot be compared: fewer than 2 finished seeds on a side" in report.markdown(rep)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.refs, self.tables = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "table":
            self.tables.append(a.get("id"))
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_html_is_self_contained_with_every_table(sweep3):
    rundirs.write_run(sweep3, ["scheduler=step", "trainer.seed=9"], [0.2], status="failed", error="boom")
    page = report.make_report([sweep3]).read_text()
    p = _Refs()
    p.feed(page)
    assert len(p.imgs) == 6 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    assert not [r for r in p.refs if r.lower().startswith(("http:", "https:", "//"))]
    assert "http://" not in page and "https://" not in page
    assert p.tables == ["table-factor-scheduler", "table-flags", "table-runs"]
    assert "cosine vs step: inconclusive" in page and "Flags: 1 failed" in page
    # The forest plot is the first thing after the header, before the verdicts' text.
    assert page.index("id='header'") < page.index("<figure id='forest'>") < page.index("id='verdicts'")
    assert "figure img{width:100%" in page  # figures take the page's width


def test_callback_writes_report_and_never_raises(sweep3, tmp_path, capsys):
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep3)}}, "report": {"min_seeds": 2}})
    ReportCallback().on_multirun_end(cfg)
    out = capsys.readouterr().out
    assert f"Report: {sweep3 / 'report' / 'index.html'}" in out and "Runs: 9 job dir(s)" in out
    assert (sweep3 / "report" / "index.html").is_file()
    ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}}))
    assert "Report:" not in capsys.readouterr().out


def test_chromium_renders_the_report(sweep3, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run installs it)")
    page = report.make_report([sweep3])
    shot = tmp_path / "shot.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,2000", page.resolve().as_uri()]
    log = tmp_path / "chromium.log"
    with open(log, "wb") as f:  # a file, not a pipe: chromium's helpers may keep a pipe open after it exits
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=90)
    assert shot.is_file(), f"chromium wrote no screenshot: {log.read_text()[-500:]}"
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    non_white = (img.min(axis=2) < 0.9).mean()
    assert non_white > 0.03, f"screenshot is blank ({non_white:.1%} non-white)"
    rgb = (img * 255).astype(np.uint32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert colours.size > 50, f"only {colours.size} colours: no text, tables or plots"


# ----------------------------------------------------------------------------- best vs worst arm panels
PANEL_FILES = ["best_confusion.csv", "best_confusion.png", "best_gradcam.png",
               "worst_confusion.csv", "worst_confusion.png", "worst_gradcam.png"]


def _panel_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(("best_", "worst_")))


def test_best_and_worst_arm_and_their_representative_runs(tmp_path):
    sweep = rundirs.sweep(tmp_path / "s", {"a": [0.80, 0.84, 0.82], "b": [0.70, 0.72, 0.71], "c": [0.90, 0.91]})
    for seed in range(2):  # an arm whose every run failed is not ranked, so it is never "the worst"
        rundirs.write_run(sweep, ["scheduler=d", f"trainer.seed={seed}"], [0.1], status="failed", error="boom")
    rundirs.write_run(sweep, ["scheduler=a", "trainer.seed=3"], [0.81, 0.82], epochs_planned=5, status="running")
    for run in sweep.glob("scheduler=*"):
        (run / "model.pt").write_bytes(b"")
    rep = report.build([sweep], plots=False)
    ranked = report.ranked_arms(rep)
    assert [(a, n) for a, _, n in ranked] == [(("c",), 2), (("a",), 3), (("b",), 3)]
    assert ranked[0][1] == pytest.approx(0.905)
    # The counted seed closest to the arm's mean (0.82): seed 2; the incomplete seed 3 never stands for it.
    rep_run = report.representative_run(rep.arms[("a",)])
    assert rep_run.seed == 2
    (rep_run.path / "model.pt").unlink()  # then among the seeds with model.pt; a tie goes to the lower seed
    assert report.representative_run(rep.arms[("a",)]).seed == 0
    for run in sweep.glob("scheduler=a,*"):
        (run / "model.pt").unlink(missing_ok=True)
    assert report.representative_run(rep.arms[("a",)]) is None
    assert report.representative_run(rep.arms[("d",)]) is None
    # One arm only: no pair to draw, one line says so.
    one = rundirs.sweep(tmp_path / "one", {"step": [0.8, 0.81]})
    report.make_report([one])
    assert "No panels: needs two arms with finished runs; this report has 1" in (
        one / "report" / "report.md").read_text()


def test_a_preset_narrowed_on_the_command_line_expects_what_was_launched(tmp_path):
    """Old: experiment=homework_structures (params: 9 structures x 3 seeds) narrowed to structure=base,shallow,deep
    trainer.seed=0,1 launched 6 runs; the report multiplied both lists: "6 found of 162 expected", "2 / 3"."""
    sweep = tmp_path / "s"
    rundirs.write_multirun(sweep, ["experiment=homework_structures", "structure=base,shallow,deep",
                                   "trainer.seed=0,1"],
                           params={"structure": "base,shallow,deep,wide,narrow,no_bn,no_pool,k5,dropout",
                                   "trainer.seed": "0,1,2", "optimizer.lr": "0.001"})
    for lvl in ("base", "shallow", "deep"):
        for seed in (0, 1):
            rundirs.write_run(sweep, [f"structure={lvl}", f"trainer.seed={seed}"], rundirs.curve(0.8))
    rep = report.build([sweep], plots=False)
    assert "- Runs: 6 found of 6 expected" in report.markdown(rep)
    df = {t: d for t, _, d in rep.tables}["table-factor-structure"]
    assert set(df["results / expected"]) == {"2 / 2"}


def test_a_panel_says_which_mean_its_run_is_closest_to(tmp_path):
    """Old: "Worst arm: ... (mean 65.50 %)" (a diverged seed at chance) over "Drawn from run ... (84.00 %: the
    seed closest to the arm's mean)": the run is the finished seeds' closest, and now the line says so."""
    sweep = rundirs.sweep(tmp_path / "s", {"a": [0.80, 0.84, 0.88], "b": [0.70, 0.71, 0.72]})
    rundirs.write_run(sweep, ["scheduler=a", "trainer.seed=3"], [0.5, 0.6], train_loss=[0.9, float("nan")],
                      test_loss=[0.5, None], status="diverged", error="non-finite training loss in epoch 2")
    for run in sweep.glob("scheduler=*"):
        (run / "model.pt").write_bytes(b"")
    rep = report.build([sweep], plots=False)
    (best, best_mean, _), (worst, worst_mean, n) = report.ranked_arms(rep)
    assert (best, worst, n) == (("b",), ("a",), 4) and worst_mean == pytest.approx((0.80 + 0.84 + 0.88 + 0.1) / 4)
    lines = {}
    for role, arm, mean, k in (("best", best, best_mean, 3), ("worst", worst, worst_mean, n)):
        panel = report.ArmPanel(role, arm, mean, k, report.representative_run(rep.arms[arm]))
        lines[role] = panel_lines(rep, panel)[1]
    assert lines["best"].endswith("final test accuracy 71.00 %: the seed closest to the arm's mean).")
    assert lines["worst"].endswith("final test accuracy 84.00 %: the finished seed closest to the mean of the arm's "
                                   "3 finished seeds, 84.00 %).")


def test_structure_sweep_shows_parameters_multiply_adds_and_the_compute_figure(tmp_path):
    sizes = {"base": (1_149_770, 11_375_616), "no_norm": (1_148_938, 11_375_616), "wide": (4_000_000, 40_000_000)}
    sweep = tmp_path / "sweep"
    rundirs.write_multirun(sweep, ["structure=base,no_norm,wide", "trainer.seed=0,1,2"])
    for i, (lvl, (params, macs)) in enumerate(sizes.items()):
        for seed in range(3):
            rundirs.write_run(sweep, [f"structure={lvl}", f"trainer.seed={seed}"],
                              rundirs.curve(0.8 + 0.01 * i + 0.003 * seed), params=params, mult_adds=macs)
    rep = report.build([sweep])
    df = _table(rep, "table-factor-structure").set_index("structure")
    assert df.loc["base", "params"] == "1,149,770" and df.loc["no_norm", "params"] == "1,148,938"
    assert df.loc["no_norm", "M mult-adds / image"] == "11.4" and df.loc["wide", "M mult-adds / image"] == "40"
    assert "accuracy_vs_compute.png" in [name for name, _, _ in rep.figures]
    report.write(rep, sweep / "report")
    rows = pd.read_csv(sweep / "report" / "summary.csv")
    assert sorted(set(rows["mult_adds"])) == [11_375_616, 40_000_000]
    assert "M mult-adds / image" in (sweep / "report" / "report.md").read_text()
    # Arms of one size (a scheduler sweep) get no compute figure; pooled tables show the range they span.
    same = rundirs.sweep(tmp_path / "same", FINALS)
    assert "accuracy_vs_compute.png" not in [name for name, _, _ in report.build([same]).figures]
    grid = tmp_path / "grid"
    rundirs.write_multirun(grid, ["model=a,b", "scheduler=x,y"])
    for m, (params, macs) in (("a", (10, 2_000_000)), ("b", (20, 3_000_000))):
        for sch in ("x", "y"):
            rundirs.write_run(grid, [f"model={m}", f"scheduler={sch}"], params=params, mult_adds=macs)
    pooled = _table(report.build([grid], plots=False), "table-factor-scheduler").set_index("scheduler")
    assert pooled.loc["x", "params"] == "10–20" and pooled.loc["x", "M mult-adds / image"] == "2–3"


def test_report_stays_import_light():
    code = ("import sys, ablate.report; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'scipy', 'ablate.inspect') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    """A real two-arm sweep (lenet vs simple_cnn, three batches of one epoch each), report written at its end."""
    tmp = tmp_path_factory.mktemp("panels")
    sweep = tmp / "sweep"
    r = run_cli(["-m", "model=lenet,simple_cnn", "trainer.epochs=1", "trainer.batch_size=32",
                 "trainer.limit_batches=3", "trainer.eval_batch_size=500", "trainer.device=cpu", "augment=none",
                 f"hydra.sweep.dir={sweep}"], cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Report: " in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    return sweep


@pytest.mark.slow
def test_report_shows_best_and_worst_arm_side_by_side(real_sweep):
    out = real_sweep / "report"
    assert _panel_files(out) == PANEL_FILES
    assert not list(out.glob(".arm-panels-*"))  # drawn in a temporary folder, renamed in, folder gone
    rep = report.build([real_sweep], plots=False)
    ranked = report.ranked_arms(rep)
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
    for role, (arm, _, _) in zip(("best", "worst"), ranked):
        cm = pd.read_csv(out / f"{role}_confusion.csv", index_col=0)
        assert cm.shape == (10, 10) and int(cm.to_numpy().sum()) == 1000  # the whole embedded test set
        run = report.representative_run(rep.arms[arm])
        # the trainer evaluated the same 1000 images: the matrix's accuracy is the run's (one image of slack)
        assert np.trace(cm.to_numpy()) / 1000 == pytest.approx(run.final_test_acc, abs=1.5e-3)
    page = (out / "index.html").read_text()
    assert "<h2 id='arm-panels'>Best vs worst arm: what they look at</h2>" in page
    assert page.index("id='panel-best'") < page.index("id='panel-worst'") < page.index("id='runs'")
    p = _Refs()
    p.feed(page)
    # 6 figures (lenet and simple_cnn differ in size: accuracy against compute too; no forest: 1 seed) and 4 panels
    assert len(p.imgs) == 6 + 4 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    for name in ("best_confusion.png", "best_gradcam.png", "worst_confusion.png", "worst_gradcam.png"):
        assert base64.b64encode((out / name).read_bytes()).decode() in page
    assert p.tables == ["table-factor-model", "table-flags", "table-runs"]
    md = (out / "report.md").read_text()
    assert "## Best vs worst arm: what they look at" in md
    assert f"**Best arm: model={ranked[0][0][0]} (mean test accuracy" in md
    for name in PANEL_FILES:
        assert f"]({name})" in md


@pytest.mark.slow
def test_panels_are_skipped_with_one_line_never_a_traceback(real_sweep, tmp_path):
    sweep = tmp_path / "s"
    shutil.copytree(real_sweep, sweep)  # report/ with both arms' panels included
    out = sweep / "report"
    # Turned off: no section, and the earlier report's panels are gone.
    assert report_main([str(sweep), "--no-arm-panels"]) == 0
    assert _panel_files(out) == [] and "Best vs worst" not in (out / "index.html").read_text()
    # The best arm's model.pt deleted: its panel is left out with one line; the worst arm is still drawn.
    rep = report.build([sweep], plots=False)
    (best, _, _), (worst, _, _) = report.ranked_arms(rep)
    best_run, worst_run = (report.representative_run(rep.arms[a]) for a in (best, worst))
    (best_run.path / "model.pt").unlink()
    page = report.make_report([sweep]).read_text()
    assert _panel_files(out) == [f for f in PANEL_FILES if f.startswith("worst_")]
    line = "No panel: none of its finished runs has a model.pt to reload."
    assert line in page and line in (out / "report.md").read_text()
    assert "Traceback" not in page and page.count("<img") == 6 + 2
    # The worst arm's data set is not on this machine: one line naming it; nothing is downloaded.
    cfg_path = worst_run.path / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["dataset"].update(name="mnist", source="mnist")
    cfg["data"] = {"root": str(tmp_path / "no-data"), "download": True}
    cfg_path.write_text(yaml.safe_dump(cfg))
    page = report.make_report([sweep]).read_text()
    assert _panel_files(out) == [] and page.count("<img") == 6
    md = (out / "report.md").read_text()
    skip = next(x for x in md.splitlines() if x.startswith("- **Worst arm:"))
    assert "No panel: its data set is not available on this machine: mnist: not found in" in skip
    assert not (tmp_path / "no-data").exists()
