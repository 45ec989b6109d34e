"""What a model computes on given images: layer outputs, Grad-CAM, predictions, the confusion matrix.

Each works on any ``nn.Module`` and tensors (no run directory needed), runs the
model in eval mode and restores its mode afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import normalize
from ..config import require
from ..models import last_conv


class InspectError(ValueError):
    """A run directory or layer that cannot be inspected; the message is one line."""


def get_layer(model: nn.Module, layer: Union[str, nn.Module, None]) -> tuple[str, nn.Module]:
    """(name, module) for a layer given by name or module; None = the last Conv2d."""
    named = dict(model.named_modules())
    if layer is None:
        try:
            layer = last_conv(model)
        except ValueError as e:
            raise InspectError(f"{e}: Grad-CAM needs a conv layer") from None
    if isinstance(layer, nn.Module):
        for n, m in named.items():
            if m is layer:
                return n, m
        raise InspectError(f"layer {type(layer).__name__} is not part of the model")
    if layer not in named or layer == "":
        known = ", ".join(n for n in named if n)
        raise InspectError(f"layer {layer!r} is not in the model; known: {known}")
    return layer, named[layer]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block; its own mode afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def feature_maps(model: nn.Module, x: Tensor, layers: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """Each named layer's output for input ``x`` (eval mode, detached); None = every Conv2d."""
    if layers is None:
        layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    mods = [get_layer(model, n) for n in layers]
    out: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o.detach())) for n, m in mods]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def gradcam(model: nn.Module, x: Tensor, target_class: Union[int, Sequence[int], Tensor],
            layer: Union[str, nn.Module, None] = None) -> Tensor:
    """Grad-CAM ``[B, H, W]`` in [0, 1] for each image's ``target_class`` (Selvaraju et al. 2017).

    Hooks the layer's output A, takes the gradient of the class score (logit) with
    respect to A, weights A's channels by their spatial mean gradient, keeps the
    positive part, upsamples bilinearly to the image size and divides each map by
    its maximum (an all-zero map stays zero). Parameter ``.grad``s are untouched."""
    _, mod = get_layer(model, layer)
    acts: list[Tensor] = []
    handle = mod.register_forward_hook(lambda _m, _i, o: acts.append(o))
    target = torch.as_tensor(target_class, device=x.device).long().reshape(-1).expand(len(x))
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            logits = model(x.detach().clone())
            if not acts or acts[-1].dim() != 4:
                raise InspectError(f"Grad-CAM layer {get_layer(model, layer)[0]!r} must output [B, C, H, W]")
            a = acts[-1]
            score = logits.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, a)
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return cam / peak


def predict(model: nn.Module, x: Tensor, batch_size: int = 1024, mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None) -> Tensor:
    """Predicted class of every image; uint8 images are normalised batch by batch with ``mean``/``std``."""
    preds = []
    with eval_mode(model), torch.inference_mode():
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            if xb.dtype == torch.uint8:
                require(mean is not None and std is not None, "mean/std", None, "needed to normalise uint8 images")
                xb = normalize(xb, mean, std)
            preds.append(model(xb).argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def confusion_matrix(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, batch_size: int = 1024,
                     mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> np.ndarray:
    """``[true, predicted]`` counts over (x, y); sums to ``len(y)``."""
    p = predict(model, x, batch_size, mean, std).cpu()
    idx = y.cpu().long() * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).numpy()


def fixed_indices(y: Tensor, k: int) -> list[int]:
    """The first test image of each class in turn, ``k`` in all: the same images in every run."""
    y = y.cpu()
    queues = [torch.nonzero(y == c).flatten().tolist() for c in range(int(y.max()) + 1 if len(y) else 0)]
    out: list[int] = []
    depth = 0
    while len(out) < min(k, len(y)):
        for q in queues:
            if depth < len(q) and len(out) < k:
                out.append(q[depth])
        depth += 1
    return out
