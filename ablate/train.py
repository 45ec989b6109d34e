"""The trainer: one run, from a composed config to the files in its run directory.

Config -> data + model + optimizer/scheduler -> :func:`fit` -> ``epochs.csv``,
``steps.csv``, ``checkpoint.pt``, ``model.pt``, ``summary.json``.

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

from . import cudagraph, rundir
from .augment import normalize
from .batches import make_batches
from .compose import validate
from .config import TrainerConf
from .data import TensorData, load_dataset
from .device import (prepare_backends, release, resolve_device, rng_state, seed_everything, set_rng_state,
                     use_amp, use_channels_last)
from .events import Observer
from .models import build_model, count_parameters
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
    the progress (:mod:`ablate.events`); its owner ends it."""
    run_dir = Path(run_dir)
    observer = observer or Observer()
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
    model = build_model(cfg.model, data.channels, data.image_size, data.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = make_batches(data, t, groups["augment"], device)
    graphed = cudagraph.wanted(t.cuda_graph, device, batches)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), reg.weight_decay,
                                **speed_flags(cfg.optimizer, device, graphed))
    schedule = build_scheduler(cfg.scheduler, optimizer, t.epochs, batches.steps)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    step_model = torch.compile(model) if t.compile else model

    summary.update(status="running", error=None, traceback=None, config_hash=config_hash,
                   params=count_parameters(model), epochs_planned=t.epochs, device=str(device),
                   torch_version=torch.__version__, seed=t.seed, run_dir=str(run_dir))
    rows, start_epoch, seconds = _resume(run_dir, config_hash, model, optimizer, schedule)
    # After the resume, whose load_state_dict puts back the lr the checkpoint had (float or tensor).
    cudagraph.lr_to_tensor(optimizer, device) if graphed else cudagraph.lr_to_float(optimizer)
    if start_epoch:
        log.info("resuming %s after epoch %d/%d", run_dir.name, start_epoch, t.epochs)
    summary.update(_results(rows), seconds=seconds)
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
    for epoch in range(start_epoch + 1, t.epochs + 1):
        model.train()
        lr = float(optimizer.param_groups[0]["lr"])
        losses = torch.zeros(batches.steps, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lrs, diverged = [], False
        t0 = time.perf_counter()
        for i, batch in enumerate(epoch_batches()):
            lrs.append(_lr_now(optimizer) if schedule.interval == "step" else lr)  # epoch schedules: fixed
            losses[i], c = step_fn(batch)
            correct += c
            schedule.after_step()
            if (i + 1) % t.log_every == 0:  # the only mid-epoch host sync
                running = losses[: i + 1].mean().item()
                if not math.isfinite(running):
                    diverged = True
                    break
                observer.on_step(epoch, i + 1, running)
        n_steps, seen = len(lrs), len(lrs) * batches.batch_size
        train_loss = losses[:n_steps].mean().item()
        train_acc = correct.item() / max(seen, 1)
        train_seconds = time.perf_counter() - t0
        diverged = diverged or not math.isfinite(train_loss)
        test_loss = test_acc = None
        if not diverged and (epoch % t.eval_every == 0 or epoch == t.epochs):
            test_loss, test_acc = evaluate(model, test_x, test_y, data, t, device, amp, channels_last)
        if not diverged:
            schedule.after_epoch({"test_loss": test_loss, "test_acc": test_acc})
        epoch_seconds = time.perf_counter() - t0
        seconds += epoch_seconds
        row = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                   test_acc=test_acc, epoch_seconds=epoch_seconds, images_per_second=seen / train_seconds)
        step_loss, step_lr = losses[:n_steps].tolist(), _host(lrs)
        step_rows = [dict(step=step + j + 1, epoch=epoch, lr=step_lr[j], loss=step_loss[j]) for j in range(n_steps)]
        rundir.append_rows(run_dir / rundir.STEPS_CSV, rundir.STEP_COLUMNS, step_rows)
        rundir.append_rows(run_dir / rundir.EPOCHS_CSV, rundir.EPOCH_COLUMNS, [row])
        step += n_steps
        rows.append(row)
        observer.on_epoch_end(row, step_rows)
        summary.update(_results(rows), seconds=seconds,
                       step_mode="cuda_graph" if graphed and not step_fn.eager else "eager")
        if diverged:
            summary.update(status="diverged", error=f"non-finite training loss in epoch {epoch}")
            rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)
            log.warning("%s: diverged in epoch %d (non-finite loss); stopping this run", run_dir.name, epoch)
            return summary
        if t.checkpoint_every and (epoch % t.checkpoint_every == 0 or epoch == t.epochs):
            rundir.save_checkpoint(run_dir, {
                "config_hash": config_hash, "epoch": epoch, "seconds": seconds,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": schedule.scheduler.state_dict() if schedule.scheduler is not None else None,
                "rng": rng_state()})
        rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)

    rundir.atomic_torch_save(model.state_dict(), run_dir / rundir.MODEL)
    summary.update(status="completed")
    rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)
    release(device)
    return summary


def _lr_now(optimizer: torch.optim.Optimizer) -> float | torch.Tensor:
    """The lr in force now; a device-tensor lr (cuda_graph) is copied on the device, not read."""
    lr = optimizer.param_groups[0]["lr"]
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


def _host(values: list) -> list[float]:
    """Floats from ``_lr_now`` values, with one device read for all of them."""
    if values and isinstance(values[0], torch.Tensor):
        return torch.stack(values).double().tolist()
    return values


def _results(rows: list[dict]) -> dict:
    """Final/best accuracies of the epochs so far (the numbers a summary reports)."""
    def num(v: Any) -> float | None:
        return None if v in (None, "") else float(v)

    evals = [(int(r["epoch"]), num(r["test_acc"])) for r in rows if num(r["test_acc"]) is not None]
    best_epoch, best = max(evals, key=lambda e: e[1]) if evals else (None, None)
    ips = [num(r["images_per_second"]) for r in rows if num(r["images_per_second"])]
    return dict(
        epochs_done=len(rows),
        final_test_acc=evals[-1][1] if evals else None,
        final_test_loss=num(rows[-1]["test_loss"]) if rows else None,
        best_test_acc=best, best_epoch=best_epoch,
        final_train_acc=num(rows[-1]["train_acc"]) if rows else None,
        final_train_loss=num(rows[-1]["train_loss"]) if rows else None,
        images_per_second=sum(ips) / len(ips) if ips else None,
    )


def _resume(run_dir: Path, config_hash: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            schedule: Schedule) -> tuple[list[dict], int, float]:
    """Load the run's checkpoint if it matches this config; else start clean.

    Returns the epoch rows kept, the epoch to continue after and the seconds spent."""
    state = rundir.load_checkpoint(run_dir)
    if state is None or state.get("config_hash") != config_hash:
        rundir.clear_results(run_dir)
        return [], 0, 0.0
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule.scheduler is not None and state["scheduler"] is not None:
            schedule.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        epoch = int(state["epoch"])
    except Exception as e:
        raise CheckpointError(f"{run_dir / rundir.CHECKPOINT} does not fit this run ({type(e).__name__}); "
                              "delete it to retrain this run from scratch") from None
    rows = rundir.truncate_rows(run_dir / rundir.EPOCHS_CSV, rundir.EPOCH_COLUMNS, epoch)
    rundir.truncate_rows(run_dir / rundir.STEPS_CSV, rundir.STEP_COLUMNS, epoch)
    return rows, epoch, float(state.get("seconds", 0.0))
