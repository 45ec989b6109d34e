"""``python -m ablate.inspect``: look inside a model (layer table) or a trained run (maps, Grad-CAM, confusion).

Two modes, chosen by the first argument::

    python -m ablate.inspect model=lenet dataset=fashion_mnist [more overrides]
    python -m ablate.inspect RUN_DIR [inspect.images=4 inspect.layers=[conv1] data.root=...]

The first builds the model for one input of the data set's shape (no data files
needed) and prints every layer's output shape, parameters and multiply-adds:
what the tutorials print by hand. The second reloads a finished run from its
``.hydra/config.yaml`` and ``model.pt`` and writes into ``RUN_DIR/inspect/``
the feature maps of chosen layers, Grad-CAM heat maps and the test-set
confusion matrix. :func:`arm_panels` draws the two panels the sweep report
shows for its best and worst arm, on the same fixed test images.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from .compose import compose as _compose
from .config import ConfigError, InspectConf, require, typed
from .data import dataset_shape

INSPECT_DIR = "inspect"
USAGE = ("usage: python -m ablate.inspect model=NAME dataset=NAME [overrides]   (layer table)\n"
         "       python -m ablate.inspect RUN_DIR [inspect.KEY=VALUE ...] [data.root=DIR]   "
         "(feature maps, Grad-CAM, confusion matrix -> RUN_DIR/inspect/)")

class InspectError(ValueError):
    """A run directory or layer that cannot be inspected; the message is one line."""


# ----------------------------------------------------------------------------- layer table
def _mult_adds(module: nn.Module, out: Tensor) -> int:
    """Multiply-adds of one call (bias adds not counted): Conv2d and Linear only."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> pd.DataFrame:
    """One row per leaf-module call on one input of ``input_shape`` (C, H, W), in execution order.

    Columns: ``layer`` (name), ``type``, ``output_shape`` (tuple, batch dimension dropped),
    ``output`` (``6x28x28``), ``params``, ``trainable``, ``mult_adds``. Runs in eval mode
    (a batch of one through BatchNorm1d) and restores the model's mode afterwards."""
    rows: list[dict[str, Any]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        shape = tuple(out.shape[1:]) if isinstance(out, Tensor) else ()
        own = list(module.parameters(recurse=False))
        rows.append(dict(layer=names[module], type=type(module).__name__, output_shape=shape,
                         output="x".join(map(str, shape)) or "-", params=sum(p.numel() for p in own),
                         trainable=sum(p.numel() for p in own if p.requires_grad),
                         mult_adds=_mult_adds(module, out) if isinstance(out, Tensor) else 0))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    p = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return pd.DataFrame(rows, columns=["layer", "type", "output_shape", "output", "params", "trainable",
                                      "mult_adds"])


def format_table(model: nn.Module, input_shape: Sequence[int], title: str = "") -> str:
    """The layer table as text, with totals from the model itself (shared weights counted once)."""
    from .models import count_parameters

    df = layer_table(model, input_shape)
    cells = [["layer", "type", "output", "params", "mult-adds"]]
    cells += [[r.layer, r.type, r.output, f"{r.params:,}", f"{r.mult_adds:,}" if r.mult_adds else "-"]
              for r in df.itertuples()]
    widths = [max(len(row[i]) for row in cells) for i in range(5)]
    text = "\n".join("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    macs = int(df["mult_adds"].sum())
    lines = [title] if title else []
    lines += [f"input: {'x'.join(map(str, input_shape))} (one image)",
              text,
              f"parameters: {total:,} total, {trainable:,} trainable",
              f"forward: {macs:,} multiply-adds per image ({macs / 1e6:.3g} M; Conv2d and Linear only)"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- config
def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/inspect.yaml`` (the training config plus ``inspect``) with Hydra overrides."""
    return _compose(overrides, "inspect")


def model_report(cfg: DictConfig) -> str:
    """The layer table of ``cfg.model`` for one input of ``cfg.dataset``'s shape."""
    from .models import build_model

    c, h, w, k = dataset_shape(cfg.dataset)
    model = build_model(cfg.model, c, (h, w), k)
    return format_table(model, (c, h, w), f"model={cfg.model.name} dataset={cfg.dataset.name} ({k} classes)")


# ----------------------------------------------------------------------------- tensors
def get_layer(model: nn.Module, layer: Union[str, nn.Module, None]) -> tuple[str, nn.Module]:
    """(name, module) for a layer given by name or module; None = the last Conv2d."""
    from .models import last_conv

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
def _eval(model: nn.Module) -> Iterator[nn.Module]:
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
        with _eval(model), torch.no_grad():
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
        with _eval(model), torch.inference_mode(False), torch.enable_grad():
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
    from .augment import normalize

    preds = []
    with _eval(model), torch.inference_mode():
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


# ----------------------------------------------------------------------------- run dirs
@dataclass
class LoadedRun:
    """A finished run, reloaded: its config, model (eval mode) and test data."""

    cfg: DictConfig
    model: nn.Module
    data: Any  # ablate.data.TensorData
    device: torch.device


_DATA_CACHE: dict[str, Any] = {}


def _load_data(cfg: DictConfig) -> Any:
    """The run's data set; the last one stays cached (the report reloads it for a second arm)."""
    from .data import load_dataset

    key = json.dumps([OmegaConf.to_container(cfg.dataset, resolve=True),
                      OmegaConf.to_container(cfg.data, resolve=True)], sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(cfg.dataset, cfg.data)
    return _DATA_CACHE[key]


def load_run(run_dir: Path | str, data_overrides: Optional[dict] = None, device: str = "cpu") -> LoadedRun:
    """Config from ``.hydra/config.yaml``, weights from ``model.pt`` (``weights_only``), data from the config."""
    from .models import build_model
    from .train import resolve_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InspectError(f"{run_dir} is not a directory")
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise InspectError(f"{run_dir} has no .hydra/config.yaml: not a run directory of python -m ablate.run")
    weights = run_dir / "model.pt"
    if not weights.is_file():
        status = None
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((run_dir / "summary.json").read_text()).get("status")
        raise InspectError(f"{run_dir} has no model.pt: the run did not complete"
                           f"{f' (summary.json: status {status})' if status else ''}; "
                           "finish it by relaunching the same command, or inspect a completed run")
    cfg = OmegaConf.load(cfg_path)
    if data_overrides:
        cfg.data = OmegaConf.merge(cfg.get("data") or {}, data_overrides)
    for key in ("dataset", "model", "data"):
        if key not in cfg:
            raise InspectError(f"{cfg_path} has no {key!r} section")
    data = _load_data(cfg)
    dev = resolve_device(device)
    model = build_model(cfg.model, data.channels, data.image_size, data.num_classes)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # a crafted pickle is refused by weights_only, never executed
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InspectError(f"{weights} does not load into model={cfg.model.name}: {msg}") from None
    return LoadedRun(cfg, model.to(dev).eval(), data, dev)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "layer"


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


def gradcam_figure(run: LoadedRun, indices: Sequence[int], layer: Optional[str], path: Path,
                   title: str = "") -> Path:
    """Grad-CAM of the predicted and the true class over the test images ``indices``."""
    from .augment import normalize

    plt = _plt()
    idx = _check_indices(run, indices)
    images = run.data.test_x[idx]
    y = run.data.test_y[idx]
    x = normalize(images.to(run.device), run.data.mean, run.data.std)
    with _eval(run.model), torch.inference_mode():
        probs = run.model(x).softmax(1).cpu()
    pred = probs.argmax(1)
    name, _ = get_layer(run.model, layer)
    cam_pred = gradcam(run.model, x, pred.to(run.device), name).cpu()
    cam_true = gradcam(run.model, x, y.to(run.device), name).cpu()
    n = len(idx)
    fig, axes = plt.subplots(3, n, figsize=(1.5 * n + 0.6, 5.0), squeeze=False, layout="constrained")
    _gradcam_axes(axes, images, cam_pred, cam_true, pred, probs.max(1).values, y, run.data.classes)
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


def _check_indices(run: LoadedRun, indices: Optional[Sequence[int]], k: int = 8) -> list[int]:
    n = len(run.data.test_y)
    if indices is None:
        return fixed_indices(run.data.test_y, k)
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise InspectError(f"test image indices {bad or idx} are out of range: the test split has {n} images")
    return idx


def _run_confusion(run: LoadedRun, batch_size: int = 1024) -> np.ndarray:
    return confusion_matrix(run.model, run.data.test_x.to(run.device), run.data.test_y, run.data.num_classes,
                            batch_size, run.data.mean, run.data.std)


def inspect_run(run_dir: Path | str, out_dir: Path | str | None = None, conf: Optional[InspectConf] = None,
                data_overrides: Optional[dict] = None) -> dict[str, Path]:
    """Write feature maps, Grad-CAM, the confusion matrix and the layer table of a finished run.

    Returns ``{"feature_maps_<layer>": png, "gradcam": png, "confusion": png,
    "confusion_csv": csv, "layers": txt}``; ``out_dir`` defaults to ``RUN_DIR/inspect``."""
    conf = typed(conf or InspectConf(), InspectConf)
    run = load_run(run_dir, data_overrides, conf.device)
    out = Path(out_dir or conf.out_dir or Path(run_dir) / INSPECT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    from .augment import normalize

    idx = _check_indices(run, None, conf.images)
    images, y = run.data.test_x[idx], run.data.test_y[idx]
    labels = [f"{i}: {run.data.classes[int(c)]}" for i, c in zip(idx, y)]
    maps = feature_maps(run.model, normalize(images.to(run.device), run.data.mean, run.data.std), conf.layers)
    for name, m in maps.items():
        if m.dim() != 4:
            raise InspectError(f"inspect.layers: {name!r} outputs {tuple(m.shape[1:])}, not feature maps "
                               "(C x H x W); pick a conv, activation or pooling layer")
    get_layer(run.model, conf.gradcam_layer)  # a bad name fails before anything is drawn
    for name, m in maps.items():
        key = f"feature_maps_{_slug(name)}"
        written[key] = plot_feature_maps(images, m, labels, name, out / f"{key}.png", conf.channels)
    written["gradcam"] = gradcam_figure(run, idx, conf.gradcam_layer, out / "gradcam.png")
    cm = _run_confusion(run, conf.batch_size)
    written["confusion"] = confusion_figure(cm, run.data.classes, out / "confusion.png")
    written["confusion_csv"] = write_confusion_csv(cm, run.data.classes, out / "confusion.csv")
    c, h, w = run.data.channels, *run.data.image_size
    (out / "layers.txt").write_text(format_table(run.model, (c, h, w), f"{Path(run_dir)}") + "\n")
    written["layers"] = out / "layers.txt"
    return written


def arm_panels(run_dir: Path | str, out_dir: Path | str, image_indices: Optional[Sequence[int]] = None, *,
               prefix: str = "", title: str = "", gradcam_layer: Optional[str] = None,
               device: str = "cpu", data_overrides: Optional[dict] = None) -> dict[str, Path]:
    """The report's panels for one arm's run: confusion matrix and Grad-CAM on fixed test images.

    Writes ``<out_dir>/<prefix>confusion.png``, ``<prefix>confusion.csv`` and
    ``<prefix>gradcam.png``; returns ``{"confusion": png, "confusion_csv": csv,
    "gradcam": png}``. Pass the same ``image_indices`` for every arm (None = the
    first test image of each class in turn, 8 in all, which is the same for runs
    on the same data set); ``data_overrides`` replace keys of the run's ``data``
    section (the report passes ``{"download": False}``). Raises :class:`InspectError`
    (one line) for a run without ``model.pt``, and ``ablate.data.DataError`` when
    its data is gone."""
    run = load_run(run_dir, data_overrides, device)
    out = Path(out_dir)
    idx = _check_indices(run, image_indices)
    cm = _run_confusion(run)
    return {
        "confusion": confusion_figure(cm, run.data.classes, out / f"{prefix}confusion.png", title),
        "confusion_csv": write_confusion_csv(cm, run.data.classes, out / f"{prefix}confusion.csv"),
        "gradcam": gradcam_figure(run, idx, gradcam_layer, out / f"{prefix}gradcam.png", title),
    }


# ----------------------------------------------------------------------------- CLI
def _run_dir_mode(run_dir: Path, overrides: Sequence[str]) -> str:
    bad = [o for o in overrides if not o.lstrip("+~").startswith(("inspect.", "data."))]
    if bad:
        raise InspectError(f"{bad[0]!r}: with RUN_DIR only inspect.* and data.* can be overridden "
                           "(the model and data set come from the run's own config)")
    cfg = compose(overrides)
    data_keys = {o.lstrip("+~").split("=", 1)[0].split(".", 1)[1] for o in overrides if o.lstrip("+~").startswith("data.")}
    data_over = {k: cfg.data[k] for k in data_keys if k in cfg.data}
    written = inspect_run(run_dir, None, typed(cfg.inspect, InspectConf), data_over)
    cm = pd.read_csv(written["confusion_csv"], index_col=0).to_numpy()
    acc = np.trace(cm) / cm.sum() if cm.sum() else float("nan")
    lines = [f"{run_dir}: test accuracy {100 * acc:.2f}% on {int(cm.sum())} images; wrote"]
    lines += [f"  {p}" for p in written.values()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch on the first argument: an existing directory is a run, anything else overrides."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .data import DataError

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__.split("Two modes", 1)[0].strip())
        return 0
    try:
        # A sweep's job directories are named from their overrides (scheduler=cosine,trainer.seed=0):
        # a directory with a run's .hydra/ is a run even when its name looks like an override.
        first = Path(args[0]) if args else None
        if first is not None and first.is_dir() and ("=" not in args[0] or (first / ".hydra").is_dir()):
            print(_run_dir_mode(first, args[1:]))
        elif args and "=" not in args[0]:
            raise InspectError(f"{args[0]} is neither a run directory nor an override (key=value); "
                               "see python -m ablate.inspect --help")
        else:
            print(model_report(compose(args)))
    except (InspectError, ConfigError, DataError) as e:
        sys.exit(f"ablate.inspect: {e}")
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split("Config search path")[0].split()) or type(e).__name__
        sys.exit(f"ablate.inspect: {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
