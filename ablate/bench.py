"""``python -m ablate.bench``: training speed, measured on real runs of the real trainer.

Three measurements, each printed as a table (and written as CSV with ``--out``):

- default: the same model on the same data trained in this one process with
  each pipeline: ``resident`` eager, ``resident`` with ``trainer.cuda_graph``
  (CUDA only; the default there) and ``dataloader`` (torchvision transforms in worker processes,
  the tutorials' batch size); images/s and the ratio to the DataLoader path.
- ``--concurrent 1,2,4,8``: K training processes started together on one
  device (eager; ``--cuda-graph-concurrent`` for graphed); their summed images/s (each process's median over its steady epochs).
- ``--grid``: a whole sweep through ``python -m ablate.run -m`` and the joblib
  launcher, with the trainer's defaults, timed end to end from the command's start to its exit (process
  start-up, data loading, evaluation, checkpoints and the report included), and where its runs' time
  went (the phases each ``summary.json`` records, summed over runs). ``--launcher packed`` sweeps the
  same grid with the packed launcher (runs of one architecture trained as one batched model) and
  then with the default, side by side.

Images/s counts training images only (the trainer's own ``images_per_second``,
the time of the training loop, with the device synchronised at the epoch's
end); the first epoch (cuDNN autotuning, graph capture, worker start-up) is
left out of the median when there are later ones. ``--smoke`` runs everything
at CPU-friendly sizes so CI can exercise it; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import rundir
from .compose import compose
from .config import ConfigError
from .identity import is_identity_key
from .phases import PHASES

GRID = ("scheduler=step,cosine,plateau", "model=lenet,simple_cnn,cnn3", "trainer.seed=0,1,2")
SMOKE = dict(dataset="fashion_mnist_mini", model="lenet", epochs=2, limit_batches=8, loader_batch_size=64,
             workers=0, concurrent="1,2", grid=("scheduler=step", "trainer.pipeline=resident,dataloader"),
             grid_epochs=1, jobs=2)


def train_once(overrides: Sequence[str], workdir: Path) -> dict[str, Any]:
    """Train one run into ``workdir`` and return its speed and result."""
    from .rundir import EPOCHS_CSV, STEPS_CSV
    from .train import fit, release

    workdir.mkdir(parents=True, exist_ok=True)
    cfg = compose(overrides)
    t0 = time.perf_counter()
    try:
        summary = fit(cfg, workdir)
    finally:
        release()
    wall = time.perf_counter() - t0
    if summary["status"] != "completed":
        raise RuntimeError(f"benchmark run {' '.join(overrides)} {summary['status']}: {summary.get('error')}")
    epochs = pd.read_csv(workdir / EPOCHS_CSV)
    steady = epochs["images_per_second"].iloc[1:] if len(epochs) > 1 else epochs["images_per_second"]
    images = len(pd.read_csv(workdir / STEPS_CSV)) * int(cfg.trainer.batch_size)  # every step is a full batch
    return dict(images_per_second=float(steady.median()), first_epoch_ips=float(epochs["images_per_second"].iloc[0]),
                images=images,
                test_acc=summary["final_test_acc"], epochs=len(epochs), wall_seconds=wall, device=summary["device"])


def _common(a: argparse.Namespace) -> list[str]:
    o = [f"dataset={a.dataset}", f"model={a.model}", f"trainer.epochs={a.epochs}", f"trainer.device={a.device}",
         "trainer.checkpoint_every=0", "trainer.log_every=100000"]
    if a.limit_batches:
        o.append(f"trainer.limit_batches={a.limit_batches}")
    return o + list(a.overrides)


def pipelines(a: argparse.Namespace, work: Path) -> pd.DataFrame:
    """Each pipeline in turn, in this process, on the same model and data."""
    import torch

    cuda = a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available())
    variants = [("resident", [f"trainer.batch_size={a.batch_size}", "trainer.pipeline=resident",
                              "trainer.cuda_graph=false"])]
    if cuda and a.cuda_graph:
        variants.append(("resident+cuda_graph", [f"trainer.batch_size={a.batch_size}", "trainer.pipeline=resident",
                                                 "trainer.cuda_graph=true"]))
    variants.append(("dataloader", [f"trainer.batch_size={a.loader_batch_size}", "trainer.pipeline=dataloader",
                                    "trainer.cuda_graph=false",
                                    f"trainer.num_workers={a.workers}"]))
    rows = []
    for name, extra in variants:
        print(f"bench: {name} ...", flush=True)
        r = train_once(_common(a) + extra, work / name)
        rows.append(dict(pipeline=name, batch_size=int(extra[0].split("=")[1]), **r))
        print(f"bench: {name}: {r['images_per_second']:,.0f} images/s, test acc {100 * r['test_acc']:.2f}%", flush=True)
    df = pd.DataFrame(rows)
    base = df.loc[df.pipeline == "dataloader", "images_per_second"].iloc[0]
    df["vs_dataloader"] = df["images_per_second"] / base
    return df


def _worker(args: list[str]) -> int:
    """One of K concurrent processes: set up, wait for the go signal, train, print the result as JSON."""
    work, ready, go, *overrides = args
    compose(overrides)  # imports and config composition before the barrier
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    r = train_once(overrides, Path(work))
    r["finished_at"] = time.time()
    print("BENCH_RESULT " + json.dumps(r), flush=True)
    return 0


def concurrent(a: argparse.Namespace, work: Path) -> pd.DataFrame:
    """K processes at once, released together. Two aggregates: the sum of each process's steady
    images/s (optimistic when runs are short: their steady epochs may not overlap), and every
    training image of every process over the wall time from the release to the last exit
    (conservative: CUDA start-up, warm-up, evaluation and checkpoints count as idle time)."""
    overrides = _common(a) + [f"trainer.batch_size={a.batch_size}"]
    overrides.append(f"trainer.cuda_graph={'true' if a.cuda_graph_concurrent else 'false'}")
    rows = []
    for k in [int(s) for s in str(a.concurrent).split(",")]:
        d = work / f"concurrent-{k}"
        d.mkdir(parents=True)
        go = d / "go"
        procs = [subprocess.Popen([sys.executable, "-m", "ablate.bench", "--_worker", str(d / f"run{i}"),
                                   str(d / f"ready{i}"), str(go), *overrides],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(k)]
        while not all((d / f"ready{i}").exists() for i in range(k)):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        go.touch()
        released = time.time()
        results = []
        for p in procs:
            out, err = p.communicate()
            line = [ln for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")]
            if p.returncode or not line:
                raise RuntimeError(f"concurrent worker failed (exit {p.returncode}): {err.strip().splitlines()[-1:]}")
            results.append(json.loads(line[-1].split(" ", 1)[1]))
        ips = [r["images_per_second"] for r in results]
        wall = max(r["finished_at"] for r in results) - released
        rows.append(dict(processes=k, aggregate_images_per_second=sum(ips), per_process=statistics.mean(ips),
                         wall_images_per_second=sum(r["images"] for r in results) / wall,
                         min_test_acc=min(r["test_acc"] for r in results)))
        print(f"bench: K={k}: {sum(ips):,.0f} images/s together", flush=True)
    df = pd.DataFrame(rows)
    df["speedup_vs_1"] = df["aggregate_images_per_second"] / df["aggregate_images_per_second"].iloc[0]
    return df


def grid(a: argparse.Namespace, work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The grid swept end to end by each launcher in turn (``--launcher packed``: packed, then the baseline,
    joblib with ``--jobs`` or basic with one), into one sweep directory each; the table of sweeps (with the
    baseline's wall time over each one's) and where their runs' time went (:mod:`ablate.phases`, summed
    over runs)."""
    baseline = "joblib" if a.jobs > 1 else "basic"
    launchers = ["packed", baseline] if a.launcher == "packed" else [a.launcher or baseline]
    root = a.sweep_dir or work / "grid"
    rows, spent = [], {}
    for launcher in launchers:
        row, spent[launcher] = _grid_once(a, root / launcher if len(launchers) > 1 else root, launcher)
        rows.append(row)
    df = pd.DataFrame(rows)
    df[f"vs_{launchers[-1]}"] = df["wall_seconds"].iloc[-1] / df["wall_seconds"]
    phase_rows = []
    for ph in PHASES:
        r: dict[str, Any] = {"phase": ph}
        for launcher, sec in spent.items():
            total = sum(sec.values()) or 1.0
            r[f"{launcher}_seconds"], r[f"{launcher}_share"] = sec[ph], sec[ph] / total
        phase_rows.append(r)
    return df, pd.DataFrame(phase_rows)


def _time_report(sweeps: list[Path], sweep: Path) -> float:
    """Seconds to build the grid's report again from its run directories, figures and arm panels included
    (the sweep's own report is inside its wall time; this one is timed alone)."""
    import tempfile

    from .report import make_report

    with tempfile.TemporaryDirectory(dir=sweep) as out:
        t0 = time.perf_counter()
        make_report(sweeps, Path(out) / "report")
        return time.perf_counter() - t0


def _grid_once(a: argparse.Namespace, sweep: Path, launcher: str) -> tuple[dict[str, Any], dict[str, float]]:
    """One launcher's sweep of the grid, timed from outside. Axes over how runs execute
    (``trainer.cuda_graph=false,true``: not part of a run's identity, so one sweep cannot hold both) run as one
    sweep per value, in sub-directories, merged into one report."""
    same = [ax for ax in a.grid_axes if is_identity_key(ax.split("=", 1)[0])]
    apart = [[f"{ax.split('=', 1)[0]}={v}" for v in ax.split("=", 1)[1].split(",")]
             for ax in a.grid_axes if not is_identity_key(ax.split("=", 1)[0])]
    fixed = [f"dataset={a.dataset}", f"trainer.epochs={a.grid_epochs}", f"trainer.batch_size={a.batch_size}",
             f"trainer.device={a.device}", *a.overrides]
    if a.limit_batches:
        fixed.append(f"trainer.limit_batches={a.limit_batches}")
    processes = a.jobs if launcher == "joblib" else 1
    fixed += {"joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={a.jobs}"],
              "packed": ["hydra/launcher=packed", f"hydra.launcher.step={a.packed_step}"], "basic": []}[launcher]
    sweeps = []
    t0 = time.perf_counter()
    for combo in itertools.product(*apart):
        d = sweep / ",".join(combo) if combo else sweep
        cmd = [sys.executable, "-m", "ablate.run", "-m", *same, *combo, *fixed, f"hydra.sweep.dir='{d}'"]
        print("bench: grid: " + " ".join(cmd[1:]), flush=True)
        started = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        index = d / rundir.REPORT_DIR / "index.html"
        if p.returncode == 1 and index.is_file() and index.stat().st_mtime >= started:
            print(f"bench: grid: {p.stderr.strip().splitlines()[-1]}", flush=True)  # runs failed: the row counts them
        elif p.returncode:
            raise RuntimeError(f"grid sweep exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
        sweeps.append(d)
    if len(sweeps) > 1:
        from .report import make_report

        make_report(sweeps, sweep / "report")
    wall = time.perf_counter() - t0
    report_seconds = _time_report(sweeps, sweep)
    runs = [r for d in sweeps for r in rundir.find_runs(d)]
    summaries = [s for r in runs if (s := rundir.read_summary(r)) is not None]
    done = [s for s in summaries if s.get("status") == "completed"]
    images = sum(len(rundir.read_rows(r / rundir.STEPS_CSV)) for r in runs) * a.batch_size  # full batches
    spent = {ph: sum(float((s.get("phases") or {}).get(ph, 0.0)) for s in summaries) for ph in PHASES}
    n = 1
    for axis in a.grid_axes:
        n *= len(axis.split("=", 1)[1].split(","))
    if launcher == "packed":  # the step its runs recorded (hydra.launcher.step=auto chooses per device)
        launcher = f"packed ({'/'.join(sorted({s.get('step_mode') for s in summaries} - {None}))})"
    row = dict(launcher=launcher, runs=n, completed=len(done), processes=processes, epochs=a.grid_epochs,
               wall_seconds=wall, seconds_per_run=wall / n, images=images, images_per_second=images / wall,
               # while training: the runs' training seconds, spread over the processes that train at once
               training_images_per_second=images / (spent["train"] / processes) if spent["train"] else None,
               report=(sweep / "report" / "index.html").is_file(), report_seconds=report_seconds,
               mean_test_acc=statistics.mean(s["final_test_acc"] for s in done) if done else None)
    return row, spent


def parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ablate.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. augment=tutorial")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="cnn3")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=512, help="resident pipeline, concurrent runs and the grid")
    ap.add_argument("--loader-batch-size", type=int, default=64, help="dataloader pipeline (the tutorials' 64)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    ap.add_argument("--epochs", type=int, default=3, help="per run; the first is left out of the median")
    ap.add_argument("--limit-batches", type=int, default=None)
    ap.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", help="skip the cuda_graph row")
    ap.add_argument("--no-pipelines", dest="pipelines", action="store_false", help="skip the side-by-side table")
    ap.add_argument("--concurrent", default=None, metavar="K[,K...]", help="aggregate images/s of K processes")
    ap.add_argument("--cuda-graph-concurrent", action="store_true", help="concurrent runs use trainer.cuda_graph")
    ap.add_argument("--grid", action="store_true", help="time a whole sweep end to end")
    ap.add_argument("--grid-axes", nargs="+", default=list(GRID), metavar="KEY=A,B")
    ap.add_argument("--grid-epochs", type=int, default=15)
    ap.add_argument("--sweep-dir", type=Path, default=None, help="keep the --grid sweep (and its report) here")
    ap.add_argument("--jobs", type=int, default=4, help="joblib processes for --grid (1: the basic launcher)")
    ap.add_argument("--launcher", choices=("packed", "joblib", "basic"), default=None,
                    help="--grid's launcher (default: joblib, or basic with --jobs 1); packed: packed groups, "
                         "then the default on the same grid, side by side")
    ap.add_argument("--packed-step", choices=("auto", "batched", "interleaved"), default="auto",
                    help="the packed launcher's hydra.launcher.step (auto: batched on CUDA, interleaved on CPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI on CPU); the numbers mean nothing")
    ap.add_argument("--out", type=Path, default=None, help="write each table as CSV into this directory")
    a = ap.parse_args(argv)
    if a.smoke:
        a.dataset, a.model, a.epochs, a.limit_batches = SMOKE["dataset"], SMOKE["model"], SMOKE["epochs"], SMOKE["limit_batches"]
        a.workers, a.grid_epochs, a.jobs = SMOKE["workers"], SMOKE["grid_epochs"], SMOKE["jobs"]
        a.concurrent = a.concurrent or SMOKE["concurrent"]
        a.grid, a.grid_axes = True, list(SMOKE["grid"])
        a.batch_size = min(a.batch_size, 128)
    a.grid = a.grid or a.launcher is not None
    for key in ("batch_size", "loader_batch_size", "epochs", "grid_epochs", "jobs"):
        if getattr(a, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(a, key)}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        return _worker(argv[1:])
    a = parse(argv)
    load = os.getloadavg()  # the machine's other work, said beside the numbers
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    tables: dict[str, pd.DataFrame] = {}
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .data import DataError

    try:
        with tempfile.TemporaryDirectory(prefix="ablate-bench-") as tmp:
            work = Path(tmp)
            if a.pipelines:
                tables["pipelines"] = pipelines(a, work)
            if a.concurrent:
                tables["concurrent"] = concurrent(a, work)
            if a.grid:
                tables["grid"], tables["phases"] = grid(a, work)
    except (ConfigError, DataError, RuntimeError) as e:
        sys.exit(f"ablate.bench: {e}")
    except (HydraException, OmegaConfBaseException) as e:  # an unknown option or key: Hydra's first sentence
        sys.exit(f"ablate.bench: {' '.join(str(e).split('Config search path')[0].split()) or type(e).__name__}")
    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu" else "cpu"
    what = f"model={a.model} " if a.pipelines or a.concurrent else ""  # the grid's model is its axes'
    print(f"\nablate.bench on {dev} (torch {torch.__version__}), {what}dataset={a.dataset}"
          f"{' (smoke sizes)' if a.smoke else ''}; {os.cpu_count()} CPU cores, load average "
          f"{load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    with pd.option_context("display.width", 160, "display.float_format", "{:,.2f}".format):
        for name, df in tables.items():
            print(f"\n{name}:\n{df.to_string(index=False)}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        for name, df in tables.items():
            df.to_csv(a.out / f"{name}.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
