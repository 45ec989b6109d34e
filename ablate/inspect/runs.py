"""A finished run reloaded (config, weights, test data) and the files drawn from it.

:func:`inspect_run` writes what ``python -m ablate.inspect RUN_DIR`` shows;
:func:`arm_panels` draws the two panels the sweep report shows for its best and
worst arm, on the same fixed test images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .. import rundir
from ..augment import normalize
from ..config import InspectConf, typed
from ..data import TensorData, load_dataset
from ..device import resolve_device
from ..models import build_model
from .plots import confusion_figure, gradcam_figure, plot_feature_maps, write_confusion_csv
from .probes import InspectError, confusion_matrix, feature_maps, fixed_indices, get_layer
from .table import format_table

INSPECT_DIR = "inspect"  # RUN_DIR/inspect/ unless inspect.out_dir says otherwise
PANEL_IMAGES = 8  # test images in a Grad-CAM panel when none are chosen


@dataclass
class LoadedRun:
    """A finished run, reloaded: its config, model (eval mode) and test data."""

    cfg: DictConfig
    model: nn.Module
    data: TensorData
    device: torch.device


_DATA_CACHE: dict[str, Any] = {}


def _load_data(cfg: DictConfig) -> TensorData:
    """The run's data set; the last one stays cached (the report reloads it for a second arm)."""
    key = json.dumps([OmegaConf.to_container(cfg.dataset, resolve=True),
                      OmegaConf.to_container(cfg.data, resolve=True)], sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(cfg.dataset, cfg.data)
    return _DATA_CACHE[key]


def load_run(run_dir: Path | str, data_overrides: Optional[dict] = None, device: str = "cpu") -> LoadedRun:
    """Config from ``.hydra/config.yaml``, weights from ``model.pt`` (``weights_only``), data from the config."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InspectError(f"{run_dir} is not a directory")
    cfg_path = rundir.hydra_config_path(run_dir)
    if not cfg_path.is_file():
        raise InspectError(f"{run_dir} has no {cfg_path.relative_to(run_dir)}: "
                           "not a run directory of python -m ablate.run")
    weights = run_dir / rundir.MODEL
    if not weights.is_file():
        status = (rundir.read_summary(run_dir) or {}).get("status")
        raise InspectError(f"{run_dir} has no {rundir.MODEL}: the run did not complete"
                           f"{f' ({rundir.SUMMARY_JSON}: status {status})' if status else ''}; "
                           "finish it by relaunching the same command, or inspect a completed run")
    cfg = OmegaConf.load(cfg_path)
    if data_overrides:
        cfg.data = OmegaConf.merge(cfg.get("data") or {}, data_overrides)
    for key in ("dataset", "model", "data"):
        if key not in cfg:
            raise InspectError(f"{cfg_path} has no {key!r} section")
    data = _load_data(cfg)
    dev = resolve_device(device, key="inspect.device")
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


def _check_indices(run: LoadedRun, indices: Optional[Sequence[int]], k: int = PANEL_IMAGES) -> list[int]:
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
    written["gradcam"] = gradcam_figure(run.model, run.data, idx, conf.gradcam_layer, out / "gradcam.png")
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
        "gradcam": gradcam_figure(run.model, run.data, idx, gradcam_layer, out / f"{prefix}gradcam.png", title),
    }
