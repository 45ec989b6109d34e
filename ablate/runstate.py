"""A run being trained: its parts, built from its config, and what it records at the end of each epoch.

The two trainers share it: :func:`ablate.train.fit` (one run) and
:func:`ablate.packed.fit_group` (several runs of one architecture stepped as one
batched model). Each keeps its own hot loop; everything else a run does is here,
once: seeding and building (model, batches, optimizer, scheduler, evaluation
splits), resuming from its checkpoint, the end of an epoch (evaluation, the
scheduler's epoch step, ``best.pt``, the CSV rows, the observers,
``summary.json``, ``checkpoint.pt``) and the end of the run (``model.pt``).

The validation split (``dataset.val_size``) chooses everything that is chosen:
plateau's steps, the best epoch (``best.pt``) and the accuracy a run returns to a
sweeper. The test split is evaluated for the report only; a run without a
validation split (a tutorial's way) chooses on the test split and says so.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
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
from .device import prepare_backends, resolve_device, rng_state, seed_everything, set_rng_state, use_amp, use_channels_last
from .events import Observer
from .models import build_model, count_mult_adds, count_parameters
from .optim import Schedule, build_optimizer, build_scheduler, speed_flags
from .phases import Phases
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


@dataclass
class Trained:
    """An epoch's training steps, read from the device: what its rows record."""

    steps: int
    images: int
    loss: float  # mean over images
    acc: float
    step_losses: list[float]
    step_lrs: list[float]


class RunState:
    """One run: built and resumed on construction, then told about each epoch (:meth:`end_epoch`) and its
    end (:meth:`finish`). ``data`` is the loaded data set when runs share it; ``graphable`` is False for a
    trainer that never captures its step; ``share`` runs are trained together (their shared time is split)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, config_hash: str = "", summary: Optional[dict] = None,
                 observer: Optional[Observer] = None, data: Optional[TensorData] = None, graphable: bool = True,
                 phases: Optional[Phases] = None) -> None:
        t0 = time.perf_counter()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.summary = dict(summary or {})
        self.observer = observer or Observer()
        self.phases = phases or Phases()
        data_before = self.phases.seconds["data"]
        groups = validate(cfg)
        self.t: TrainerConf = groups["trainer"]
        t = self.t
        self.reg = groups["regularization"]
        self.device = device = resolve_device(t.device)
        prepare_backends(t, device)
        seed_everything(t.seed)
        self.amp, self.channels_last = use_amp(t, device), use_channels_last(t, device)

        with self.phases.timed("data"):
            self.data = data = data if data is not None else load_dataset(cfg.dataset, cfg.data)
        model = build_model(cfg.model, data.channels, data.image_size, data.num_classes)
        mult_adds = count_mult_adds(model, (data.channels, *data.image_size))  # per image; draws no random numbers
        self.model = model = model.to(device)
        if self.channels_last:
            self.model = model = model.to(memory_format=torch.channels_last)
        with self.phases.timed("data"):
            self.batches = make_batches(data, t, groups["augment"], device)
            self.splits = _eval_splits(data, t, device)
        if t.batch_size > len(data.train_x):  # validate() refused it with drop_last
            log.warning("%s: trainer.batch_size=%d exceeds the %s-image training split: every step trains on the "
                        "whole split, one step per epoch", self.run_dir.name, t.batch_size, f"{len(data.train_x):,}")
        self.graphed = graphable and cudagraph.wanted(t.cuda_graph, device, self.batches)
        self.optimizer = build_optimizer(cfg.optimizer, model.parameters(), self.reg.weight_decay,
                                         **speed_flags(cfg.optimizer, device, self.graphed))
        self.schedule: Schedule = build_scheduler(cfg.scheduler, self.optimizer, t.epochs, self.batches.steps)
        self.select = "val" if data.has_val else "test"
        self.chooser = {f"val_{m}": f"{self.select}_{m}" for m in ("loss", "acc")}  # what chooses, as named in val
        self.keep_best = t.save_best and data.has_val
        self.config_hash = config_hash

        self.summary.update(status="running", error=None, traceback=None, config_hash=config_hash,
                            params=count_parameters(model), mult_adds=mult_adds, epochs_planned=t.epochs,
                            device=str(device), torch_version=torch.__version__, seed=t.seed, run_dir=str(self.run_dir))
        if self.schedule.metric is not None:
            self.summary.update(scheduler_metric=self.chooser[self.schedule.metric])
        if self.select == "test":
            log.info("%s: no validation split (dataset.val_size=0): the test split chooses the best epoch and the "
                     "accuracy returned%s, as the tutorial did", self.run_dir.name,
                     f", and the scheduler steps on {self.chooser[self.schedule.metric]}" if self.schedule.metric else "")
        self.rows, self.start_epoch, self.seconds, self.best_state = _resume(
            self.run_dir, config_hash, model, self.optimizer, self.schedule)
        # After the resume, whose load_state_dict puts back the lr the checkpoint had (float or tensor).
        cudagraph.lr_to_tensor(self.optimizer, device) if self.graphed else cudagraph.lr_to_float(self.optimizer)
        if self.start_epoch:
            log.info("resuming %s after epoch %d/%d", self.run_dir.name, self.start_epoch, t.epochs)
        self.step = self.start_epoch * self.batches.steps
        self.summary.update(_results(self.rows, self.select), seconds=self.seconds, threads=torch.get_num_threads(),
                            heartbeat=runlock.now())
        best = self.summary["best_val_acc"]
        self.best_acc = best if best is not None else -math.inf
        self.phases.add("setup", time.perf_counter() - t0 - (self.phases.seconds["data"] - data_before))
        self.write_summary()
        self.observer.on_start(self.run_dir, self.summary, t.epochs, self.batches.steps, self.start_epoch)

    def write_summary(self) -> None:
        with self.phases.timed("write"):
            self.summary["phases"] = self.phases.as_dict()
            rundir.atomic_write_json(self.run_dir / rundir.SUMMARY_JSON, self.summary)

    def epoch_lr(self, epoch: int) -> tuple[float, Optional[str]]:
        """The lr this epoch starts with (what its row records), and why it cannot train, if it cannot."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        return lr, None if math.isfinite(lr) else f"non-finite learning rate {lr} in epoch {epoch}"

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch, in channels_last and bf16 autocast where the run uses them (autocast's weight
        cache off: a cached cast would be replayed stale by a CUDA graph)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            return model(x)

    def objective(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a step minimises (the loss plus the l2 term), the loss it records and its correct count."""
        loss = F.cross_entropy(out.float(), y, label_smoothing=self.reg.label_smoothing)
        total = loss + self.reg.l2 * sum(p.pow(2).sum() for p in self.model.parameters()) if self.reg.l2 else loss
        return total, loss.detach(), (out.argmax(1) == y).sum()

    def lr_now(self) -> float | torch.Tensor:
        """The lr a step records: in force now for per-step schedules (a device-tensor lr is copied on the
        device, not read), the epoch's for the others (the caller's ``lr``)."""
        lr = self.optimizer.param_groups[0]["lr"]
        return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr

    def trained(self, losses: torch.Tensor, correct: torch.Tensor, lrs: list) -> Trained:
        """The epoch's ``len(lrs)`` steps, read from the device after the loop (never inside it)."""
        n = len(lrs)
        sizes = self.batches.sizes[:n]  # a ragged last batch counts its own images
        seen = sum(sizes)
        step_losses = losses[:n].tolist()
        loss = sum(x * k for x, k in zip(step_losses, sizes)) / max(seen, 1)  # mean over images
        return Trained(n, seen, loss, correct.item() / max(seen, 1), step_losses, _host(lrs))

    def end_epoch(self, epoch: int, lr: float, tr: Trained, train_seconds: float, diverged: Optional[str],
                  step_mode: str = "eager", share: int = 1) -> bool:
        """Evaluate, step the epoch scheduler, keep the best, write the rows, the summary and the checkpoint.
        ``train_seconds`` is the loop's (``share`` runs trained in it together); ``step_mode`` how its steps
        ran, for the summary. True when the run stops here (diverged)."""
        t = self.t
        self.phases.add("train", train_seconds / share)
        t0 = time.perf_counter()
        if not diverged and not math.isfinite(tr.loss):
            diverged = f"non-finite training loss in epoch {epoch}"
        evaluated = not diverged and (epoch % t.eval_every == 0 or epoch == t.epochs)
        with self.phases.timed("eval"):
            metrics = {f"{name}_{m}": v for name, (x, y) in self.splits.items() if evaluated for m, v in
                       zip(("loss", "acc"), evaluate(self.model, x, y, self.data, t, self.device, self.amp,
                                                     self.channels_last))}
        if not diverged:
            self.schedule.after_epoch({k: metrics.get(v) for k, v in self.chooser.items()})
        if self.keep_best and metrics.get("val_acc", -math.inf) > self.best_acc:  # the first of equal bests stays
            with self.phases.timed("checkpoint"):
                self.best_acc, self.best_state = metrics["val_acc"], _save_best(self.model, self.run_dir)
        epoch_seconds = train_seconds + time.perf_counter() - t0
        self.seconds += epoch_seconds
        row = dict(epoch=epoch, lr=lr, train_loss=tr.loss, train_acc=tr.acc, **metrics,
                   epoch_seconds=epoch_seconds, images_per_second=tr.images / train_seconds)
        step_rows = [dict(step=self.step + j + 1, epoch=epoch, lr=tr.step_lrs[j], loss=tr.step_losses[j])
                     for j in range(tr.steps)]
        with self.phases.timed("write"):
            rundir.append_rows(self.run_dir / rundir.STEPS_CSV, rundir.STEP_COLUMNS, step_rows)
            rundir.append_rows(self.run_dir / rundir.EPOCHS_CSV, rundir.EPOCH_COLUMNS, [row])
        self.step += tr.steps
        self.rows.append(row)
        self.observer.on_epoch_end(row, step_rows)
        self.summary.update(_results(self.rows, self.select), seconds=self.seconds, heartbeat=runlock.now(),
                            step_mode=step_mode)
        if diverged:
            self.summary.update(status="diverged", error=diverged)
            self.write_summary()
            log.warning("%s: diverged (%s); stopping this run", self.run_dir.name, diverged)
            return True
        if t.checkpoint_every and (epoch % t.checkpoint_every == 0 or epoch == t.epochs):
            with self.phases.timed("checkpoint"):
                scheduler = self.schedule.scheduler
                rundir.save_checkpoint(self.run_dir, {
                    "config_hash": self.config_hash, "epoch": epoch, "seconds": self.seconds,
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng_state(), "best_model": self.best_state, "threads": torch.get_num_threads()})
        self.write_summary()
        return False

    def finish(self) -> dict:
        """The run completed: ``model.pt`` and the final summary."""
        with self.phases.timed("write"):
            rundir.atomic_torch_save(self.model.state_dict(), self.run_dir / rundir.MODEL)
        self.summary.update(status="completed")
        self.write_summary()
        return self.summary


def overflow(e: BaseException) -> bool:
    """A float overflow: Python's OverflowError, or torch refusing a scalar too large for the tensor's dtype
    (``value cannot be converted to type float without overflow``, e.g. Adam's lr / bias correction)."""
    return isinstance(e, OverflowError) or "without overflow" in str(e)


def _host(values: list) -> list[float]:
    """Floats from :meth:`RunState.lr_now` values, with one device read for all of them."""
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
