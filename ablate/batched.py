"""K models of one architecture as one batched model: the step of a packed group on CUDA.

Each step stacks every run's own parameters (``torch.stack`` of its leaves, so each
run's leaves get their own ``.grad``) and runs ``torch.func.functional_call`` under
``torch.func.vmap`` on a meta-device copy of the architecture; BatchNorm statistics
ride along stacked, updated in place, and are written back to each run's model
before it is evaluated. Convolutions become grouped convolutions over the runs.

Dropout cannot draw per run under ``vmap`` (``randomness="error"`` refuses any random
op inside), so each run's masks are drawn outside it, on the run's own RNG stream,
with the op ``nn.Dropout``/``nn.Dropout2d`` use on the CPU (``bernoulli_`` on a new
tensor, then ``div_``; a test checks them bitwise), and the template's dropout
layers multiply by them. :func:`capacity` measures how many runs fit on a GPU.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Optional

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .config import TrainerConf, typed
from .data import TensorData
from .device import release, use_amp

log = logging.getLogger("ablate")
DROPOUTS = (nn.Dropout, nn.Dropout2d)  # what the batched forward replaces by per-run masks
STATE_BYTES_PER_PARAM_BYTE = 4  # a run's leaves, their grads and up to two optimizer moments (Adam)


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
        self._order: dict[tuple[int, ...], list[tuple[str, tuple[int, ...]]]] = {}  # (layer, noise shape) as run
        self._batched = vmap(self._one, randomness="error")  # any random op inside would be shared: refuse it

    def run_order(self, x_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
        """Each dropout layer with its noise shape for one run's batch of ``x_shape``, in the order the layers
        run (which need not be the order a model declares them in)."""
        if x_shape not in self._order:
            order: list[str] = []
            hooks = [self.template.get_submodule(n).register_forward_pre_hook(
                lambda m, a, n=n: order.append(n)) for n in self.dropouts]
            try:
                with torch.no_grad():
                    self.template.train()(torch.empty(x_shape, device="meta"))
            finally:
                for h in hooks:
                    h.remove()
            self._order[x_shape] = [(n, self.template.get_submodule(n).probed) for n in order]
        return self._order[x_shape]

    def mask_shapes(self, x_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Each dropout layer's noise shape for one run's batch of ``x_shape``, in the order the layers run."""
        return [shape for _, shape in self.run_order(x_shape)]

    def draw_masks(self, model: nn.Module, x_shape: tuple[int, ...]) -> list[Tensor]:
        """One run's masks for one step, with its own layers' rates, from the global RNG (the run's stream)."""
        return [draw_mask(shape, model.get_submodule(name).p, self.mask_dtype, self.device)
                for name, shape in self.run_order(x_shape)]

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


def capacity(cfg: DictConfig, data: TensorData, device: torch.device, max_group: int,
             memory_fraction: float) -> int:
    """How many runs of ``cfg``'s architecture one group may hold: ``max_group`` on the CPU; on CUDA also what
    fits in ``memory_fraction`` of the free memory, measured by a probe step of one and of two runs (peak
    memory from ``torch.cuda.max_memory_allocated``; the difference is one run's activations) plus each run's
    parameters, gradients and optimizer moments."""
    if device.type != "cuda":
        return max_group
    from .models import build_model  # torch-free at import; here for the probe's model

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
