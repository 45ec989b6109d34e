"""Packed training: several runs of one architecture trained together, in one process.

Small CNNs leave a GPU mostly idle, and every separate run pays its own process,
data load and per-step launch overhead. Here K runs (a *group*, formed by
:mod:`ablate.packing`) share one data set in memory and one loop. Each step is
either *batched* (:class:`ablate.batched.PackedModel`: one vmapped model over the
runs' stacked parameters; the default on CUDA) or *interleaved* (each run's own
model in turn: the same arithmetic as a separate run, bit for bit; the default on
the CPU, where a grouped convolution is 2-4x slower than the runs' convolutions
one by one). Then each run's own torch optimizer and scheduler step: per-run
learning rates, momentum or Adam state, schedules, plateau on its own validation
loss.

Each run draws its random numbers as its own process would: its permutation,
augmentation and dropout masks come from its own RNG state, swapped into torch's
global generator around its draws (:class:`Stream`). On the CPU in float32 a
batched run therefore equals its separate run to floating-point rounding (the
batched convolutions and BatchNorm sum in another order); on CUDA the kernels
differ more and equality is not bitwise.

Everything a run records (evaluation, rows, summary, checkpoints, ``best.pt``,
observers, resume) is :class:`ablate.runstate.RunState`'s, exactly as
:func:`ablate.train.fit` does it, so a packed run's directory is a separate
run's and either trainer resumes it. Runs of a group may start at different
epochs (a killed group's members checkpoint one after another): each joins the
step at its own next epoch and leaves after its own last. Packed steps run
eagerly (no CUDA graph, no ``torch.compile``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor

from . import phases
from .batched import PackedModel, capacity
from .data import TensorData, load_dataset
from .device import release, resolve_device, rng_state, set_rng_state
from .events import Observer
from .packing import group_key
from .runstate import RunState, overflow

log = logging.getLogger("ablate")
# Which run of a group a log line is about (its run directory's name; None: the group's own lines).
RUN: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("ablate_packed_run", default=None)


class Stream:
    """One run's random numbers: the global RNG states it would have in its own process, swapped in
    around its draws (:meth:`step`: the generator its batches and masks draw from) and its bookkeeping
    (:meth:`whole`: every state, e.g. for its checkpoint)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.index = (device.index if device.index is not None else torch.cuda.current_device()) if self.cuda else 0
        self.state = rng_state()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self.cuda:
            torch.cuda.set_rng_state(self.state["cuda"][self.index], self.index)
            yield
            self.state["cuda"][self.index] = torch.cuda.get_rng_state(self.index)
        else:
            torch.set_rng_state(self.state["torch"])
            yield
            self.state["torch"] = torch.get_rng_state()

    @contextlib.contextmanager
    def whole(self) -> Iterator[None]:
        set_rng_state(self.state)
        yield
        self.state = rng_state()


@dataclass
class Member:
    """A run to train in a group: what :func:`ablate.train.fit` takes."""

    cfg: DictConfig
    run_dir: Path
    config_hash: str = ""
    summary: dict = field(default_factory=dict)
    observer: Observer = field(default_factory=Observer)


@dataclass
class _Run:
    """A member while its group trains: its state, stream and this epoch's accumulators."""

    member: Member
    state: RunState
    stream: Stream
    result: Any = None  # its summary once it stops (completed, diverged), or the exception that failed it
    lr: float = 0.0
    diverged: Optional[str] = None
    losses: Tensor = None
    correct: Tensor = None
    lrs: list = field(default_factory=list)
    batches: Iterator = iter(())
    params: list[Tensor] = field(default_factory=list)  # its leaves, in the batched model's order

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Its RNG states and its name on log lines, for its bookkeeping."""
        token = RUN.set(self.member.run_dir.name)
        try:
            with self.stream.whole():
                yield
        finally:
            RUN.reset(token)


def fit_group(members: list[Member], max_group: int = 16, memory_fraction: float = 0.8,
              step: str = "auto") -> list[dict | Exception]:
    """Train ``members`` packed, at most ``max_group`` at once (batched on CUDA: also as many as a probe step says
    fit in ``memory_fraction`` of the free memory). ``step``: ``batched`` (one vmapped model), ``interleaved``
    (each run's own model in turn) or ``auto`` (batched on CUDA, interleaved on the CPU, where a grouped
    convolution is 2-4x slower than the runs' convolutions one by one). Returns each member's summary, or the
    exception that failed it (the caller records it); one member's bad config or divergence never stops the
    others."""
    _check_one_group(members)
    threads = torch.get_num_threads()
    start = phases.since_last_run()
    results: list[Any] = [None] * len(members)
    try:
        t0 = time.perf_counter()
        cfg = members[0].cfg
        try:  # what the group shares: a damaged data file fails each of its runs, as it fails a separate run
            device = resolve_device(cfg.trainer.device)
            data = _on_device(load_dataset(cfg.dataset, cfg.data), device)
        except Exception as e:  # noqa: BLE001
            if cfg.trainer.get("fail_fast"):
                raise
            return [e] * len(members)
        shared = (time.perf_counter() - t0) / len(members)
        batched = step == "batched" or (step == "auto" and device.type == "cuda")
        t0 = time.perf_counter()
        size = capacity(cfg, data, device, max_group, memory_fraction) if batched else max_group
        probe = (time.perf_counter() - t0) / len(members)
        for lo in range(0, len(members), size):
            chunk = list(range(lo, min(lo + size, len(members))))
            runs: dict[int, _Run] = {}
            for i in chunk:
                results[i] = _build(members[i], data, phases.Phases(start / len(members)), shared, probe)
                if not isinstance(results[i], Exception):
                    runs[i], results[i] = results[i], None
            try:
                if runs:
                    _train(list(runs.values()), batched)
            except Exception as e:  # noqa: BLE001  (not one run's: the group's; each unfinished run records it)
                for r in runs.values():
                    r.result = e if r.result is None else r.result
            for i, r in runs.items():
                results[i] = r.result
            del runs
            release(device)
    finally:
        torch.set_num_threads(threads)
        phases.mark_end()
    return results


def _check_one_group(members: list[Member]) -> None:
    """Members share one data set and one step: refuse any that :func:`ablate.packing.group_key` tells apart
    (a config whose key cannot be computed fails in its own run, later)."""
    keys = set()
    for m in members:
        try:
            keys.add(group_key(m.cfg))
        except Exception:  # noqa: BLE001
            continue
    if len(keys) > 1:
        raise ValueError("fit_group: the runs differ in data set, architecture or batch shape; group them with "
                         "ablate.packing.plan (hydra/launcher=packed does)")


def _build(m: Member, data: TensorData, ph: phases.Phases, shared_data: float, probe: float) -> _Run | Exception:
    token = RUN.set(m.run_dir.name)
    try:
        ph.add("data", shared_data)
        ph.add("warmup", probe)
        state = RunState(m.cfg, m.run_dir, m.config_hash, m.summary, m.observer, data=data, graphable=False,
                         phases=ph)
        return _Run(m, state, Stream(state.device))  # its stream: seeded, model drawn, checkpoint restored
    except Exception as e:  # noqa: BLE001  (recorded by the caller, like a separate run's failure)
        if m.cfg.trainer.get("fail_fast"):
            raise
        return e
    finally:
        RUN.reset(token)


def _on_device(data: TensorData, device: torch.device) -> TensorData:
    """The images on the device once for the whole group (every run's ``.to(device)`` is then a no-op)."""
    if device.type == "cpu":
        return data
    move = {k: getattr(data, k).to(device) for k in ("train_x", "test_x", "val_x") if getattr(data, k) is not None}
    return dataclasses.replace(data, **move)


def _train(runs: list[_Run], batched: bool) -> None:
    """Epochs from the earliest member's next to the latest member's last; each member steps in its own."""
    for r in runs:
        r.state.summary["packed"] = len(runs)
    packed = PackedModel(runs[0].state.model, runs[0].state.amp, runs[0].state.device) if batched else None
    for r in runs:
        r.params = [r.state.model.get_parameter(n) for n in packed.params] if packed else []
    first = min(r.state.start_epoch for r in runs) + 1
    for epoch in range(first, max(r.state.t.epochs for r in runs) + 1):
        active = [r for r in runs if r.result is None and r.state.start_epoch < epoch <= r.state.t.epochs]
        if active:
            _epoch(packed, active, epoch)
    for r in runs:
        if r.result is None:  # resumed after its last epoch, before model.pt: what fit does then
            with r.current():
                r.result = r.state.finish()


def _epoch(packed: Optional[PackedModel], active: list[_Run], epoch: int) -> None:
    """One epoch of every active run: the batched steps, then each run's own bookkeeping."""
    for r in active:
        r.state.model.train()
        (r.lr, r.diverged), r.lrs = r.state.epoch_lr(epoch), []
        r.losses = torch.zeros(r.state.batches.steps, device=r.state.device)
        r.correct = torch.zeros((), device=r.state.device, dtype=torch.long)
        r.batches = iter(r.state.batches)  # lazy: its permutation is drawn at its first batch, on its stream
    stepping = [r for r in active if not r.diverged]
    t0 = time.perf_counter()
    models = lambda: [r.state.model for r in stepping]  # noqa: E731
    buffers = packed.stack_buffers(models()) if packed else {}
    for i in range(active[0].state.batches.steps):
        if not stepping:
            break
        _step(packed, stepping, buffers, i, epoch)
        if any(r.diverged for r in stepping):  # it leaves the step; the others go on
            if packed:
                packed.unstack_buffers(models(), buffers)
            stepping = [r for r in stepping if not r.diverged]
            buffers = packed.stack_buffers(models()) if packed else {}
    if packed:
        packed.unstack_buffers(models(), buffers)
    trained = [r.state.trained(r.losses, r.correct, r.lrs) for r in active]  # the device read once the epoch's loop is done
    train_seconds = time.perf_counter() - t0
    mode = "batched" if packed else "interleaved"
    for r, tr in zip(active, trained):
        with r.current():
            if r.state.end_epoch(epoch, r.lr, tr, train_seconds, r.diverged, mode, share=len(active)):
                r.result = r.state.summary  # diverged: recorded, stopped
            elif epoch == r.state.t.epochs:
                r.result = r.state.finish()


def _step(packed: Optional[PackedModel], runs: list[_Run], buffers: dict[str, Tensor], i: int, epoch: int) -> None:
    """Step ``i`` of every run in ``runs``: forward and backward (batched, or each run's own model in turn),
    then each run's own optimizer and scheduler."""
    steps = _batched(packed, runs, buffers) if packed else [_interleaved(r) for r in runs]
    for r, (loss, c) in zip(runs, steps):
        try:
            r.state.optimizer.step()
            r.losses[i] = loss
            r.lrs.append(r.state.lr_now() if r.state.schedule.interval == "step" else r.lr)  # epoch schedules: fixed
            r.correct += c
            r.state.schedule.after_step()
        except (RuntimeError, OverflowError) as e:  # the lr or an update too large for a float
            if not overflow(e):
                raise
            r.diverged = f"float overflow in epoch {epoch} ({str(e).splitlines()[0]})"
            continue
        if (i + 1) % r.state.t.log_every == 0:  # the only mid-epoch host sync, per run
            running = r.losses[: i + 1].mean().item()
            if not math.isfinite(running):
                r.diverged = f"non-finite training loss in epoch {epoch}"
            else:
                token = RUN.set(r.member.run_dir.name)
                r.state.observer.on_step(epoch, i + 1, running)
                RUN.reset(token)


def _loss(r: _Run, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The run's objective, loss and correct count (fit's step), its gradients cleared for the backward."""
    r.state.optimizer.zero_grad(set_to_none=True)
    return r.state.objective(out, y)


def _interleaved(r: _Run) -> tuple[Tensor, Tensor]:
    """One run's forward and backward on its own model, its dropout drawn by its own layers on its stream:
    fit's step, less the optimizer's."""
    with r.stream.step():
        x, y = next(r.batches)
        out = r.state.forward(r.state.model, x)
    total, loss, correct = _loss(r, out, y)
    total.backward()
    return loss, correct


def _batched(packed: PackedModel, runs: list[_Run], buffers: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Every run's batch and masks drawn on its stream, then one batched forward and one backward."""
    xs, ys, masks = [], [], []
    for r in runs:
        with r.stream.step():
            x, y = next(r.batches)
            masks.append(packed.draw_masks(r.state.model, tuple(x.shape)))
        xs.append(x)
        ys.append(y)
    params = {n: torch.stack([r.params[j] for r in runs]) for j, n in enumerate(packed.params)}
    out = packed(params, buffers, torch.stack(xs), masks)
    objective, steps = 0.0, []
    for k, r in enumerate(runs):
        total, loss, correct = _loss(r, out[k], ys[k])
        objective = objective + total
        steps.append((loss, correct))
    objective.backward()
    return steps
