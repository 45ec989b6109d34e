"""The sweep report on synthetic run directories with known numbers (tests/rundirs.py)."""

from __future__ import annotations

import base64
import csv
import math
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

import rundirs
from ablate import report, runlock, stats
from ablate.callbacks import ReportCallback
from ablate.config import ConfigError, ReportConf
from ablate.report.cli import main as report_main
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
        assert df.loc[lvl, "finished / expected"] == "3 / 3"
    assert list(df.index) == ["cosine", "plateau", "step"]  # by mean
    rows = _rows(sweep3 / "report" / "summary.csv")
    assert len(rows) == 9
    assert {"scheduler", "seed", "status", "params", "final_test_acc", "best_test_acc", "best_epoch",
            "final_train_acc", "gap_final", "gap_best", "seconds", "images_per_second"} <= set(rows[0])
    assert "trainer.seed" not in rows[0]  # the seed is its own column, not an arm factor
    r = next(r for r in rows if r["scheduler"] == "step" and r["seed"] == "1")
    assert float(r["final_test_acc"]) == pytest.approx(0.82)
    assert float(r["best_test_acc"]) == pytest.approx(0.825) and r["best_epoch"] == "4"
    assert float(r["gap_final"]) == pytest.approx(0.02) and float(r["seconds"]) == pytest.approx(10.0)
    md = (sweep3 / "report" / "report.md").read_text()
    assert "| cosine | 1 | 83.83 ± 0.76 | 3 / 3 |" in md


def test_paired_difference_and_interval_match_a_direct_computation(sweep3):
    rep = report.build([sweep3], plots=False)
    c = report.compare_levels(rep, "scheduler", "cosine", "step")
    d = np.array(FINALS["cosine"]) - np.array(FINALS["step"])  # paired by seed
    rng = np.random.default_rng(rep.conf.seed)
    boots = d[rng.integers(0, 3, size=(rep.conf.bootstrap, 3))].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    assert c.paired and c.n_a == 3
    assert c.diff == pytest.approx(d.mean()) and c.lo == pytest.approx(lo) and c.hi == pytest.approx(hi)
    assert c.p_beats == 1.0
    verdict = next(lines for k, lines in rep.verdicts if k == "scheduler")
    assert verdict[1] == (f"cosine beats step by {100 * d.mean():+.2f} points (95% CI {100 * lo:+.2f} to "
                          f"{100 * hi:+.2f}, 3 seeds, paired); P(cosine > step on a fresh seed) = 1.00")


def test_bootstrap_analytic_cases():
    # A constant paired difference has a zero-width interval at that difference.
    assert stats.bootstrap_diff([3, 5, 9], [2, 4, 8], paired=True) == (1.0, 1.0, 1.0)
    # Many seeds: the percentile interval approaches mean ± 1.96 s / sqrt(n).
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.02, 400), rng.normal(0.79, 0.02, 400)
    diff, lo, hi = stats.bootstrap_diff(a, b, paired=False, n_boot=4000)
    half = 1.96 * math.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 400)
    assert diff == pytest.approx(0.01 + (a.mean() - 0.8) - (b.mean() - 0.79))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1) and (lo + hi) / 2 == pytest.approx(diff, abs=half / 5)
    # Too few values: no interval rather than a zero-width one.
    assert math.isnan(stats.bootstrap_diff([1.0], [0.5], paired=False)[1])
    # P(a beats b): paired = share of seeds won (ties half); unpaired = Mann-Whitney AUC.
    assert stats.prob_beats([1, 2, 3], [0, 2, 4], paired=True) == pytest.approx(0.5)
    assert stats.prob_beats([1, 3], [2], paired=False) == pytest.approx(0.5)
    assert stats.prob_beats([3, 4], [1, 2, 3], paired=False) == pytest.approx((5 + 0.5) / 6)


def test_unpaired_when_seeds_differ(tmp_path):
    sweep = tmp_path / "s"
    for seed, acc in enumerate([0.80, 0.82, 0.81]):
        rundirs.write_run(sweep, ["scheduler=step", f"trainer.seed={seed}"], rundirs.curve(acc))
    for seed, acc in zip([10, 11], [0.9, 0.88]):
        rundirs.write_run(sweep, ["scheduler=cosine", f"trainer.seed={seed}"], rundirs.curve(acc))
    rep = report.build([sweep], plots=False)
    c = report.compare_levels(rep, "scheduler", "cosine", "step")
    assert not c.paired and (c.n_a, c.n_b) == (2, 3)
    a, b = np.array([0.9, 0.88]), np.array([0.80, 0.82, 0.81])
    rng = np.random.default_rng(0)
    boots = (a[rng.integers(0, 2, size=(rep.conf.bootstrap, 2))].mean(1)
             - b[rng.integers(0, 3, size=(rep.conf.bootstrap, 3))].mean(1))
    assert (c.lo, c.hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    assert "2 vs 3 seeds, unpaired" in rep.verdicts[0][1][0]
    assert any("cosine has 2 finished seeds, fewer than min_seeds=3" in w for w in rep.warnings)


def test_ties_are_marked_and_inconclusive_said(tmp_path):
    assert stats.tie_ranks([0.9, 0.89, 0.7], [0.02, 0.02, 0.01]) == ["=1", "=1", "3"]
    assert stats.tie_ranks([0.9, 0.8, float("nan")], [0.01, 0.01, float("nan")]) == ["1", "2", "-"]
    sweep = rundirs.sweep(tmp_path / "s", {"a": [0.80, 0.84, 0.82], "b": [0.83, 0.79, 0.81],
                                           "c": [0.60, 0.61, 0.62]})
    rep = report.build([sweep], plots=False)
    df = _table(rep, "table-factor-scheduler").set_index("scheduler")
    assert df["rank"].to_dict() == {"a": "=1", "b": "=1", "c": "3"}
    lines = rep.verdicts[0][1]
    assert lines[0].startswith("a vs b: inconclusive, +1.00 points (95% CI") and "crosses zero" in lines[0]
    assert lines[1].startswith("a beats c by +21.00 points")


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
    # Excluded from means: model=b has no mean; flagged-but-valid runs (model=c) are kept in.
    df = _table(rep, "table-factor-model").set_index("model")
    assert df.loc["b", "test acc % (mean ± std)"] == "-" and df.loc["b", "finished / expected"] == "0 / 3"
    assert df.loc["b", "rank"] == "-" and df.loc["b", "flagged runs"] == 3
    c = [0.7, 0.71]
    assert df.loc["c", "test acc % (mean ± std)"] == f"{100 * np.mean(c):.2f} ± {100 * np.std(c, ddof=1):.2f}"
    md = report.markdown(rep)
    assert "Flags: 1 failed, 1 diverged, 1 incomplete, 1 still improving, 1 overfitting." in md
    assert "| model=b,trainer.seed=0 | failed | failed | RuntimeError: CUDA out of memory | no |" in md
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
    assert df["finished / expected"].to_dict() == {"cosine": "2 / 3", "step": "3 / 3", "plateau": "0 / 3"}
    assert rep.n_expected == 9
    assert "Runs: 8 found of 9 expected, 5 counted in the means" in (out.parent / "report.md").read_text()


def test_merge_two_sweeps_and_cli(tmp_path, capsys):
    a = rundirs.sweep(tmp_path / "a", {"step": [0.80, 0.82, 0.81], "cosine": [0.83, 0.84, 0.845]})
    b = rundirs.sweep(tmp_path / "b", {"plateau": [0.805, 0.83, 0.80], "cosine": [0.85]})
    assert report_main([str(a), str(b)]) == 2
    assert "--out" in capsys.readouterr().err
    assert report_main([str(a), str(b), "--out", str(tmp_path / "merged"), "--bootstrap", "500"]) == 0
    assert "Report: " + str(tmp_path / "merged" / "index.html") in capsys.readouterr().out
    rows = _rows(tmp_path / "merged" / "summary.csv")
    assert len(rows) == 10 and {r["sweep"] for r in rows} == {str(a), str(b)}
    rep = report.build([a, b], plots=False)
    assert rep.conf.bootstrap == 2000  # the runs' recorded report config (rundirs writes 2000)
    assert sorted(rep.arms) == [("cosine",), ("plateau",), ("step",)]
    cos = sorted(r.final_test_acc for r in rep.arms[("cosine",)])
    assert cos == pytest.approx([0.83, 0.84, 0.845, 0.85])
    # The duplicated (cosine, seed 0) unit is averaged before pairing with step's seed 0.
    vals = report.factor_values(rep, "scheduler")["cosine"]
    assert vals[(0,)] == pytest.approx((0.83 + 0.85) / 2)
    df = _table(rep, "table-factor-scheduler").set_index("scheduler")
    assert df.loc["cosine", "finished / expected"] == "4 / 6"  # b planned seeds 0-2 for cosine too
    assert df.loc["cosine", "test acc % (mean ± std)"] == f"{100 * np.mean(cos):.2f} ± {100 * np.std(cos, ddof=1):.2f}"


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
    c = report.compare_levels(rep, "scheduler", "cosine", "step")
    assert c.paired and c.n_a == 6 and c.diff == pytest.approx(0.02) and (c.lo, c.hi) == pytest.approx((0.02, 0.02))
    assert {n for n, _, _ in rep.figures} == {"test_acc.png", "test_loss.png", "train_vs_test.png", "lr.png",
                                              "train_loss.png"}
    # A single run directory is its own sweep.
    one = rundirs.write_run(tmp_path / "single", [], [0.5, 0.6, 0.55])
    assert report.make_report([one]) == one / "report" / "index.html"
    rep1 = report.build([one], plots=False)
    assert rep1.keys == [] and rep1.verdicts == [] and [t for t, _, _ in rep1.tables] == ["table-grid"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ReportError, match=r"^no run directories under .*empty \(looked for summary.json"):
        report.make_report([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="report.confidence"):
        report.make_report([one], confidence=1.5)


def test_report_conf_matches_default_yaml():
    node = yaml.safe_load((ROOT / "conf" / "report" / "default.yaml").read_text())
    node.pop("defaults")
    assert ReportConf(**node) == ReportConf()


def test_hundred_runs_in_a_few_seconds(tmp_path):
    sweep = tmp_path / "optuna"
    rng = np.random.default_rng(0)
    for i, lr in enumerate(np.exp(rng.uniform(-9, -2, 100))):
        rundirs.write_run(sweep, [f"optimizer.lr={lr:.6g}"], rundirs.curve(0.7 + 0.1 * rng.random(), 10),
                          steps_per_epoch=20)
    t0 = time.perf_counter()
    rep = report.build([sweep])
    report.write(rep, tmp_path / "out")
    assert time.perf_counter() - t0 < 8.0
    assert rep.keys == ["optimizer.lr"] and len(rep.arms) == 100
    df = _table(rep, "table-factor-optimizer-lr")
    assert len(df) == 100 and df["test acc % (mean ± std)"].str.endswith("(1 seed)").all()
    assert "100 of 100 arms have fewer than 3 finished seeds" in rep.warnings[0]


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
    assert len(p.imgs) == 5 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    assert not [r for r in p.refs if r.lower().startswith(("http:", "https:", "//"))]
    assert "http://" not in page and "https://" not in page
    assert p.tables == ["table-factor-scheduler", "table-flags", "table-runs"]
    assert "cosine beats step by" in page and "Flags: 1 failed" in page


def test_callback_writes_report_and_never_raises(sweep3, tmp_path, capsys):
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep3)}}, "report": {"bootstrap": 300}})
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


@pytest.mark.parametrize("n,confidence", [(3, 0.95), (5, 0.9)])
def test_t_interval_covers_the_mean_at_its_stated_rate(n, confidence):
    """Seeds as draws of normal noise around a true accuracy: the interval covers it at its stated rate."""
    rng = np.random.default_rng(0)
    trials = 4000
    hits = 0
    for _ in range(trials):
        m, lo, hi = report.analysis.t_interval(rng.normal(0.9, 0.01, n), confidence)
        hits += lo <= 0.9 <= hi
    assert abs(hits / trials - confidence) < 4.5 * math.sqrt(confidence * (1 - confidence) / trials)
    m, lo, hi = report.analysis.t_interval([0.80, 0.82, 0.84], 0.95)  # s = 0.02, t(2) = 4.303
    assert (m, hi - m, m - lo) == pytest.approx((0.82, 4.3027 * 0.02 / math.sqrt(3), 4.3027 * 0.02 / math.sqrt(3)),
                                                rel=1e-4)
    assert math.isnan(report.analysis.t_interval([0.8], 0.95)[1])  # one seed: no spread to size it from
    assert math.isnan(report.analysis.t_interval([0.8, 0.8], 0.95)[1])


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
            "print(sorted(m for m in ('torch', 'matplotlib', 'ablate.inspect') if m in sys.modules))")
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
    # 6 figures (lenet and simple_cnn differ in size: accuracy against compute too) and 4 panels
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
