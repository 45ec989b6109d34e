"""The figures of a trained model: feature-map grids, Grad-CAM over test images, the confusion matrix.

Each writes one file and returns its path; matplotlib runs on the Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..augment import normalize
from ..data import TensorData
from .probes import eval_mode, get_layer, gradcam


def _image(x: Tensor) -> tuple[np.ndarray, Optional[str]]:
    """uint8 ``[C, H, W]`` -> what imshow draws, and its colour map."""
    a = x.cpu().numpy()
    return (a[0], "gray") if a.shape[0] == 1 else (np.transpose(a, (1, 2, 0)), None)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_feature_maps(images: Tensor, maps: Tensor, labels: Sequence[str], layer: str, path: Path,
                      channels: int = 16) -> Path:
    """Rows: images (the input first); columns: the layer's first ``channels`` channels."""
    plt = _plt()
    n, c = maps.shape[0], min(channels, maps.shape[1])
    fig, axes = plt.subplots(n, c + 1, figsize=(1.1 * (c + 1), 1.15 * n + 0.4), squeeze=False,
                             layout="constrained")
    for i in range(n):
        img, cmap = _image(images[i])
        axes[i][0].imshow(img, cmap=cmap)
        axes[i][0].set_ylabel(labels[i], fontsize=7)
        for j in range(c):
            axes[i][j + 1].imshow(maps[i, j].float().cpu().numpy(), cmap="viridis")
            if i == 0:
                axes[i][j + 1].set_title(f"ch {j}", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("input", fontsize=7)
    shape = "x".join(map(str, maps.shape[1:]))
    fig.suptitle(f"feature maps of {layer} ({shape}; {c} of {maps.shape[1]} channels)", fontsize=9)
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
    plt = _plt()
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
    fig, axes = plt.subplots(3, n, figsize=(1.5 * n + 0.6, 5.0), squeeze=False, layout="constrained")
    _gradcam_axes(axes, images, cam_pred, cam_true, pred, probs.max(1).values, y, data.classes)
    fig.suptitle(f"{title + ': ' if title else ''}Grad-CAM on {name} (test images {', '.join(map(str, idx))})",
                 fontsize=9)
    return _save(fig, path)


def confusion_figure(cm: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Heat map of ``cm`` (rows: true class, columns: predicted), counts written in each cell."""
    plt = _plt()
    k = len(classes)
    size = 2.5 + 0.45 * k
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
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
