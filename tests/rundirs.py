"""Write synthetic run directories in the trainer's exact on-disk format, with known numbers.

A sweep directory is ``multirun.yaml`` plus one directory per job named from its
overrides (``scheduler=cosine,trainer.seed=1``; ``default`` without overrides),
each with ``.hydra/{config,overrides,hydra}.yaml``, ``epochs.csv``, ``steps.csv``
and ``summary.json`` (see README "Where outputs land").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ablate import rundir, runlock

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


def write_run(sweep: Path, overrides: Sequence[str] = (), test_acc: Sequence[float | None] = (0.5, 0.6, 0.7),
              train_acc: Sequence[float] | None = None, *, epochs_planned: int | None = None,
              status: str = "completed", error: str | None = None, summary: bool = True,
              train_loss: Sequence[float] | None = None, test_loss: Sequence[float | None] | None = None,
              lr: Sequence[float] | None = None, steps_per_epoch: int = 4, params: int = 1234,
              mult_adds: int | None = None,
              epoch_seconds: float = 2.0, images_per_second: float = 1000.0, report: Mapping | None = None,
              name: str | None = None, val_acc: Sequence[float | None] | None = None, has_val: bool = True,
              train_eval_acc: Sequence[float | None] | None = None) -> Path:
    """One run directory under ``sweep``; ``test_acc[i]`` is epoch i+1's test accuracy (None: not evaluated).

    Only ``len(test_acc)`` epochs are written; ``epochs_planned`` (default: that many)
    is what the config asked for, so fewer rows make an incomplete run. ``val_acc`` defaults to the test
    accuracy + 0.01 (so the validation-best epoch is the test-best one, and the numbers still differ);
    ``has_val=False`` writes a run without a validation split (``dataset.val_size=0``, chosen on test).
    ``train_eval_acc`` (the clean pass) defaults to the running ``train_acc`` + 0.01."""
    overrides = list(overrides)
    n = len(test_acc)
    planned = epochs_planned or n
    train_acc = list(train_acc) if train_acc is not None else [min(1.0, (a or 0.5) + 0.02) for a in test_acc]
    train_loss = list(train_loss) if train_loss is not None else [1.0 / (e + 1) for e in range(n)]
    test_loss = list(test_loss) if test_loss is not None else [None if a is None else 1.0 - a for a in test_acc]
    if val_acc is None:
        val_acc = [None if a is None or not has_val else min(1.0, a + 0.01) for a in test_acc]
    val_acc = list(val_acc)
    if train_eval_acc is None:
        train_eval_acc = [None if a is None else min(1.0, t + 0.01) for a, t in zip(test_acc, train_acc)]
    train_eval_acc = list(train_eval_acc)
    lr = list(lr) if lr is not None else [0.1 * 0.5 ** e for e in range(n)]
    choices = dict(GROUP_DEFAULTS)
    config: dict[str, Any] = {g: {"name": c} for g, c in choices.items() if g not in ("trainer", "report")}
    config["optimizer"]["lr"] = 0.001
    config["trainer"] = {"epochs": planned, "seed": 0, "train_eval_size": 1000}
    config["dataset"].update(val_size=0.1 if has_val else 0.0, split_seed=0)
    config["report"] = dict(report or {"overfit_gap": 0.1, "bootstrap": 2000, "confidence": 0.95, "min_seeds": 3,
                                       "smoothing": 0.9})
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
    hyd = run / ".hydra"
    hyd.mkdir(parents=True, exist_ok=True)
    (hyd / "config.yaml").write_text(yaml.safe_dump(config))
    (hyd / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hyd / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices},
                                                              "overrides": {"task": overrides}}}))
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
        rundir.append_rows(run / rundir.EPOCHS_CSV, rundir.EPOCH_COLUMNS, rows)
        rundir.append_rows(run / rundir.STEPS_CSV, rundir.STEP_COLUMNS, steps)
    if summary:
        evals = [(i + 1, a) for i, a in enumerate(test_acc) if a is not None]
        select = "val" if has_val else "test"
        chosen = [(i + 1, a) for i, a in enumerate(val_acc if select == "val" else test_acc) if a is not None]
        best_epoch, best_chosen = max(chosen, key=lambda t: t[1]) if chosen else (None, None)
        vals = [a for a in val_acc if a is not None]
        trains = [a for a in train_eval_acc if a is not None]
        rundir.atomic_write_json(run / rundir.SUMMARY_JSON, {
            "status": status, "error": error, "traceback": f"Traceback ...\n{error}" if error else None,
            "overrides": overrides, "choices": choices, "config": config, "config_hash": "0" * 16,
            "params": params, "mult_adds": mult_adds, "epochs_planned": planned, "epochs_done": n,
            "selection": select, "final_val_acc": vals[-1] if vals else None,
            "best_val_acc": best_chosen if select == "val" else None, "best_epoch": best_epoch,
            "test_acc_at_best": test_acc[best_epoch - 1] if best_epoch else None,
            "final_test_acc": evals[-1][1] if evals else None,
            "best_test_acc": max(a for _, a in evals) if evals else None,
            "final_train_eval_acc": trains[-1] if trains else None,
            "final_train_acc": train_acc[-1] if n else None, "seconds": epoch_seconds * n,
            "images_per_second": images_per_second if n else None, "device": "cpu", "torch_version": "x",
            "seed": int(config["trainer"]["seed"]), "run_dir": str(run),
            **(runlock.owner() if status == "running" else {})})  # a running run: this live process writes it
    return run


def write_multirun(sweep: Path, task: Sequence[str]) -> None:
    """``multirun.yaml`` as Hydra's basic sweeper leaves it (the part the report reads)."""
    Path(sweep).mkdir(parents=True, exist_ok=True)
    (Path(sweep) / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                              "max_batch_size": None, "params": None},
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


def load_summary(run: Path) -> dict:
    return json.loads((Path(run) / rundir.SUMMARY_JSON).read_text())
