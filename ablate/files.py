"""The files of a run directory, written so that a crash never leaves one half-written.

JSON and checkpoints go to a temporary file in the same directory and are renamed
into place (``os.replace`` is atomic on POSIX). CSV rows are appended one epoch
at a time with a single ``write`` and an ``fsync``, so a killed process leaves
whole rows only; a resume cuts the CSVs back to the last checkpointed epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

EPOCH_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "images_per_second"]
STEP_COLUMNS = ["step", "epoch", "lr", "loss"]

EPOCHS_CSV = "epochs.csv"
STEPS_CSV = "steps.csv"
SUMMARY_JSON = "summary.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temporary files a killed writer left in ``run_dir`` (the real files are untouched)."""
    gone = []
    for name in (SUMMARY_JSON, CHECKPOINT, MODEL, EPOCHS_CSV, STEPS_CSV):
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_finite(obj), indent=2, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> dict | None:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    if header:
        w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: the same seed must give byte-identical rows
    return "" if v is None else v


def append_rows(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Append whole rows in one write (with the header if the file is new), then fsync."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    data = _csv_text(columns, rows, header=new).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of a CSV written by :func:`append_rows` (a torn last line is dropped)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r for r in rows if None not in r.values()]


def truncate_rows(path: Path, columns: Sequence[str], keep_through_epoch: int) -> list[dict[str, str]]:
    """Keep only rows of epochs <= ``keep_through_epoch`` (atomically); returns them."""
    rows = [r for r in read_rows(path) if int(r["epoch"]) <= keep_through_epoch]
    atomic_write_bytes(path, _csv_text(columns, rows, header=True).encode())
    return rows
