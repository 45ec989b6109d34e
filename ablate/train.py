"""The trainer: one run, from a composed config to the files in its run directory.

Config -> data + model + optimizer/scheduler -> :func:`fit` -> ``epochs.csv``,
``steps.csv``, ``checkpoint.pt``, ``model.pt``, ``best.pt``, ``summary.json``.

What a run is made of and what it records at the end of each epoch live in
:class:`ablate.runstate.RunState`, shared with the packed trainer
(:mod:`ablate.packed`); here is the hot loop. Batches come from :mod:`ablate.batches`
(by default the uint8 split resident on the device, augmented there in batches).
Loss and accuracy accumulate on the device and are read once per ``log_every``
steps and once per epoch, so a GPU never waits for the host. The step is chosen
once: replayed as one CUDA graph where it can be (``trainer.cuda_graph``,
:mod:`ablate.cudagraph`), else eager; ``summary.json`` says which ran.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from . import cudagraph, phases
from .device import release
from .events import Observer
from .runstate import RunState, overflow

__all__ = ["fit", "release"]


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
        phases.mark_end()


def _fit(cfg: DictConfig, run_dir: Path, config_hash: str, summary: Optional[dict], observer: Observer) -> dict:
    run = RunState(cfg, run_dir, config_hash, summary, observer)
    t, device = run.t, run.device
    model, optimizer, schedule, batches = run.model, run.optimizer, run.schedule, run.batches
    step_model = torch.compile(model) if t.compile else model

    def train_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total, loss, correct = run.objective(run.forward(step_model, x), y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return loss, correct

    # The step, chosen once: a graph replay fed batch indices, or eager on gathered batches.
    if run.graphed:
        step_fn = cudagraph.GraphStep(lambda idx: train_step(*batches.gather(idx)), model, optimizer, device,
                                      phases=run.phases)
        epoch_batches = batches.indices
    else:
        step_fn = lambda batch: train_step(*batch)  # noqa: E731
        epoch_batches = batches.__iter__
    for epoch in range(run.start_epoch + 1, t.epochs + 1):
        model.train()
        lr, diverged = run.epoch_lr(epoch)
        losses = torch.zeros(batches.steps, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lrs = []
        t0 = time.perf_counter()
        try:
            for i, batch in enumerate(epoch_batches() if not diverged else ()):
                losses[i], c = step_fn(batch)
                lrs.append(run.lr_now() if schedule.interval == "step" else lr)  # epoch schedules: fixed
                correct += c
                schedule.after_step()
                if (i + 1) % t.log_every == 0:  # the only mid-epoch host sync
                    running = losses[: i + 1].mean().item()
                    if not math.isfinite(running):
                        diverged = f"non-finite training loss in epoch {epoch}"
                        break
                    run.observer.on_step(epoch, i + 1, running)
        except (RuntimeError, OverflowError) as e:  # the lr or an update too large for a float
            if not overflow(e):
                raise
            diverged = f"float overflow in epoch {epoch} ({str(e).splitlines()[0]})"
        trained = run.trained(losses, correct, lrs)  # the device read once the epoch's loop is done
        mode = "cuda_graph" if run.graphed and not step_fn.eager else "eager"
        if run.end_epoch(epoch, lr, trained, time.perf_counter() - t0, diverged, mode):
            return run.summary  # diverged: recorded, stopped
    summary = run.finish()
    release(device)
    return summary
