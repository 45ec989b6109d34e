"""The figures of a trained model: feature-map grids, Grad-CAM over test images, the confusion matrix.

Each writes one file and returns its path. Figures are ``matplotlib.figure.Figure``
objects saved directly, never pyplot's: drawing here neither needs nor switches a
backend, so a notebook's stays as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import normalize
from ..data import TensorData
from .probes import eval_mode, get_layer, gradcam


def _image(x: Tensor) -> tuple[np.ndarray, Optional[str]]:
    """uint8 ``[C, H, W]`` -> what imshow draws, and its colour map."""
    a = x.cpu().numpy()
    return (a[0], "gray") if a.shape[0] == 1 else (np.transpose(a, (1, 2, 0)), None)


def _figure(**kw: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kw)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


GRID_PADDING = 2  # pixels between tiles of a feature-map grid


def feature_grid(images: Tensor, maps: Tensor, channels: int = 16) -> Tensor:
    """One RGB image in [0, 1] (3 x H x W), tiled by ``torchvision.utils.make_grid``: a row per image, the
    input first, then its first ``channels`` maps, each upsampled (nearest) to the input's size, scaled
    to its own range and coloured with viridis."""
    from matplotlib import colormaps
    from torchvision.utils import make_grid

    n, c = maps.shape[0], min(channels, maps.shape[1])
    h, w = images.shape[-2:]
    m = F.interpolate(maps[:, :c].detach().float().cpu(), size=(h, w), mode="nearest")
    lo, hi = m.amin(dim=(2, 3), keepdim=True), m.amax(dim=(2, 3), keepdim=True)
    m = (m - lo) / (hi - lo).clamp_min(torch.finfo(m.dtype).tiny)
    coloured = torch.from_numpy(colormaps["viridis"](m.numpy())[..., :3]).float().permute(0, 1, 4, 2, 3)
    inputs = (images.detach().cpu().float() / 255).expand(n, 3, h, w).unsqueeze(1)  # grey inputs as RGB
    tiles = torch.cat([inputs, coloured], dim=1).reshape(n * (c + 1), 3, h, w)
    return make_grid(tiles, nrow=c + 1, padding=GRID_PADDING, pad_value=1.0)


def plot_feature_maps(images: Tensor, maps: Tensor, labels: Sequence[str], layer: str, path: Path,
                      channels: int = 16) -> Path:
    """Rows: images (the input first); columns: the layer's first ``channels`` channels (one image, one axes)."""
    n, c = maps.shape[0], min(channels, maps.shape[1])
    grid = feature_grid(images, maps, channels)
    tile_h, tile_w = images.shape[-2] + GRID_PADDING, images.shape[-1] + GRID_PADDING
    fig = _figure(figsize=(0.7 * (c + 1) + 1.0, 0.7 * n + 0.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([GRID_PADDING + tile_w * j + tile_w / 2 - 1 for j in range(c + 1)],
                  ["input", *(f"ch {j}" for j in range(c))], fontsize=6, rotation=90)
    ax.set_yticks([GRID_PADDING + tile_h * i + tile_h / 2 - 1 for i in range(n)], list(labels), fontsize=6)
    ax.tick_params(length=0)
    shape = "x".join(map(str, maps.shape[1:]))
    ax.set_title(f"feature maps of {layer} ({shape}; {c} of {maps.shape[1]} channels)", fontsize=8)
    return _save(fig, path)


def _gradcam_axes(axes: Any, images: Tensor, cam_pred: Tensor, cam_true: Tensor, pred: Tensor, prob: Tensor,
                  y: Tensor, classes: Sequence[str]) -> None:
    """Three rows on ``axes`` (image, Grad-CAM for the predicted class, for the true class)."""
    for i in range(len(images)):
        img, cmap = _image(images[i])
        gray = img if cmap else img.mean(axis=2)
        ok = int(pred[i]) == int(y[i])
        axes[0][i].imshow(img, cmap=cmap)
        axes[0][i].set_title(f"true: {classes[int(y[i])]}", fontsize=7)
        for row, cam, what in ((1, cam_pred, f"pred: {classes[int(pred[i])]} {float(prob[i]):.2f}"),
                               (2, cam_true, f"true: {classes[int(y[i])]}")):
            axes[row][i].imshow(gray, cmap="gray")
            axes[row][i].imshow(cam[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[row][i].set_title(what, fontsize=7, color="black" if ok or row == 2 else "red")
        for ax in (axes[0][i], axes[1][i], axes[2][i]):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("image", fontsize=8)
    axes[1][0].set_ylabel("Grad-CAM\npredicted", fontsize=8)
    axes[2][0].set_ylabel("Grad-CAM\ntrue class", fontsize=8)


def gradcam_figure(model: nn.Module, data: TensorData, indices: Sequence[int], layer: Optional[str], path: Path,
                   title: str = "") -> Path:
    """Grad-CAM of the predicted and the true class over the test images ``indices`` (valid indices)."""
    idx = list(indices)
    images = data.test_x[idx]
    y = data.test_y[idx]
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    x = normalize(images.to(device), data.mean, data.std)
    with eval_mode(model), torch.inference_mode():
        probs = model(x).softmax(1).cpu()
    pred = probs.argmax(1)
    name, _ = get_layer(model, layer)
    cam_pred = gradcam(model, x, pred.to(device), name).cpu()
    cam_true = gradcam(model, x, y.to(device), name).cpu()
    n = len(idx)
    fig = _figure(figsize=(1.5 * n + 0.6, 5.0), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    _gradcam_axes(axes, images, cam_pred, cam_true, pred, probs.max(1).values, y, data.classes)
    fig.suptitle(f"{title + ': ' if title else ''}Grad-CAM on {name} (test images {', '.join(map(str, idx))})",
                 fontsize=9)
    return _save(fig, path)


def confusion_figure(cm: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Heat map of ``cm`` (rows: true class, columns: predicted), counts written in each cell."""
    k = len(classes)
    size = 2.5 + 0.45 * k
    fig = _figure(figsize=(size + 1.0, size))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), labels=list(classes), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        hi = cm.max() / 2 if cm.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=6,
                        color="white" if cm[i, j] > hi else "black")
    n = int(cm.sum())
    acc = float(np.trace(cm)) / n if n else float("nan")
    ax.set_title(f"{title + ': ' if title else ''}confusion on {n} test images (accuracy {100 * acc:.2f}%)",
                 fontsize=9)
    return _save(fig, path)


def write_confusion_csv(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Rows: true class, columns: predicted class (counts)."""
    df = pd.DataFrame(cm, index=pd.Index(list(classes), name="true \\ predicted"), columns=list(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)
    return path
