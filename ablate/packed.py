"""Packed training: several runs of one architecture stepped as one batched model, in one process.

Small CNNs leave a GPU mostly idle, and every separate run pays its own process,
data load and per-step launch overhead. Here K runs (a *group*, formed by
:mod:`ablate.packing`) share one data set in memory and one batched step: each
step stacks every run's own parameters (``torch.stack`` of its leaves, so each
run's leaves get their own ``.grad``) and runs ``torch.func.functional_call``
under ``torch.func.vmap`` on a meta-device copy of the architecture; BatchNorm
statistics ride along stacked and are written back to each run's model before it
is evaluated. Then each run's own torch optimizer and scheduler step: per-run
learning rates, momentum or Adam state, schedules, plateau on its own
validation loss.

Each run draws its random numbers as a separate run would: its permutation,
augmentation and dropout masks come from its own RNG state, swapped into torch's
global generator around its draws (:class:`Stream`). Dropout cannot draw per run
under ``vmap``, so each run's masks are drawn on its stream with the op
``nn.Dropout``/``nn.Dropout2d`` use on the CPU (``bernoulli_`` on a new tensor,
then ``div_``; a test checks them bitwise) and applied by the batched forward.
On the CPU in float32 a packed run therefore equals its separate run to
floating-point rounding (the batched convolution sums in another order); on CUDA
the kernels differ more and equality is not bitwise.

Everything a run records (evaluation, rows, summary, checkpoints, ``best.pt``,
observers, resume) is :class:`ablate.runstate.RunState`'s, exactly as
:func:`ablate.train.fit` does it, so a packed run's directory is a separate
run's and either trainer resumes it. Runs of a group may start at different
epochs (a killed group's members checkpoint one after another): each joins the
batched step at its own next epoch and leaves after its own last. Packed steps
run eagerly (no CUDA graph, no ``torch.compile``, no channels_last).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import phases
from .data import TensorData, load_dataset
from .config import TrainerConf, typed
from .device import release, resolve_device, rng_state, set_rng_state, use_amp
from .events import Observer
from .runstate import RunState, overflow

log = logging.getLogger("ablate")
DROPOUTS = (nn.Dropout, nn.Dropout2d)  # what the batched forward replaces by per-run masks
STATE_BYTES_PER_PARAM_BYTE = 4  # a run's leaves, their grads and up to two optimizer moments (Adam)
# Which run of a group a log line is about (its run directory's name; None: the group's own lines).
RUN: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("ablate_packed_run", default=None)


def draw_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The tensor ``nn.Dropout`` multiplies by, drawn as ATen's CPU dropout draws it: ``bernoulli_(1 - p)``
    on a new tensor of the noise's shape (the input's; ``(N, C, 1, 1)`` for ``nn.Dropout2d``), ``div_(1 - p)``."""
    if p >= 1:
        return torch.zeros(shape, dtype=dtype, device=device)  # p == 1 draws nothing
    return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p).div_(1 - p)


class _Feed:
    """The masks of one batched forward, handed to the dropout layers in the order they run."""

    masks: Iterator[Tensor] = iter(())


class MaskedDropout(nn.Module):
    """Dropout whose mask is given (drawn per run, outside ``vmap``); in a shape probe it records its
    input's shape instead."""

    def __init__(self, feed: _Feed, feature: bool) -> None:
        super().__init__()
        self.feed, self.feature = feed, feature
        self.probed: Optional[tuple[int, ...]] = None

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "meta":
            self.probed = (*x.shape[:2], *[1] * (x.dim() - 2)) if self.feature else tuple(x.shape)
            return x
        return x * next(self.feed.masks)


class PackedModel:
    """K models of one architecture as one: a meta-device template whose forward is vmapped over the runs'
    stacked parameters, buffers, batches and dropout masks."""

    def __init__(self, model: nn.Module, amp: bool, device: torch.device) -> None:
        self.template = copy.deepcopy(model).to("meta").train()
        self.feed = _Feed()
        self.dropouts: list[str] = []
        for name, m in list(self.template.named_modules()):
            if isinstance(m, DROPOUTS):
                parent, _, leaf = name.rpartition(".")
                self.template.get_submodule(parent).register_module(leaf, MaskedDropout(self.feed, isinstance(m, nn.Dropout2d)))
                self.dropouts.append(name)
        self.params = [n for n, _ in model.named_parameters()]
        self.buffers = [n for n, _ in model.named_buffers()]
        self.amp, self.device = amp, device
        self.mask_dtype = torch.bfloat16 if amp else torch.float32
        self._shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._batched = vmap(self._one, randomness="error")  # any random op inside would be shared: refuse it

    def mask_shapes(self, x_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Each dropout layer's noise shape for one run's batch of ``x_shape``, in the order the layers run."""
        if x_shape not in self._shapes:
            order: list[str] = []
            hooks = [self.template.get_submodule(n).register_forward_pre_hook(
                lambda m, a, n=n: order.append(n)) for n in self.dropouts]
            try:
                with torch.no_grad():
                    self.template.train()(torch.empty(x_shape, device="meta"))
            finally:
                for h in hooks:
                    h.remove()
            self.dropouts = order  # the order they run in
            self._shapes[x_shape] = [self.template.get_submodule(n).probed for n in order]
        return self._shapes[x_shape]

    def draw_masks(self, model: nn.Module, x_shape: tuple[int, ...]) -> list[Tensor]:
        """One run's masks for one step, with its own layers' rates, from the global RNG (the run's stream)."""
        return [draw_mask(shape, model.get_submodule(name).p, self.mask_dtype, self.device)
                for name, shape in zip(self.dropouts, self.mask_shapes(x_shape))]

    def _one(self, params: dict, buffers: dict, x: Tensor, masks: tuple) -> Tensor:
        self.feed.masks = iter(masks)
        return functional_call(self.template, (params, buffers), (x,))

    def __call__(self, params: dict, buffers: dict, x: Tensor, masks: list[list[Tensor]]) -> Tensor:
        """Logits ``[K, B, classes]`` of K runs on their batches ``x`` ``[K, B, ...]``; BatchNorm's running
        statistics are updated in place in ``buffers``."""
        stacked = tuple(torch.stack(ms) for ms in zip(*masks)) if self.dropouts else ()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self._batched(params, buffers, x, stacked)

    def stack_buffers(self, models: list[nn.Module]) -> dict[str, Tensor]:
        return {n: torch.stack([m.get_buffer(n) for m in models]) for n in self.buffers}

    def unstack_buffers(self, models: list[nn.Module], stacked: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for k, m in enumerate(models):
                for n in self.buffers:
                    m.get_buffer(n).copy_(stacked[n][k])


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


def fit_group(members: list[Member], max_group: int = 16, memory_fraction: float = 0.8) -> list[dict | Exception]:
    """Train ``members`` packed, at most ``max_group`` at once (on CUDA also as many as a probe step says fit in
    ``memory_fraction`` of the free memory). Returns each member's summary, or the exception that failed it
    (the caller records it); one member's bad config or divergence never stops the others."""
    threads = torch.get_num_threads()
    start = phases.since_last_run()
    results: list[Any] = [None] * len(members)
    try:
        t0 = time.perf_counter()
        cfg = members[0].cfg
        data = load_dataset(cfg.dataset, cfg.data)
        device = resolve_device(cfg.trainer.device)
        data = _on_device(data, device)
        shared = (time.perf_counter() - t0) / len(members)
        t0 = time.perf_counter()
        size = capacity(cfg, data, device, max_group, memory_fraction)
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
                    _train(list(runs.values()))
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


def _train(runs: list[_Run]) -> None:
    """Epochs from the earliest member's next to the latest member's last; each member steps in its own."""
    for r in runs:
        r.state.summary["packed"] = len(runs)
    packed = PackedModel(runs[0].state.model, runs[0].state.amp, runs[0].state.device)
    for r in runs:
        r.params = [r.state.model.get_parameter(n) for n in packed.params]
    first = min(r.state.start_epoch for r in runs) + 1
    for epoch in range(first, max(r.state.t.epochs for r in runs) + 1):
        active = [r for r in runs if r.result is None and r.state.start_epoch < epoch <= r.state.t.epochs]
        if active:
            _epoch(packed, active, epoch)
    for r in runs:
        if r.result is None:  # resumed after its last epoch, before model.pt: what fit does then
            with r.current():
                r.result = r.state.finish()


def _epoch(packed: PackedModel, active: list[_Run], epoch: int) -> None:
    """One epoch of every active run: the batched steps, then each run's own bookkeeping."""
    for r in active:
        r.state.model.train()
        (r.lr, r.diverged), r.lrs = r.state.epoch_lr(epoch), []
        r.losses = torch.zeros(r.state.batches.steps, device=r.state.device)
        r.correct = torch.zeros((), device=r.state.device, dtype=torch.long)
        r.batches = iter(r.state.batches)  # lazy: its permutation is drawn at its first batch, on its stream
    stepping = [r for r in active if not r.diverged]
    t0 = time.perf_counter()
    buffers = packed.stack_buffers([r.state.model for r in stepping])
    for i in range(active[0].state.batches.steps):
        if not stepping:
            break
        _step(packed, stepping, buffers, i, epoch)
        if any(r.diverged for r in stepping):  # it leaves the batched step; the others go on
            packed.unstack_buffers([r.state.model for r in stepping], buffers)
            stepping = [r for r in stepping if not r.diverged]
            buffers = packed.stack_buffers([r.state.model for r in stepping])
    packed.unstack_buffers([r.state.model for r in stepping], buffers)
    trained = [r.state.trained(r.losses, r.correct, r.lrs) for r in active]  # the epoch's one read of the device
    train_seconds = time.perf_counter() - t0
    for r, tr in zip(active, trained):
        with r.current():
            if r.state.end_epoch(epoch, r.lr, tr, train_seconds, r.diverged, share=len(active)):
                r.result = r.state.summary  # diverged: recorded, stopped
            elif epoch == r.state.t.epochs:
                r.result = r.state.finish()


def _step(packed: PackedModel, runs: list[_Run], buffers: dict[str, Tensor], i: int, epoch: int) -> None:
    """Step ``i`` of every run in ``runs``: each draws its batch and masks on its stream, one batched forward
    and backward, then each run's own optimizer and scheduler."""
    xs, ys, masks = [], [], []
    for r in runs:
        with r.stream.step():
            x, y = next(r.batches)
            masks.append(packed.draw_masks(r.state.model, tuple(x.shape)))
        xs.append(x)
        ys.append(y)
    params = {n: torch.stack([r.params[j] for r in runs]) for j, n in enumerate(packed.params)}
    out = packed(params, buffers, torch.stack(xs), masks)
    total, steps = 0.0, []
    for k, r in enumerate(runs):
        reg = r.state.reg
        loss = F.cross_entropy(out[k].float(), ys[k], label_smoothing=reg.label_smoothing)
        l2 = reg.l2 * sum(p.pow(2).sum() for p in r.state.model.parameters()) if reg.l2 else 0.0
        total = total + loss + l2
        steps.append((loss.detach(), (out[k].argmax(1) == ys[k]).sum()))
        r.state.optimizer.zero_grad(set_to_none=True)
    total.backward()
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


def capacity(cfg: DictConfig, data: TensorData, device: torch.device, max_group: int,
             memory_fraction: float) -> int:
    """How many runs of ``cfg``'s architecture one group may hold: ``max_group`` on the CPU; on CUDA also what
    fits in ``memory_fraction`` of the free memory, measured by a probe step of one and of two runs (peak
    memory from ``torch.cuda.max_memory_allocated``; the difference is one run's activations) plus each run's
    parameters, gradients and optimizer moments."""
    if device.type != "cuda":
        return max_group
    from .models import build_model

    try:
        model = build_model(cfg.model, data.channels, data.image_size, data.num_classes).to(device)
        packed = PackedModel(model, use_amp(typed(cfg.trainer, TrainerConf), device), device)
        batch = min(int(cfg.trainer.batch_size), len(data.train_x))
        x_shape = (batch, data.channels, *data.image_size)
        peaks = []
        for k in (1, 2):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            params = {n: torch.stack([p.detach().clone().requires_grad_()] * k) for n, p in model.named_parameters()}
            masks = [[torch.ones(s, dtype=packed.mask_dtype, device=device) for s in packed.mask_shapes(x_shape)]] * k
            out = packed(params, packed.stack_buffers([model] * k), torch.zeros((k, *x_shape), device=device), masks)
            out.float().sum().backward()
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            del params, masks, out
        state = STATE_BYTES_PER_PARAM_BYTE * sum(p.numel() * p.element_size() for p in model.parameters())
        per_run = max(peaks[1] - peaks[0], 1) + state
        free, _ = torch.cuda.mem_get_info(device)
        fits = int(memory_fraction * free // per_run)
        log.info("packed: one %s run takes about %.0f MiB in a group; %d fit in %.0f%% of the free %.0f MiB",
                 cfg.model.name, per_run / 2**20, fits, 100 * memory_fraction, free / 2**20)
        return max(1, min(max_group, fits))
    except Exception as e:  # noqa: BLE001  (a probe that fails leaves the cap; the group itself will say more)
        log.warning("packed: memory probe failed (%s: %s); groups of up to hydra.launcher.max_group=%d",
                    type(e).__name__, e, max_group)
        return max_group
    finally:
        release(device)
