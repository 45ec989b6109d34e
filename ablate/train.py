"""The trainer: one run, from a composed config to the files in its run directory.

Config -> data + model + optimizer/scheduler -> :func:`fit` -> ``epochs.csv``,
``steps.csv``, ``checkpoint.pt``, ``model.pt``, ``summary.json``.

The training split stays resident on the device as uint8 (``trainer.pipeline=resident``):
each epoch draws a permutation there, batches are gathered by indexing and
augmented batched on the device. Loss and accuracy accumulate on the device and
are read once per ``log_every`` steps and once per epoch, so a GPU never waits
for the host. On CUDA the whole step is replayed as one CUDA graph
(``trainer.cuda_graph``, :mod:`ablate.graph`); ``summary.json`` says which ran.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from . import files, graph
from .augment import AugmentConf, BatchAugment, normalize
from .config import ConfigError, non_negative, one_of, positive, require, store_schema, typed
from .data import TensorData, load_dataset
from .models import build_model, count_parameters
from .optim import build_optimizer, build_scheduler, needs_metric

log = logging.getLogger("ablate")


@dataclass
class TrainerConf:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 1
    log_every: int = 50
    limit_batches: Optional[int] = None
    limit_eval_batches: Optional[int] = None
    pipeline: str = "resident"
    num_workers: int = 4
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    cuda_graph: str = "auto"
    cudnn_benchmark: bool = True
    checkpoint_every: int = 1
    fail_fast: bool = False
    failure_value: float = 0.0

    def __post_init__(self) -> None:
        positive("trainer", self, "epochs", "batch_size", "eval_batch_size", "eval_every", "log_every")
        non_negative("trainer", self, "seed", "num_workers", "checkpoint_every")
        for key in ("limit_batches", "limit_eval_batches"):
            v = getattr(self, key)
            require(v is None or v > 0, f"trainer.{key}", v, "must be > 0 or null")
        one_of("trainer.pipeline", self.pipeline, ("resident", "dataloader"))
        one_of("trainer.amp", self.amp, ("auto", "bf16", "off"))
        one_of("trainer.channels_last", str(self.channels_last).lower(), ("auto", "true", "false"))
        one_of("trainer.cuda_graph", str(self.cuda_graph).lower(), ("auto", "true", "false"))
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "trainer.device", self.device, "must be auto, cpu, cuda or cuda:N")


@dataclass
class RegularizationConf:
    name: str = "none"
    weight_decay: float = 0.0      # the optimizer's (decoupled for adamw)
    l2: float = 0.0                # explicit l2 * sum(w^2) over all parameters, added to the loss
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        non_negative("regularization", self, "weight_decay", "l2")
        require(0.0 <= self.label_smoothing < 1.0, "regularization.label_smoothing", self.label_smoothing,
                "must be in [0, 1)")


store_schema("trainer", "base", TrainerConf)
store_schema("regularization", "base", RegularizationConf)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class CheckpointError(ValueError):
    """A run directory's checkpoint cannot be loaded safely; the message is one line naming the file."""


# --------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} is invalid: CUDA is not available here; use trainer.device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Re-seed every RNG a run touches, so jobs sharing a process do not leak state."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def prepare_backends(t: TrainerConf, device: torch.device) -> None:
    """Reset global torch flags to this run's settings (an earlier job may have changed them)."""
    if (torch.are_deterministic_algorithms_enabled() != t.deterministic
            or (t.deterministic and not torch.is_deterministic_algorithms_warn_only_enabled())):
        torch.use_deterministic_algorithms(t.deterministic, warn_only=True)  # imports inductor: ~3 s, so only on change
    torch.backends.cudnn.deterministic = t.deterministic
    torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)  # streams and graphs use the current device
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)


def rng_state() -> dict[str, Any]:
    """Every RNG state, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):  # resumable with fewer GPUs
            torch.cuda.set_rng_state(s, i)


# --------------------------------------------------------------------------- batches
class ResidentBatches:
    """Training batches gathered from a uint8 copy of the split held on the device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: BatchAugment,
                 device: torch.device, limit: Optional[int] = None) -> None:
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = min(batch_size, len(x))
        self.augment = augment
        self.steps = len(x) // self.batch_size  # drop the ragged last batch: every step has one shape
        if limit is not None:
            self.steps = min(self.steps, limit)

    def indices(self) -> Iterator[torch.Tensor]:
        """Each step's batch indices: slices of one on-device permutation per epoch."""
        perm = torch.randperm(len(self.x), device=self.x.device)
        for i in range(self.steps):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size]

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(self.x[idx]), self.y[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return map(self.gather, self.indices())


def make_batches(data: TensorData, t: TrainerConf, aug_cfg, device: torch.device):
    if t.pipeline == "resident":
        aug = BatchAugment(aug_cfg, data.mean, data.std)
        return ResidentBatches(data.train_x, data.train_y, t.batch_size, aug, device, t.limit_batches)
    from .loader import LoaderBatches  # the classic torchvision DataLoader path

    return LoaderBatches(data, t, aug_cfg, device)


# --------------------------------------------------------------------------- loop
@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: TensorData, t: TrainerConf,
             device: torch.device, amp: bool, channels_last: bool) -> tuple[float, float]:
    """Mean test loss and accuracy, in large batches without autograd, read once."""
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


def fit(cfg: DictConfig, run_dir: Path, config_hash: str = "", summary: Optional[dict] = None) -> dict:
    """Train one run into ``run_dir``, resuming from its checkpoint if one matches ``config_hash``.

    Returns the summary dict (also written to ``summary.json``). Raises on errors;
    the caller decides whether a failure is recorded or re-raised."""
    run_dir = Path(run_dir)
    summary = dict(summary or {})
    t: TrainerConf = typed(cfg.trainer, TrainerConf)
    reg: RegularizationConf = typed(cfg.regularization, RegularizationConf)
    aug_cfg: AugmentConf = typed(cfg.augment, AugmentConf)
    if cfg.scheduler.name == "plateau" and t.eval_every != 1:
        raise ConfigError(f"trainer.eval_every={t.eval_every} is invalid: scheduler=plateau steps on the "
                          "test loss and needs trainer.eval_every=1")
    device = resolve_device(t.device)
    want_graph = str(t.cuda_graph).lower()
    no_graph = graph.obstacle(device, t.pipeline) if want_graph != "false" else None
    if no_graph and want_graph == "true":
        log.warning("cuda_graph requested but %s: running eager", no_graph)
    graphed = want_graph != "false" and not no_graph
    prepare_backends(t, device)
    seed_everything(t.seed)
    amp = t.amp == "bf16" or (t.amp == "auto" and device.type == "cuda")
    channels_last = t.channels_last is True or str(t.channels_last).lower() == "true" or (
        str(t.channels_last).lower() == "auto" and device.type == "cuda")

    data = load_dataset(cfg.dataset, cfg.data)
    model = build_model(cfg.model, data.channels, data.image_size, data.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = make_batches(data, t, aug_cfg, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), reg.weight_decay,
                                **graph.optimizer_flags(cfg.optimizer.name, device, graphed))
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, t.epochs, batches.steps)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    step_model = torch.compile(model) if t.compile else model

    summary.update(status="running", error=None, traceback=None, config_hash=config_hash,
                   params=count_parameters(model), epochs_planned=t.epochs, device=str(device),
                   torch_version=torch.__version__, seed=t.seed, run_dir=str(run_dir))
    rows, start_epoch, seconds = _resume(run_dir, config_hash, model, optimizer, scheduler)
    # After the resume, whose load_state_dict puts back the lr the checkpoint had (float or tensor).
    graph.lr_to_tensor(optimizer, device) if graphed else graph.lr_to_float(optimizer)
    if start_epoch:
        log.info("resuming %s after epoch %d/%d", run_dir.name, start_epoch, t.epochs)
    summary.update(_results(rows), seconds=seconds)
    files.atomic_write_json(run_dir / files.SUMMARY_JSON, summary)

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

    if graphed:
        step_fn = graph.GraphStep(lambda idx: train_step(*batches.gather(idx)), model, optimizer, device)
    else:
        step_fn = lambda batch: train_step(*batch)  # noqa: E731
    step = start_epoch * batches.steps
    for epoch in range(start_epoch + 1, t.epochs + 1):
        model.train()
        lr = float(optimizer.param_groups[0]["lr"])
        losses = torch.zeros(batches.steps, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lrs, diverged = [], False
        t0 = time.perf_counter()
        for i, batch in enumerate(batches.indices() if graphed else batches):
            lrs.append(_lr_now(optimizer) if interval == "step" else lr)  # epoch schedulers: fixed all epoch
            losses[i], c = step_fn(batch)
            correct += c
            if interval == "step" and scheduler is not None:
                scheduler.step()
            if (i + 1) % t.log_every == 0:  # the only mid-epoch host sync
                running = losses[: i + 1].mean().item()
                if not math.isfinite(running):
                    diverged = True
                    break
                log.info("epoch %d step %d/%d loss %.4f", epoch, i + 1, batches.steps, running)
        n_steps, seen = len(lrs), len(lrs) * batches.batch_size
        train_loss = losses[:n_steps].mean().item()
        train_acc = correct.item() / max(seen, 1)
        train_seconds = time.perf_counter() - t0
        diverged = diverged or not math.isfinite(train_loss)
        test_loss = test_acc = None
        if not diverged and (epoch % t.eval_every == 0 or epoch == t.epochs):
            test_loss, test_acc = evaluate(model, test_x, test_y, data, t, device, amp, channels_last)
        if interval == "epoch" and scheduler is not None and not diverged:
            scheduler.step(test_loss) if needs_metric(scheduler) else scheduler.step()
        epoch_seconds = time.perf_counter() - t0
        seconds += epoch_seconds
        row = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                   test_acc=test_acc, epoch_seconds=epoch_seconds, images_per_second=seen / train_seconds)
        step_loss, step_lr = losses[:n_steps].tolist(), _host(lrs)
        files.append_rows(run_dir / files.STEPS_CSV, files.STEP_COLUMNS,
                          [dict(step=step + j + 1, epoch=epoch, lr=step_lr[j], loss=step_loss[j]) for j in range(n_steps)])
        files.append_rows(run_dir / files.EPOCHS_CSV, files.EPOCH_COLUMNS, [row])
        step += n_steps
        rows.append(row)
        log.info("epoch %d/%d lr %.3g | train loss %.4f acc %.2f%% | test loss %s acc %s | %.1f s, %.0f img/s",
                 epoch, t.epochs, lr, train_loss, 100 * train_acc,
                 "-" if test_loss is None else f"{test_loss:.4f}",
                 "-" if test_acc is None else f"{100 * test_acc:.2f}%", epoch_seconds, row["images_per_second"])
        summary.update(_results(rows), seconds=seconds,
                       step_mode="cuda_graph" if graphed and not step_fn.eager else "eager")
        if diverged:
            summary.update(status="diverged", error=f"non-finite training loss in epoch {epoch}")
            files.atomic_write_json(run_dir / files.SUMMARY_JSON, summary)
            log.warning("%s: diverged in epoch %d (non-finite loss); stopping this run", run_dir.name, epoch)
            return summary
        if t.checkpoint_every and (epoch % t.checkpoint_every == 0 or epoch == t.epochs):
            _save_checkpoint(run_dir, config_hash, epoch, seconds, model, optimizer, scheduler)
        files.atomic_write_json(run_dir / files.SUMMARY_JSON, summary)

    files.atomic_torch_save(model.state_dict(), run_dir / files.MODEL)
    summary.update(status="completed")
    files.atomic_write_json(run_dir / files.SUMMARY_JSON, summary)
    _release(device)
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
    def num(v):
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


def _save_checkpoint(run_dir: Path, config_hash: str, epoch: int, seconds: float, model, optimizer, scheduler) -> None:
    files.atomic_torch_save({
        "config_hash": config_hash, "epoch": epoch, "seconds": seconds,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
    }, run_dir / files.CHECKPOINT)


def _resume(run_dir: Path, config_hash: str, model, optimizer, scheduler) -> tuple[list[dict], int, float]:
    """Load the run's checkpoint if it matches this config; else start clean.

    Returns the epoch rows kept, the epoch to continue after and the seconds spent."""
    path = run_dir / files.CHECKPOINT
    if path.exists():
        try:  # weights_only: a crafted pickle is refused here, never executed
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            ours = isinstance(ckpt, dict) and ckpt.get("config_hash") == config_hash
            if ours:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
                if scheduler is not None and ckpt["scheduler"] is not None:
                    scheduler.load_state_dict(ckpt["scheduler"])
                set_rng_state(ckpt["rng"])
                epoch = int(ckpt["epoch"])
        except Exception as e:
            raise CheckpointError(f"{path} is not a loadable ablate checkpoint ({type(e).__name__}); "
                                  "delete it to retrain this run from scratch") from None
        if ours:
            rows = files.truncate_rows(run_dir / files.EPOCHS_CSV, files.EPOCH_COLUMNS, epoch)
            files.truncate_rows(run_dir / files.STEPS_CSV, files.STEP_COLUMNS, epoch)
            return rows, epoch, float(ckpt.get("seconds", 0.0))
    for name in (files.EPOCHS_CSV, files.STEPS_CSV, files.CHECKPOINT, files.MODEL):
        (run_dir / name).unlink(missing_ok=True)
    return [], 0, 0.0


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def release(device: str | torch.device = "auto") -> None:
    """Free what a finished (or failed) run left behind, before the next job in this process."""
    _release(torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device))
