"""Write synthetic run directories in the trainer's exact on-disk format, with known numbers.

A sweep directory is ``multirun.yaml`` plus one directory per job named from its
overrides (``scheduler=cosine,trainer.seed=1``; ``default`` without overrides),
each with ``.hydra/{config,overrides,hydra}.yaml``, ``epochs.csv``, ``steps.csv``
and ``summary.json`` (see README "Where outputs land"). Runs are written in the
older format (no validation or clean-train columns) unless ``val_acc``,
``train_eval_acc`` or ``selection`` is given; then in the current one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ablate import rundir, runlock

# The epochs.csv columns of a trainer with a validation split and a clean pass over the training split.
NEW_EPOCH_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                     "train_eval_loss", "train_eval_acc", "epoch_seconds", "images_per_second"]
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when there: simulations write thousands of runs
GROUP_DEFAULTS = {"dataset": "fashion_mnist_mini", "model": "cnn3", "optimizer": "adam", "scheduler": "cosine",
                  "augment": "flip_crop", "regularization": "none", "trainer": "default", "report": "default"}


def _set(d: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[last] = value


def _parse(v: str) -> Any:
    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def _floats(v: Sequence[float | None] | None) -> list[float | None] | None:
    """Plain floats (a numpy float would be written as ``np.float64(...)``)."""
    return None if v is None else [None if x is None else float(x) for x in v]


def write_run(sweep: Path, overrides: Sequence[str] = (), test_acc: Sequence[float | None] = (0.5, 0.6, 0.7),
              train_acc: Sequence[float] | None = None, *, epochs_planned: int | None = None,
              status: str = "completed", error: str | None = None, summary: bool = True,
              train_loss: Sequence[float] | None = None, test_loss: Sequence[float | None] | None = None,
              lr: Sequence[float] | None = None, steps_per_epoch: int = 4, params: int = 1234,
              mult_adds: int | None = None,
              epoch_seconds: float = 2.0, images_per_second: float = 1000.0, report: Mapping | None = None,
              name: str | None = None, val_acc: Sequence[float | None] | None = None,
              train_eval_acc: Sequence[float | None] | None = None, selection: str | None = None,
              scheduler_metric: str | None = None, config_hash: str | None = None, hydra: bool = True) -> Path:
    """One run directory under ``sweep``; ``test_acc[i]`` is epoch i+1's test accuracy (None: not evaluated).

    Only ``len(test_acc)`` epochs are written; ``epochs_planned`` (default: that many)
    is what the config asked for, so fewer rows make an incomplete run. ``val_acc`` /
    ``train_eval_acc`` add the validation and clean-train columns (the best epoch is then the
    validation-best); ``config_hash`` defaults to a hash of the overrides, so the same
    overrides in two sweeps are the same configuration. ``hydra=False`` leaves out ``.hydra/`` (the
    summary records the same config, overrides and choices): simulations write thousands of runs."""
    overrides = list(overrides)
    test_acc, train_acc, val_acc, train_eval_acc = map(_floats, (test_acc, train_acc, val_acc, train_eval_acc))
    n = len(test_acc)
    planned = epochs_planned or n
    train_acc = list(train_acc) if train_acc is not None else [min(1.0, (a or 0.5) + 0.02) for a in test_acc]
    train_loss = list(train_loss) if train_loss is not None else [1.0 / (e + 1) for e in range(n)]
    test_loss = list(test_loss) if test_loss is not None else [None if a is None else 1.0 - a for a in test_acc]
    lr = list(lr) if lr is not None else [0.1 * 0.5 ** e for e in range(n)]
    new_format = val_acc is not None or train_eval_acc is not None or selection is not None
    val_acc = val_acc or [None] * n
    train_eval_acc = train_eval_acc or [None] * n
    choices = dict(GROUP_DEFAULTS)
    config: dict[str, Any] = {g: {"name": c} for g, c in choices.items() if g not in ("trainer", "report")}
    config["dataset"].update(source="embedded", classes=None)
    config["optimizer"]["lr"] = 0.001
    config["trainer"] = {"epochs": planned, "seed": 0}
    config["report"] = dict(report or {"overfit_gap": 0.1, "confidence": 0.95, "min_seeds": 3, "smoothing": 0.9})
    config["data"] = {"root": "/tmp/data", "download": False}
    for o in overrides:
        k, v = o.split("=", 1)
        if "." in k:
            _set(config, k, _parse(v))
        else:
            choices[k] = v
            config[k] = {"name": v}
    config["trainer"]["epochs"] = planned
    run = Path(sweep) / (name or ",".join(overrides) or "default")
    run.mkdir(parents=True, exist_ok=True)
    if hydra:
        hyd = run / ".hydra"
        hyd.mkdir(exist_ok=True)
        (hyd / "config.yaml").write_text(yaml.dump(config, Dumper=DUMPER))
        (hyd / "overrides.yaml").write_text(yaml.dump(overrides, Dumper=DUMPER))
        (hyd / "hydra.yaml").write_text(yaml.dump({"hydra": {"runtime": {"choices": choices},
                                                             "overrides": {"task": overrides}}}, Dumper=DUMPER))
    rows, steps = [], []
    for e in range(n):
        rows.append(dict(epoch=e + 1, lr=lr[e], train_loss=train_loss[e], train_acc=train_acc[e],
                         val_loss=None if val_acc[e] is None else 1.0 - val_acc[e], val_acc=val_acc[e],
                         test_loss=test_loss[e], test_acc=test_acc[e],
                         train_eval_loss=None if train_eval_acc[e] is None else 1.0 - train_eval_acc[e],
                         train_eval_acc=train_eval_acc[e], epoch_seconds=epoch_seconds,
                         images_per_second=images_per_second))
        for j in range(steps_per_epoch):
            steps.append(dict(step=e * steps_per_epoch + j + 1, epoch=e + 1, lr=lr[e],
                              loss=train_loss[e] * (1.1 - 0.05 * j)))
    if rows:
        cols = NEW_EPOCH_COLUMNS if new_format else [c for c in rundir.EPOCH_COLUMNS if not c.startswith(
            ("val_", "train_eval_"))]
        rundir.append_rows(run / rundir.EPOCHS_CSV, cols, rows)
    if steps:
        rundir.append_rows(run / rundir.STEPS_CSV, rundir.STEP_COLUMNS, steps)
    if summary:
        evals = [(i + 1, a) for i, a in enumerate(test_acc) if a is not None]
        vals = [(i + 1, a) for i, a in enumerate(val_acc) if a is not None]
        best_epoch, best = max(evals, key=lambda t: t[1]) if evals else (None, None)
        record = {
            "status": status, "error": error, "traceback": f"Traceback ...\n{error}" if error else None,
            "overrides": overrides, "choices": choices, "config": config,
            "config_hash": config_hash or hashlib.sha256(json.dumps(sorted(overrides)).encode()).hexdigest()[:16],
            "params": params, "mult_adds": mult_adds, "epochs_planned": planned, "epochs_done": n,
            "final_test_acc": evals[-1][1] if evals else None, "best_test_acc": best, "best_epoch": best_epoch,
            "final_train_acc": train_acc[-1] if n else None, "seconds": epoch_seconds * n,
            "images_per_second": images_per_second if n else None, "device": "cpu", "torch_version": "x",
            "seed": int(config["trainer"]["seed"]), "run_dir": str(run),
            **(runlock.owner() if status == "running" else {})}  # a running run: this live process writes it
        if new_format:
            chose = vals if vals else evals
            best_epoch = max(chose, key=lambda t: t[1])[0] if chose else None
            record.update(
                selection=selection or ("val" if vals else "test"), best_epoch=best_epoch,
                final_val_acc=vals[-1][1] if vals else None, best_val_acc=max(a for _, a in vals) if vals else None,
                test_acc_at_best=test_acc[best_epoch - 1] if best_epoch else None,
                final_train_eval_acc=next((a for a in reversed(train_eval_acc) if a is not None), None))
        if scheduler_metric:
            record["scheduler_metric"] = scheduler_metric
        rundir.atomic_write_json(run / rundir.SUMMARY_JSON, record)
    return run


def write_multirun(sweep: Path, task: Sequence[str], params: Mapping[str, str] | None = None) -> None:
    """``multirun.yaml`` as Hydra's basic sweeper leaves it (the part the report reads); ``params``: a
    preset's ``hydra.sweeper.params``."""
    Path(sweep).mkdir(parents=True, exist_ok=True)
    (Path(sweep) / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                              "max_batch_size": None, "params": dict(params) if params else None},
                  "overrides": {"task": list(task)}}}))


def curve(final: float, n: int = 5, start: float = 0.3) -> list[float]:
    """A rising test-accuracy curve ending exactly at ``final`` whose best epoch is not the last."""
    pts = [start + (final + 0.01 - start) * (1 - math.exp(-3 * (e + 1) / n)) for e in range(n - 1)]
    pts[-1] = final + 0.005  # the peak is one epoch before the end: not "still improving"
    return pts + [final]


def sweep(root: Path, finals: Mapping[str, Sequence[float]], key: str = "scheduler", n_epochs: int = 5,
          task: Sequence[str] | None = None) -> Path:
    """A grid over ``key`` x seeds: ``finals[level][seed]`` is that run's final test accuracy."""
    levels = list(finals)
    n_seeds = max(len(v) for v in finals.values())
    write_multirun(root, task or [f"{key}={','.join(levels)}", f"trainer.seed={','.join(map(str, range(n_seeds)))}"])
    for lvl, accs in finals.items():
        for seed, acc in enumerate(accs):
            write_run(root, [f"{key}={lvl}", f"trainer.seed={seed}"], curve(acc, n_epochs))
    return root


@contextlib.contextmanager
def unsynced() -> Iterator[None]:
    """Skip fsync while writing simulated sweeps: durability is not under test there, and thousands of
    fsyncs would take most of a simulation's time. The files written are byte-for-byte the same."""
    fsync = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = fsync


def level_name(i: int) -> str:
    return f"l{i}"


def finals_sweep(root: Path, acc: Sequence[Sequence[float]], paired: bool, key: str = "scheduler") -> Path:
    """A simulated sweep: ``acc[i][s]`` is the final test accuracy of level i's s-th run (2 epochs each).

    Paired: every level ran seeds 0..n-1. Unpaired: each level ran its own seeds (level i: i*n ..),
    as when levels come from different sweeps."""
    levels = [level_name(i) for i in range(len(acc))]
    n = max(len(a) for a in acc)
    seeds = [list(range(n)) if paired else list(range(i * n, (i + 1) * n)) for i in range(len(acc))]
    all_seeds = sorted({s for ss in seeds for s in ss})
    write_multirun(root, [f"{key}={','.join(levels)}", f"trainer.seed={','.join(map(str, all_seeds))}"]
                   if paired else [f"{key}={','.join(levels)}"])
    with unsynced():
        for lvl, accs, ss in zip(levels, acc, seeds):
            for seed, a in zip(ss, accs):
                write_run(root, [f"{key}={lvl}", f"trainer.seed={seed}"], curve(float(a), 2), steps_per_epoch=0,
                          hydra=False)
    return root


def load_summary(run: Path) -> dict:
    return json.loads((Path(run) / rundir.SUMMARY_JSON).read_text())
