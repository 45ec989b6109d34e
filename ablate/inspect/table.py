"""The layer table: every layer's output shape, parameters and multiply-adds for one input.

What the tutorials print by hand; it needs no data files, only the input's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..data import dataset_shape
from ..models import build_model, count_parameters


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


def model_report(cfg: Any) -> str:
    """The layer table of ``cfg.model`` for one input of ``cfg.dataset``'s shape."""
    c, h, w, k = dataset_shape(cfg.dataset)
    model = build_model(cfg.model, c, (h, w), k)
    return format_table(model, (c, h, w), f"model={cfg.model.name} dataset={cfg.dataset.name} ({k} classes)")
