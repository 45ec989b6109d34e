"""The trainer: one run, from a composed config to the files in its run directory.

Config -> data + model + optimizer/scheduler -> :func:`fit` -> ``epochs.csv``,
``steps.csv``, ``checkpoint.pt``, ``model.pt``, ``best.pt``, ``summary.json``.

The validation split (``dataset.val_size``) chooses everything that is chosen:
plateau's steps, the best epoch (``best.pt``) and the accuracy a run returns to a
sweeper. The test split is evaluated for the report only; a run without a
validation split (a tutorial's way) chooses on the test split and says so.

Batches come from :mod:`ablate.batches` (by default the uint8 split resident on
the device, augmented there in batches). Loss and accuracy accumulate on the
device and are read once per ``log_every`` steps and once per epoch, so a GPU
never waits for the host. The step is chosen once: replayed as one CUDA graph
where it can be (``trainer.cuda_graph``, :mod:`ablate.cudagraph`), else eager;
``summary.json`` says which ran.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from . import cudagraph, rundir, runlock
from .augment import normalize
from .batches import make_batches
from .compose import validate
from .config import TrainerConf
from .data import TensorData, load_dataset
from .device import (prepare_backends, release, resolve_device, rng_state, seed_everything, set_rng_state,
                     use_amp, use_channels_last)
from .events import Observer
from .models import build_model, count_mult_adds, count_parameters
from .optim import Schedule, build_optimizer, build_scheduler, speed_flags
from .rundir import CheckpointError

log = logging.getLogger("ablate")


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: TensorData, t: TrainerConf,
             device: torch.device, amp: bool, channels_last: bool) -> tuple[float, float]:
    """Mean loss and accuracy over ``(x, y)``, in large batches without autograd, read once."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for i, start in enumerate(range(0, len(x), t.eval_batch_size)):
        if t.limit_eval_batches is not None and i >= t.limit_eval_batches:
            break
        xb = normalize(x[start:start + t.eval_batch_size], data.mean, data.std)
        yb = y[start:start + t.eval_batch_size]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(xb)
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
        n += len(yb)
    return loss_sum.item() / n, correct.item() / n


def fit(cfg: DictConfig, run_dir: Path, config_hash: str = "", summary: Optional[dict] = None,
        observer: Optional[Observer] = None) -> dict:
    """Train one run into ``run_dir``, resuming from its checkpoint if one matches ``config_hash``.

    Returns the summary dict (also written to ``summary.json``). Raises on errors;
    the caller decides whether a failure is recorded or re-raised. ``observer`` hears
    the progress (:mod:`ablate.events`); its owner ends it. A resumed run trains with
    the intra-op thread count it started with (float sums depend on it); the
    process's own count is restored after, for the next job."""
    threads = torch.get_num_threads()
    try:
        return _fit(cfg, run_dir, config_hash, summary, observer or Observer())
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: DictConfig, run_dir: Path, config_hash: str, summary: Optional[dict], observer: Observer) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = dict(summary or {})
    groups = validate(cfg)
    t: TrainerConf = groups["trainer"]
    reg = groups["regularization"]
    device = resolve_device(t.device)
    prepare_backends(t, device)
    seed_everything(t.seed)
    amp, channels_last = use_amp(t, device), use_channels_last(t, device)

    data = load_dataset(cfg.dataset, cfg.data)
    model = build_model(cfg.model, data.channels, data.image_size, data.num_classes)
    mult_adds = count_mult_adds(model, (data.channels, *data.image_size))  # per image; draws no random numbers
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = make_batches(data, t, groups["augment"], device)
    graphed = cudagraph.wanted(t.cuda_graph, device, batches)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), reg.weight_decay,
                                **speed_flags(cfg.optimizer, device, graphed))
    schedule = build_scheduler(cfg.scheduler, optimizer, t.epochs, batches.steps)
    splits = _eval_splits(data, t, device)
    select = "val" if data.has_val else "test"
    chooser = {f"val_{m}": f"{select}_{m}" for m in ("loss", "acc")}  # what chooses, under its validation name
    keep_best = t.save_best and data.has_val
    step_model = torch.compile(model) if t.compile else model

    summary.update(status="running", error=None, traceback=None, config_hash=config_hash,
                   params=count_parameters(model), mult_adds=mult_adds, epochs_planned=t.epochs, device=str(device),
                   torch_version=torch.__version__, seed=t.seed, run_dir=str(run_dir))
    if schedule.metric is not None:
        summary.update(scheduler_metric=chooser[schedule.metric])
    if select == "test":
        log.info("%s: no validation split (dataset.val_size=0): the test split chooses the best epoch and the "
                 "accuracy returned%s, as the tutorial did", run_dir.name,
                 f", and the scheduler steps on {chooser[schedule.metric]}" if schedule.metric else "")
    rows, start_epoch, seconds, best_state = _resume(run_dir, config_hash, model, optimizer, schedule)
    # After the resume, whose load_state_dict puts back the lr the checkpoint had (float or tensor).
    cudagraph.lr_to_tensor(optimizer, device) if graphed else cudagraph.lr_to_float(optimizer)
    if start_epoch:
        log.info("resuming %s after epoch %d/%d", run_dir.name, start_epoch, t.epochs)
    summary.update(_results(rows, select), seconds=seconds, threads=torch.get_num_threads(), heartbeat=runlock.now())
    best_acc = summary["best_val_acc"] if summary["best_val_acc"] is not None else -math.inf
    rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)
    observer.on_start(run_dir, summary, t.epochs, batches.steps, start_epoch)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):  # graph-safe
            out = step_model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=reg.label_smoothing)
        total = loss + reg.l2 * sum(p.pow(2).sum() for p in model.parameters()) if reg.l2 else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return loss.detach(), (out.argmax(1) == y).sum()

    # The step, chosen once: a graph replay fed batch indices, or eager on gathered batches.
    if graphed:
        step_fn = cudagraph.GraphStep(lambda idx: train_step(*batches.gather(idx)), model, optimizer, device)
        epoch_batches = batches.indices
    else:
        step_fn = lambda batch: train_step(*batch)  # noqa: E731
        epoch_batches = batches.__iter__
    step = start_epoch * batches.steps
    step_images = torch.tensor(batches.sizes, device=device, dtype=torch.float32)  # per step; the last may be ragged
    for epoch in range(start_epoch + 1, t.epochs + 1):
        model.train()
        lr = float(optimizer.param_groups[0]["lr"])
        losses = torch.zeros(batches.steps, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lrs, diverged = [], None if math.isfinite(lr) else f"non-finite learning rate {lr} in epoch {epoch}"
        t0 = time.perf_counter()
        try:
            for i, batch in enumerate(epoch_batches() if not diverged else ()):
                losses[i], c = step_fn(batch)
                lrs.append(_lr_now(optimizer) if schedule.interval == "step" else lr)  # epoch schedules: fixed
                correct += c
                schedule.after_step()
                if (i + 1) % t.log_every == 0:  # the only mid-epoch host sync
                    running = losses[: i + 1].mean().item()
                    if not math.isfinite(running):
                        diverged = f"non-finite training loss in epoch {epoch}"
                        break
                    observer.on_step(epoch, i + 1, running)
        except (RuntimeError, OverflowError) as e:  # the lr or an update too large for a float
            if not _overflow(e):
                raise
            diverged = f"float overflow in epoch {epoch} ({str(e).splitlines()[0]})"
        n_steps = len(lrs)
        seen = sum(batches.sizes[:n_steps])  # a ragged last batch counts its own images
        train_loss = (losses[:n_steps] * step_images[:n_steps]).sum().item() / max(seen, 1)  # mean over images
        train_acc = correct.item() / max(seen, 1)
        train_seconds = time.perf_counter() - t0
        if not diverged and not math.isfinite(train_loss):
            diverged = f"non-finite training loss in epoch {epoch}"
        evaluated = not diverged and (epoch % t.eval_every == 0 or epoch == t.epochs)
        metrics = {f"{name}_{m}": v for name, (x, y) in splits.items() if evaluated
                   for m, v in zip(("loss", "acc"), evaluate(model, x, y, data, t, device, amp, channels_last))}
        if not diverged:
            schedule.after_epoch({k: metrics.get(v) for k, v in chooser.items()})
        if keep_best and metrics.get("val_acc", -math.inf) > best_acc:  # the first of equal bests stays
            best_acc, best_state = metrics["val_acc"], _save_best(model, run_dir)
        epoch_seconds = time.perf_counter() - t0
        seconds += epoch_seconds
        row = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc, **metrics,
                   epoch_seconds=epoch_seconds, images_per_second=seen / train_seconds)
        step_loss, step_lr = losses[:n_steps].tolist(), _host(lrs)
        step_rows = [dict(step=step + j + 1, epoch=epoch, lr=step_lr[j], loss=step_loss[j]) for j in range(n_steps)]
        rundir.append_rows(run_dir / rundir.STEPS_CSV, rundir.STEP_COLUMNS, step_rows)
        rundir.append_rows(run_dir / rundir.EPOCHS_CSV, rundir.EPOCH_COLUMNS, [row])
        step += n_steps
        rows.append(row)
        observer.on_epoch_end(row, step_rows)
        summary.update(_results(rows, select), seconds=seconds, heartbeat=runlock.now(),
                       step_mode="cuda_graph" if graphed and not step_fn.eager else "eager")
        if diverged:
            summary.update(status="diverged", error=diverged)
            rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)
            log.warning("%s: diverged (%s); stopping this run", run_dir.name, diverged)
            return summary
        if t.checkpoint_every and (epoch % t.checkpoint_every == 0 or epoch == t.epochs):
            rundir.save_checkpoint(run_dir, {
                "config_hash": config_hash, "epoch": epoch, "seconds": seconds,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": schedule.scheduler.state_dict() if schedule.scheduler is not None else None,
                "rng": rng_state(), "best_model": best_state, "threads": torch.get_num_threads()})
        rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)

    rundir.atomic_torch_save(model.state_dict(), run_dir / rundir.MODEL)
    summary.update(status="completed")
    rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)
    release(device)
    return summary


def _overflow(e: BaseException) -> bool:
    """A float overflow: Python's OverflowError, or torch refusing a scalar too large for the tensor's dtype
    (``value cannot be converted to type float without overflow``, e.g. Adam's lr / bias correction)."""
    return isinstance(e, OverflowError) or "without overflow" in str(e)


def _lr_now(optimizer: torch.optim.Optimizer) -> float | torch.Tensor:
    """The lr in force now; a device-tensor lr (cuda_graph) is copied on the device, not read."""
    lr = optimizer.param_groups[0]["lr"]
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


def _host(values: list) -> list[float]:
    """Floats from ``_lr_now`` values, with one device read for all of them."""
    if values and isinstance(values[0], torch.Tensor):
        return torch.stack(values).double().tolist()
    return values


def _eval_splits(data: TensorData, t: TrainerConf, device: torch.device) -> dict[str, tuple[torch.Tensor, ...]]:
    """The splits scored at the end of an evaluated epoch, on the device once: validation (if held out),
    test, and the fixed training subset of ``trainer.train_eval_size`` (if any), in the CSV's column order."""
    splits = {"val": (data.val_x, data.val_y)} if data.has_val else {}
    splits["test"] = (data.test_x, data.test_y)
    if t.train_eval_size:
        splits["train_eval"] = data.train_subset(t.train_eval_size)
    return {name: (x.to(device), y.to(device)) for name, (x, y) in splits.items()}


def _save_best(model: torch.nn.Module, run_dir: Path) -> dict[str, torch.Tensor]:
    """Write the model's weights as ``best.pt``; returns them (a CPU copy, for the checkpoint)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    rundir.atomic_torch_save(state, run_dir / rundir.BEST)
    return state


def _results(rows: list[dict], select: str) -> dict:
    """Final and best numbers of the epochs so far (what a summary reports).

    The best epoch is the one with the highest ``<select>_acc`` (``val``; ``test`` in a run without a
    validation split); ``test_acc_at_best`` is what that choice scores on test. ``best_test_acc``, the
    highest test accuracy of any epoch, is chosen on test: for reference only."""
    def num(v: Any) -> float | None:
        return None if v in (None, "") else float(v)

    def final(col: str) -> float | None:  # the last evaluated epoch's
        vals = [num(r.get(col)) for r in rows if num(r.get(col)) is not None]
        return vals[-1] if vals else None

    evals = [(int(r["epoch"]), num(r[f"{select}_acc"]), num(r["test_acc"]))
             for r in rows if num(r.get(f"{select}_acc")) is not None]
    best_epoch, best, test_at_best = max(evals, key=lambda e: e[1]) if evals else (None, None, None)
    tests = [e[2] for e in evals if e[2] is not None]
    ips = [num(r["images_per_second"]) for r in rows if num(r["images_per_second"])]
    return dict(
        epochs_done=len(rows), selection=select,
        final_val_acc=final("val_acc"), final_val_loss=final("val_loss"),
        best_val_acc=best if select == "val" else None, best_epoch=best_epoch, test_acc_at_best=test_at_best,
        final_test_acc=final("test_acc"), final_test_loss=final("test_loss"),
        best_test_acc=max(tests) if tests else None,
        final_train_acc=num(rows[-1]["train_acc"]) if rows else None,
        final_train_loss=num(rows[-1]["train_loss"]) if rows else None,
        final_train_eval_acc=final("train_eval_acc"), final_train_eval_loss=final("train_eval_loss"),
        images_per_second=sum(ips) / len(ips) if ips else None,
    )


def _resume(run_dir: Path, config_hash: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            schedule: Schedule) -> tuple[list[dict], int, float, Optional[dict]]:
    """Load the run's checkpoint if it matches this config; else start clean.

    Returns the epoch rows kept, the epoch to continue after, the seconds spent and the weights of the
    validation-best epoch so far (None if none is kept); ``best.pt`` is put back to those, since a
    killed attempt may have written one of an epoch the resume cuts back."""
    state = rundir.load_checkpoint(run_dir)
    if state is None or state.get("config_hash") != config_hash:
        rundir.clear_results(run_dir)
        return [], 0, 0.0, None
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule.scheduler is not None and state["scheduler"] is not None:
            schedule.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        epoch = int(state["epoch"])
        if state.get("threads"):  # the count the run started with: a resumed run equals an uninterrupted one
            torch.set_num_threads(int(state["threads"]))
    except Exception as e:
        raise CheckpointError(f"{run_dir / rundir.CHECKPOINT} does not fit this run ({type(e).__name__}); "
                              "delete it to retrain this run from scratch") from None
    rows = rundir.truncate_rows(run_dir / rundir.EPOCHS_CSV, rundir.EPOCH_COLUMNS, epoch)
    rundir.truncate_rows(run_dir / rundir.STEPS_CSV, rundir.STEP_COLUMNS, epoch)
    best = state.get("best_model")
    if best is not None:
        rundir.atomic_torch_save(best, run_dir / rundir.BEST)
    else:
        (run_dir / rundir.BEST).unlink(missing_ok=True)
    return rows, epoch, float(state.get("seconds", 0.0)), best
