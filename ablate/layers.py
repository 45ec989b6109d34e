"""Building blocks torch.nn lacks, for the builders in :mod:`ablate.models`.

Kept apart from ``models`` because defining an ``nn.Module`` subclass needs
torch at import time, and the module that registers the model schemas must not
import torch (``python -m ablate.run --help`` stays light).
"""

from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Module):
    """``act(main(x) + shortcut(x))``: a residual block whose parts are built by the caller.

    ``shortcut`` is ``nn.Identity`` or a projection (1x1 conv + norm) where the
    shape changes. It is registered, and run, before ``main``, so leaf modules
    run in registration order (what forward-hook layer tables expect) and the
    last ``nn.Conv2d`` in ``named_modules()`` order is the main path's last conv
    (what Grad-CAM hooks), never a projection."""

    def __init__(self, shortcut: nn.Module, main: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.main = main
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        skip = self.shortcut(x)
        return self.act(self.main(x) + skip)
