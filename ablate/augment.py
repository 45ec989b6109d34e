"""Data augmentation: a batched on-device version and the classic per-sample one.

:class:`BatchAugment` is the training hot path of the resident pipeline, where the
whole train split sits on the accelerator as uint8. torchvision's v2 random
transforms draw one parameter set per call, so on a batch every image would get
the same crop, flip and angle; here every image draws its own, from torch's
global RNG on the batch's device (seeding torch reproduces them). Nothing syncs
with the host and every shape is static, so the module can be captured in a CUDA
graph or compiled: branches depend on the config only, never on tensor values.

:func:`torchvision_transform` builds the same augmentation from stock per-sample
v2 transforms for the DataLoader pipeline.

Order, as in the CIFAR tutorial: crop -> flip -> colour jitter -> rotation ->
to float and normalise -> erasing (after normalisation, filling 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import AugmentConf, typed

_ERASE_RATIO = (0.3, 3.3)
_ERASE_TRIES = 10  # torchvision's RandomErasing attempts per image
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _stats(mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    return m, s


def _normalize_float(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x - mean) / std


_STATS_CACHE: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` (what eval batches get).

    Statistics given as numbers are cached per device, so repeated calls do not
    copy them host -> device every batch."""
    if isinstance(mean, Tensor) or isinstance(std, Tensor):
        m, s = _stats(mean, std, x.device)
    else:
        key = (tuple(mean), tuple(std), x.device)
        if key not in _STATS_CACHE:
            _STATS_CACHE[key] = _stats(mean, std, x.device)
        m, s = _STATS_CACHE[key]
    return _normalize_float(x.float() / 255.0, m, s)


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> Tensor:
    """``n`` per-image factors ``[n, 1, 1, 1]`` uniform in ``[lo, hi]``."""
    return (torch.rand(n, 1, 1, 1, device=device) * (hi - lo) + lo)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """RGB -> HSV, ``h += shift`` (mod 1), back; batched, float in [0, 1]."""
    r, g, b = x.unbind(dim=1)
    minc, maxc = torch.aminmax(x, dim=1)
    delta = maxc - minc
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, torch.remainder((g - b) / d, 6.0),
                    torch.where(maxc == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    h6 = torch.remainder(h + 6.0 * shift.view(-1, 1, 1), 6.0).unsqueeze(1)
    # HSV -> RGB as channel_n = v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6,
    # n = 5, 3, 1 for R, G, B; v = max and v*s = max - min.
    n = (5.0 - 2.0 * torch.arange(3, device=x.device, dtype=x.dtype)).view(1, 3, 1, 1)  # no host copy
    k = torch.remainder(n + h6, 6.0)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def _rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image by its own angle (counter-clockwise, like torchvision's
    ``rotate``): nearest neighbour about the centre, zero fill, same geometry as
    torchvision's affine grid."""
    b, _, h, w = x.shape
    a = torch.deg2rad(degrees).view(b, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device).view(1, 1, w)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device).view(1, h, 1)
    gx = (cos * xs - sin * ys) * (2.0 / w)
    gy = (sin * xs + cos * ys) * (2.0 / h)
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class BatchAugment(torch.nn.Module):
    """Per-sample augmentation of a uint8 batch on its own device, returning the
    normalised float32 batch; see the module docstring for the guarantees."""

    def __init__(self, cfg: AugmentConf | Any, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.cfg: AugmentConf = typed(cfg, AugmentConf)
        m, s = _stats(mean, std, torch.device("cpu"))
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    def extra_repr(self) -> str:
        return repr(self.cfg)

    def forward(self, x: Tensor) -> Tensor:
        if self.mean.device != x.device:  # once, if the module was not moved with .to()
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        if x.device.type not in ("cpu", "cuda"):  # e.g. meta: no autocast there
            return self._forward(x)
        # Autocast must not drop the sampling grid or the output to bf16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        if cfg.crop_padding or cfg.hflip:
            x = self._crop_flip(x)
        f = x.float() / 255.0
        if cfg.jitter:
            f = self._jitter(f)
        if cfg.rotation:
            angle = (torch.rand(f.shape[0], device=f.device) * 2.0 - 1.0) * cfg.rotation
            f = _rotate(f, angle)
        out = _normalize_float(f, self.mean, self.std)
        if cfg.erasing:
            out = self._erase(out)
        return out

    def _crop_flip(self, x: Tensor) -> Tensor:
        """Pad once, then one gather with per-image row/column indices: exact integer
        shifts (RandomCrop(padding) offsets uniform in [0, 2p]) and flips, in uint8."""
        b, c, h, w = x.shape
        p = self.cfg.crop_padding
        dev = x.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if p:
            x = F.pad(x, (p, p, p, p))
            rows = rows + torch.randint(0, 2 * p + 1, (b, 1), device=dev)
            left = torch.randint(0, 2 * p + 1, (b, 1), device=dev)
        if self.cfg.hflip:
            flip = torch.rand(b, 1, device=dev) < self.cfg.hflip
            cols = torch.where(flip, (w - 1) - cols, cols)
        if p:
            cols = cols + left
        wp = w + 2 * p
        idx = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
        return x.reshape(b, c, -1).gather(2, idx).view(b, c, h, w)

    def _jitter(self, x: Tensor) -> Tensor:
        """ColorJitter per image, in float [0, 1]. torchvision shuffles the four ops on
        every call; here the order is fixed: brightness, contrast, saturation, hue.
        Saturation and hue leave 1-channel images alone, as torchvision's do. Values stay
        float between ops, where torchvision on uint8 re-quantises after each one."""
        cfg = self.cfg
        b, c = x.shape[:2]
        if cfg.brightness:
            f = _uniform(b, max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness, x.device)
            x = (x * f).clamp_(0.0, 1.0)
        if cfg.contrast:
            f = _uniform(b, max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast, x.device)
            gray = _gray(x) if c == 3 else x
            x = _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), f)
        if c == 3 and cfg.saturation:
            f = _uniform(b, max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation, x.device)
            x = _blend(x, _gray(x), f)
        if c == 3 and cfg.hue:
            x = _shift_hue(x, (torch.rand(b, device=x.device) * 2.0 - 1.0) * cfg.hue)
        return x

    def _erase(self, x: Tensor) -> Tensor:
        """RandomErasing per image: each draws 10 candidate boxes at once and keeps the
        first that fits (none fits -> untouched), as torchvision's loop does."""
        b, _, h, w = x.shape
        dev = x.device
        lo, hi = self.cfg.erasing_scale
        area = (torch.rand(b, _ERASE_TRIES, device=dev) * (hi - lo) + lo) * (h * w)
        lr0, lr1 = math.log(_ERASE_RATIO[0]), math.log(_ERASE_RATIO[1])
        aspect = torch.exp(torch.rand(b, _ERASE_TRIES, device=dev) * (lr1 - lr0) + lr0)
        eh = torch.round(torch.sqrt(area * aspect))
        ew = torch.round(torch.sqrt(area / aspect))
        fits = (eh < h) & (ew < w)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
        eh, ew = eh.gather(1, first), ew.gather(1, first)  # [b, 1]
        top = torch.floor(torch.rand(b, 1, device=dev) * (h - eh + 1))
        left = torch.floor(torch.rand(b, 1, device=dev) * (w - ew + 1))
        on = (torch.rand(b, 1, device=dev) < self.cfg.erasing) & fits.any(dim=1, keepdim=True)
        r = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
        cc = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
        t, lf, eh, ew, on = (v.view(b, 1, 1) for v in (top, left, eh, ew, on))
        box = on & (r >= t) & (r < t + eh) & (cc >= lf) & (cc < lf + ew)
        return x.masked_fill(box.unsqueeze(1), 0.0)


def torchvision_transform(cfg: AugmentConf, mean: Sequence[float], std: Sequence[float],
                          train: bool = True, size: Sequence[int] | None = None) -> Any:
    """The same augmentation as :class:`BatchAugment` for one uint8 CHW image of ``size`` (H, W), from
    stock v2 transforms (for the DataLoader pipeline); ``train=False`` only normalises."""
    from torchvision.transforms import v2

    cfg = typed(cfg, AugmentConf)
    ops: list[Any] = []
    if train:
        if cfg.crop_padding:
            if size is None:
                raise ValueError("torchvision_transform: a padded crop needs the image size (size=(H, W))")
            ops.append(v2.RandomCrop(list(size), padding=cfg.crop_padding, fill=0))
        if cfg.hflip:
            ops.append(v2.RandomHorizontalFlip(cfg.hflip))
        if cfg.jitter:
            ops.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None,
                                      saturation=cfg.saturation or None, hue=cfg.hue or None))
        if cfg.rotation:
            ops.append(v2.RandomRotation(cfg.rotation))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if train and cfg.erasing:
        ops.append(v2.RandomErasing(cfg.erasing, scale=tuple(cfg.erasing_scale), ratio=_ERASE_RATIO, value=0))
    return v2.Compose(ops)
