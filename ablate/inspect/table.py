"""The layer table: every layer's output shape, parameters and multiply-adds for one input.

What the tutorials print by hand; it needs no data files, only the input's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import nn

from ..data import dataset_shape
from ..models import build_model, count_parameters, layer_calls


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> pd.DataFrame:
    """One row per leaf-module call on one input of ``input_shape`` (C, H, W), in execution order.

    Columns: ``layer`` (name), ``type``, ``output_shape`` (tuple, batch dimension dropped),
    ``output`` (``6x28x28``), ``params``, ``trainable``, ``mult_adds``; the counting is
    :func:`ablate.models.layer_calls`', the same the trainer records in ``summary.json``."""
    df = pd.DataFrame(layer_calls(model, input_shape),
                      columns=["layer", "type", "output_shape", "params", "trainable", "mult_adds"])
    df.insert(3, "output", ["x".join(map(str, s)) or "-" for s in df.output_shape])
    return df


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
