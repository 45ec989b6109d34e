"""The process's torch state for one run: device, precision, seeding, RNG save/restore, backend flags.

Hydra's basic launcher runs every job of a sweep in one process and joblib reuses
its workers, so whatever one run sets globally (seeds, cuDNN flags, CUDA memory)
is reset here at the start of the next and released at its end.
"""

from __future__ import annotations

import gc
import random
from typing import Any

import numpy as np
import torch

from .config import ConfigError, TrainerConf


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without it is a ConfigError naming ``key``
    (the option the user set)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} is invalid: CUDA is not available here; use {key}=cpu")
    return torch.device(name)


def use_amp(t: TrainerConf, device: torch.device) -> bool:
    """bf16 autocast: asked for, or ``auto`` on CUDA (bf16 needs no gradient scaler)."""
    return t.amp == "bf16" or (t.amp == "auto" and device.type == "cuda")


def use_channels_last(t: TrainerConf, device: torch.device) -> bool:
    v = str(t.channels_last).lower()
    return v == "true" or (v == "auto" and device.type == "cuda")


def seed_everything(seed: int) -> None:
    """Re-seed every RNG a run touches, so jobs sharing a process do not leak state."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def prepare_backends(t: TrainerConf, device: torch.device) -> None:
    """Reset global torch flags to this run's settings (an earlier job may have changed them)."""
    if (torch.are_deterministic_algorithms_enabled() != t.deterministic
            or (t.deterministic and not torch.is_deterministic_algorithms_warn_only_enabled())):
        torch.use_deterministic_algorithms(t.deterministic, warn_only=True)  # imports inductor: ~3 s, so only on change
    torch.backends.cudnn.deterministic = t.deterministic
    torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)  # streams and graphs use the current device
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)


def rng_state() -> dict[str, Any]:
    """Every RNG state, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):  # resumable with fewer GPUs
            torch.cuda.set_rng_state(s, i)


def release(device: str | torch.device = "auto") -> None:
    """Free what a finished (or failed) run left behind, before the next job in this process."""
    gc.collect()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
