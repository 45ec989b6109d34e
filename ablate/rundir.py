"""The run directory: its file names, written so that a crash never leaves one half-written, and read back.

JSON and checkpoints go to a temporary file in the same directory and are renamed
into place (``os.replace`` is atomic on POSIX). CSV rows are appended one epoch
at a time with a single ``write`` and an ``fsync``, so a killed process leaves
whole rows only; a resume cuts the CSVs back to the last checkpointed epoch.

Every reader of a run (the run entry, the trainer, the report, inspect, bench)
goes through the functions here, so the layout is written down once. Nothing
here imports torch until a checkpoint is written or read.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
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
REPORT_DIR = "report"  # a sweep's report, next to its run directories; never a run
HYDRA_DIR = ".hydra"  # Hydra's record of the job: config.yaml, overrides.yaml, hydra.yaml
MULTIRUN_YAML = "multirun.yaml"  # Hydra's record of a whole sweep, in the sweep directory


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
    """The parsed JSON object, or None when the file is missing, unreadable or holds anything but an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


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


# --------------------------------------------------------------------------- reading a run
def read_yaml(path: Path) -> Any:
    """The parsed YAML file, or None when it is missing or unreadable."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def is_run_dir(path: Path) -> bool:
    """A directory a job wrote into: it holds summary.json, epochs.csv or Hydra's .hydra/."""
    p = Path(path)
    return any((p / n).exists() for n in (SUMMARY_JSON, EPOCHS_CSV, HYDRA_DIR))


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (itself included), sorted; a run directory's own subfolders,
    ``report/`` and hidden folders are not searched."""
    found = []
    stack = [Path(root)]
    while stack:
        d = stack.pop()
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        if is_run_dir(d):
            found.append(d)
            continue
        stack.extend(e for e in entries if e.is_dir() and e.name != REPORT_DIR and not e.name.startswith("."))
    return sorted(found)


def read_summary(run_dir: Path) -> dict | None:
    return read_json(Path(run_dir) / SUMMARY_JSON)


def read_config(run_dir: Path, summary: dict | None = None) -> dict:
    """The run's resolved config: the one its summary recorded, else Hydra's ``.hydra/config.yaml``."""
    summary = read_summary(run_dir) if summary is None else summary
    cfg = summary.get("config") if summary else None
    if not isinstance(cfg, dict):
        cfg = read_yaml(hydra_config_path(run_dir))
    return cfg if isinstance(cfg, dict) else {}


def hydra_config_path(run_dir: Path) -> Path:
    """Hydra's record of the job's resolved config (what reloads a trained model)."""
    return Path(run_dir) / HYDRA_DIR / "config.yaml"


def read_overrides(run_dir: Path, summary: dict | None = None) -> list[str]:
    """The job's overrides: from its summary, else ``.hydra/overrides.yaml``, else its directory name
    (a job dir is named from its overrides, :func:`ablate.config.job_dirname`)."""
    import re

    summary = read_summary(run_dir) if summary is None else summary
    over = summary.get("overrides") if summary else None
    if not isinstance(over, list):
        over = read_yaml(Path(run_dir) / HYDRA_DIR / "overrides.yaml")
    if not isinstance(over, list):  # launched, nothing written yet
        parts = re.split(r"(?<!\\),", Path(run_dir).name.split("~")[0])
        over = parts if all("=" in p for p in parts) else []
    return [str(o) for o in over]


def read_choices(run_dir: Path, summary: dict | None = None) -> dict[str, Any]:
    """The option chosen in each config group: from the summary, else Hydra's runtime record."""
    summary = read_summary(run_dir) if summary is None else summary
    choices = summary.get("choices") if summary else None
    if not isinstance(choices, dict):
        h = read_yaml(Path(run_dir) / HYDRA_DIR / "hydra.yaml") or {}
        choices = ((h.get("hydra") or {}).get("runtime") or {}).get("choices") if isinstance(h, dict) else None
    return dict(choices) if isinstance(choices, dict) else {}


def _whole_rows(path: Path) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    if not text.endswith("\n"):  # a torn last line from a killed writer
        text = text[: text.rfind("\n") + 1]
    return text if text.count("\n") >= 2 else None


def epochs_text(run_dir: Path) -> str | None:
    """``epochs.csv`` cut to whole rows, or None when it has no data row yet."""
    return _whole_rows(Path(run_dir) / EPOCHS_CSV)


def steps_text(run_dir: Path) -> str | None:
    """``steps.csv`` cut to whole rows, or None when it has no data row yet."""
    return _whole_rows(Path(run_dir) / STEPS_CSV)


# --------------------------------------------------------------------------- claiming a run
def claim(run_dir: Path, h: str) -> tuple[Path, dict | None]:
    """The directory this config's results belong in, and its earlier summary if any.

    A directory holding results of a *different* config (the YAML changed since)
    is left alone: this run gets a sibling named with its config hash, and the
    old directory gets back the config record Hydra just overwrote."""
    prev = read_summary(run_dir)
    if prev is None or prev.get("config_hash") == h:
        return run_dir, prev
    new = run_dir.with_name(f"{run_dir.name}~{h[:8]}")
    new.mkdir(parents=True, exist_ok=True)
    hyd = run_dir / HYDRA_DIR
    if hyd.is_dir():
        shutil.copytree(hyd, new / HYDRA_DIR, dirs_exist_ok=True)
        if prev.get("config") is not None:  # Hydra wrote this job's config over the old run's record
            import yaml

            atomic_write_bytes(hyd / "config.yaml", yaml.safe_dump(prev["config"], sort_keys=False).encode())
            atomic_write_bytes(hyd / "overrides.yaml", yaml.safe_dump(prev.get("overrides") or []).encode())
    logging.getLogger("ablate").warning("%s holds results of a different config; this run goes to %s", run_dir, new)
    _move_log(run_dir, new)
    return new, read_summary(new)


def _move_log(old: Path, new: Path) -> None:
    """Send the job log from ``old``'s log file to the same-named file in ``new``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == old.resolve():
            moved = logging.FileHandler(new / Path(h.baseFilename).name)
            moved.setFormatter(h.formatter)
            moved.setLevel(h.level)
            root.removeHandler(h)
            h.close()
            root.addHandler(moved)


# --------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A run directory's checkpoint cannot be loaded safely; the message is one line naming the file."""


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the training state (tensors, numbers, strings) as ``checkpoint.pt``, atomically."""
    atomic_torch_save(state, Path(run_dir) / CHECKPOINT)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's state, or None when there is none; a damaged or crafted file is a CheckpointError.

    Loaded with ``weights_only``: a pickle that would run code is refused, never executed."""
    import torch

    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a loadable ablate checkpoint ({type(e).__name__}); "
                              "delete it to retrain this run from scratch") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an ablate checkpoint; delete it to retrain this run from scratch")
    return state


def clear_results(run_dir: Path) -> None:
    """Remove a run's metrics, checkpoint and model: it starts again from epoch 1."""
    for name in (EPOCHS_CSV, STEPS_CSV, CHECKPOINT, MODEL):
        (Path(run_dir) / name).unlink(missing_ok=True)
