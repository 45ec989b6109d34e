"""``trainer.cuda_graph=true``: the whole training step (gather, augment, forward,
backward, optimizer step) captured once as a CUDA graph and replayed every step.

A replay costs one launch instead of hundreds, which is what limits small CNNs
on a large GPU. What the graph needs, and how this module provides it:

- static inputs: each step copies its slice of the epoch permutation into one
  index buffer; the graph gathers the batch from the resident uint8 split itself;
- a learning rate the graph reads at replay time: every group's ``lr`` becomes a
  float32 device tensor, which torch's schedulers (``plateau`` included) update
  in place with ``fill_``; the optimizer is fused (SGD, Adam, AdamW) or built
  capturable (RMSprop), so its update reads that tensor at replay (which flags an
  optimizer takes is data on its schema, :func:`ablate.optim.speed_flags`);
- warm-up on a side stream before capture (cuDNN autotuning, lazy optimizer
  state), as torch's "whole network capture" recipe does. The warm-up steps are
  then undone: weights, buffers, optimizer state and RNG are put back, so the
  run trains on the same steps as an eager one.

Where capture is impossible the run trains eagerly and logs why. Everything but
the CUDA calls is exercised on CPU through :class:`EmulatedGraphs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor

log = logging.getLogger("ablate")

Body = Callable[[Tensor], tuple[Tensor, Tensor]]  # batch indices -> (loss, correct), with the optimizer step


def obstacle(device: torch.device, batches: Any) -> Optional[str]:
    """Why a run with this device and batch pipeline cannot capture its step, or None if it can."""
    if device.type != "cuda":
        return f"device is {device.type}"
    if not batches.capturable:
        return f"pipeline {type(batches).__name__} gathers batches on the host"
    return None


def wanted(setting: str, device: torch.device, batches: Any) -> bool:
    """Whether to graph the step: ``trainer.cuda_graph`` is ``true``, or ``auto`` where capture is possible."""
    setting = str(setting).lower()
    if setting == "false":
        return False
    why_not = obstacle(device, batches)
    if why_not and setting == "true":
        log.warning("cuda_graph requested but %s: running eager", why_not)
    return why_not is None


def lr_to_tensor(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make every group's lr a device tensor (also after ``load_state_dict`` put back a float or CPU tensor)."""
    for g in optimizer.param_groups:
        lr = g["lr"]
        if not (isinstance(lr, Tensor) and lr.device == device and lr.dtype == torch.float32):
            g["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)


def lr_to_float(optimizer: torch.optim.Optimizer) -> None:
    """Plain float lrs again, for eager training resumed from a graphed run's checkpoint."""
    for g in optimizer.param_groups:
        if isinstance(g["lr"], Tensor):
            g["lr"] = float(g["lr"])


class CudaGraphs:
    """The real thing: warm-up on a side stream, capture with ``torch.cuda.graph``."""

    def warmup(self, fn: Callable[[], Any], n: int) -> None:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(n):
                fn()
        torch.cuda.current_stream().wait_stream(s)

    def capture(self, fn: Callable[[], tuple[Tensor, ...]]) -> tuple[tuple[Tensor, ...], Callable[[], None]]:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        return out, g.replay


class EmulatedGraphs:
    """CPU stand-in for tests: "capture" runs the step once, "replay" runs it again
    and writes its results into the captured outputs, as a graph replay would."""

    def warmup(self, fn: Callable[[], Any], n: int) -> None:
        for _ in range(n):
            fn()

    def capture(self, fn: Callable[[], tuple[Tensor, ...]]) -> tuple[tuple[Tensor, ...], Callable[[], None]]:
        out = tuple(o.detach().clone() for o in fn())

        def replay() -> None:
            for o, new in zip(out, fn()):
                o.copy_(new)
        return out, replay


class GraphStep:
    """``step(idx) -> (loss, correct)`` by graph replay; captured on the first call.

    If warm-up or capture raises, the reason is logged once and every step runs
    ``body`` eagerly (the warm-up is undone either way). A batch of another size
    than the captured one (an epoch's ragged last batch, ``trainer.drop_last=false``)
    runs eagerly too: a graph replays one shape. It updates the same weights and
    optimizer state in place, so the next replay continues from it."""

    def __init__(self, body: Body, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, warmup: int = 3, graphs: Any = None, phases: Any = None) -> None:
        self.body, self.model, self.optimizer, self.device = body, model, optimizer, device
        self.phases = phases  # an ablate.phases.Phases: the warm-up and capture are charged to "warmup"
        self.n_warmup = warmup
        self.graphs = graphs if graphs is not None else CudaGraphs()
        self.replay: Optional[Callable[[], None]] = None
        self.eager = False
        self.idx: Optional[Tensor] = None
        self.out: tuple[Tensor, ...] = ()

    def __call__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if self.eager or (self.idx is not None and idx.shape != self.idx.shape):
            return self.body(idx)
        if self.replay is None:
            self._capture(idx)
            if self.eager:
                return self.body(idx)
        self.idx.copy_(idx)
        self.replay()
        return self.out[0], self.out[1]

    def _capture(self, idx: Tensor) -> None:
        t0 = time.perf_counter()
        try:
            self._warm_up_and_capture(idx)
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # once: the warm-up's kernels count as warm-up
            if self.phases is not None:  # it ran inside the epoch loop, whose time is added to train later
                spent = time.perf_counter() - t0
                self.phases.add("warmup", spent)
                self.phases.add("train", -spent)

    def _warm_up_and_capture(self, idx: Tensor) -> None:
        lr_to_tensor(self.optimizer, self.device)
        self.idx = idx.clone()
        try:
            with _undone(self.model, self.optimizer, self.device):
                self.graphs.warmup(lambda: self.body(self.idx), self.n_warmup)
                self.optimizer.zero_grad(set_to_none=True)  # backward in the graph allocates grads in its pool
                self.out, self.replay = self.graphs.capture(lambda: self.body(self.idx))
            log.info("cuda_graph: training step captured (%d warm-up steps, undone)", self.n_warmup)
        except Exception as e:  # noqa: BLE001  (any failure: train eagerly instead)
            self.replay, self.eager = None, True
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("cuda_graph: capture failed (%s: %s): running eager",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")


@contextmanager
def _undone(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Iterator[None]:
    """Put weights, buffers, optimizer state and the device RNG back as they were, in place
    (a captured graph holds their addresses). State the block creates is zeroed: that is
    how torch's optimizers start (SGD's momentum buffer included, with no dampening)."""
    with torch.no_grad():
        weights = [v.clone() for v in model.state_dict().values()]
        state = {(id(p), k): v.clone() for p, s in optimizer.state.items() for k, v in s.items()
                 if isinstance(v, Tensor)}
        cuda = device.type == "cuda"
        rng = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for v, w in zip(model.state_dict().values(), weights):
                v.copy_(w)
            for p, s in optimizer.state.items():
                for k, v in s.items():
                    if isinstance(v, Tensor):
                        old = state.get((id(p), k))
                        v.copy_(old) if old is not None else v.zero_()
            torch.cuda.set_rng_state(rng, device) if cuda else torch.set_rng_state(rng)
