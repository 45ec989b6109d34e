"""ablate: compose, sweep and compare small CNN training runs.

The Python API (:mod:`ablate.api`) is importable from here; it loads lazily, so
``import ablate`` stays light (no torch, no pandas until a function is called).
"""

from typing import Any

__version__ = "0.1.0"

_API = ("train_run", "sweep", "load_runs", "load_epochs")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ablate' has no attribute {name!r}")
