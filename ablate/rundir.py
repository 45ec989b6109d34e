"""The run directory: its file names, written so that a crash never leaves one half-written, and read back.

JSON and checkpoints go to a temporary file in the same directory and are renamed
into place (``os.replace`` is atomic on POSIX). CSV rows are appended one epoch
at a time with a single ``write`` and an ``fsync``, so a killed process leaves
whole rows only; a resume cuts the CSVs back to the last checkpointed epoch.

A run directory has one writer, the process holding its lock for the whole job
(:mod:`ablate.runlock`): :func:`claim` takes it before anything is modified.

Every reader of a run (the run entry, the trainer, the report, inspect, bench)
goes through the functions here, so the layout is written down once. Nothing
here imports torch until a checkpoint is written or read.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .runlock import RunLock, RunLocked

# train_* are the running means of the epoch's training steps (train mode, augmented); train_eval_* the clean
# pass over a fixed training subset; val_* the held-out split that chooses; test_* are reported only.
EPOCH_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "train_eval_loss", "train_eval_acc", "epoch_seconds", "images_per_second"]
STEP_COLUMNS = ["step", "epoch", "lr", "loss"]

EPOCHS_CSV = "epochs.csv"
STEPS_CSV = "steps.csv"
SUMMARY_JSON = "summary.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
BEST = "best.pt"  # the validation-best epoch's weights (trainer.save_best)
REPORT_DIR = "report"  # a sweep's report, next to its run directories; never a run
HYDRA_DIR = ".hydra"  # the job's record: config.yaml, overrides.yaml, hydra.yaml (written by the run entry)
MULTIRUN_YAML = "multirun.yaml"  # Hydra's record of a whole sweep, in the sweep directory
RESULTS = (EPOCHS_CSV, STEPS_CSV, CHECKPOINT, MODEL, BEST)  # what clear_results deletes
RECORD_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def _named(e: OSError, path: Path) -> OSError:
    """The same error with the file named: torch and ``os.write`` report a full disk without a path."""
    return OSError(e.errno, os.strerror(e.errno), str(path)) if e.errno else e


def _atomic(path: Path, write) -> None:
    path = Path(path)
    # Not mkstemp: its files are 0600; a run file gets the permissions the umask gives any new file.
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _named(e, path) from None
        raise


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temporary files a killed writer left in ``run_dir`` and its ``.hydra/`` (the real files are
    untouched). Only the run's lock holder calls this: another writer's temp file is never in flight."""
    gone = []
    record = [(Path(run_dir) / HYDRA_DIR, n) for n in RECORD_FILES]
    for where, name in [(Path(run_dir), n) for n in (SUMMARY_JSON, *RESULTS)] + record:
        for tmp in where.glob(f".{name}.*.tmp"):
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


def write_summary_anyway(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """``summary.json`` for a run that ends (failed), even on a full disk: atomically when there is room,
    else rewritten in place without the traceback (the old record's blocks are reused), so a run whose
    disk filled up is recorded ``failed`` rather than left ``running``."""
    path = Path(run_dir) / SUMMARY_JSON
    try:
        return atomic_write_json(path, summary)
    except OSError as e:
        if e.errno != errno.ENOSPC or not path.exists():
            raise
    data = (json.dumps(_finite({**summary, "traceback": None}), default=str) + "\n").encode()
    try:
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _named(e, path) from None


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Serialised in memory first, so a full disk is an ``OSError`` naming the file, not a torch message."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


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
    """Append whole rows (with the header if the file is new), then fsync; on a failed write
    (a full disk) the file is cut back to what it held, so it keeps whole rows only."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = os.fstat(fd).st_size
        data = memoryview(_csv_text(columns, rows, header=size == 0).encode())
        try:
            while data:  # a write can be short when the disk fills; the next one then raises
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, size)
            raise _named(e, path) from None
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


_NUMBER = (int, float)
# What each field of summary.json holds; a field holding anything else (a hand-edited or foreign file) reads as
# absent, so no reader meets a string where it counts epochs.
SUMMARY_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("status", "error", "traceback", "config_hash", "run_dir", "host", "heartbeat", "device",
                     "step_mode", "selection", "scheduler_metric"), str),
    **dict.fromkeys(("config", "choices", "phases"), dict), "overrides": list,
    **dict.fromkeys(("epochs_planned", "epochs_done", "best_epoch", "seed", "params", "mult_adds", "pid", "threads",
                     "packed"), int),
    **dict.fromkeys(("final_test_acc", "final_test_loss", "best_test_acc", "final_train_acc", "final_train_loss",
                     "final_val_acc", "final_val_loss", "best_val_acc", "test_acc_at_best", "final_train_eval_acc",
                     "final_train_eval_loss", "images_per_second", "seconds"), _NUMBER),
}


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary; None when missing or not a JSON object. Fields of the wrong type read as absent."""
    s = read_json(Path(run_dir) / SUMMARY_JSON)
    if s is None:
        return None
    return {k: v for k, v in s.items() if v is None or k not in SUMMARY_TYPES or isinstance(v, SUMMARY_TYPES[k])}


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
    (a job dir is named from its overrides, :func:`ablate.identity.job_dirname`)."""
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
def has_results(run_dir: Path) -> bool:
    return any((Path(run_dir) / n).exists() for n in RESULTS)


def checkpoint_hash(run_dir: Path) -> str | None:
    """The config hash the checkpoint records; None when there is none or it cannot be read."""
    try:
        state = load_checkpoint(run_dir)
    except CheckpointError:
        return None
    h = state.get("config_hash") if state else None
    return h if isinstance(h, str) else None


def placement(run_dir: Path, h: str) -> tuple[Path, dict | None]:
    """Where results of config ``h`` belong, and the summary found there; reads only.

    ``run_dir`` itself when its results are known to be this config's (by their
    summary, else their checkpoint) or when it holds none; otherwise (another
    config's results, or results whose config cannot be told: a damaged summary)
    the sibling ``run_dir~<hash8>``, so no run's files are ever deleted unless
    they are known to be this run's."""
    run_dir = Path(run_dir)
    prev = read_summary(run_dir)
    known = prev.get("config_hash") if prev else None
    if known is None and has_results(run_dir):
        known = checkpoint_hash(run_dir)
    if known == h or (known is None and not has_results(run_dir)):
        return run_dir, prev
    new = run_dir.with_name(f"{run_dir.name}~{h[:8]}")
    return new, read_summary(new)


def claim(run_dir: Path, h: str) -> tuple[Path, dict | None, RunLock]:
    """Lock the directory config ``h`` trains in (:func:`placement`); its earlier summary if any.

    Raises :class:`ablate.runlock.RunLocked` when another live process holds it. The old
    directory of a changed config is left exactly as it was."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes a job's; a caller of the Python API may not
    try:
        lock: RunLock | None = RunLock(run_dir)
        busy = None
    except RunLocked as e:  # another process: this run's writer, unless it trains another config there
        lock, busy = None, e
    home, prev = placement(run_dir, h)
    if home == run_dir:
        if lock is None:
            raise busy
        return run_dir, prev, lock
    if lock is not None:
        lock.release()
    home.mkdir(parents=True, exist_ok=True)
    lock = RunLock(home)
    logging.getLogger("ablate").warning("%s holds results of a different config (or of one its files cannot tell); "
                                        "this run goes to %s", run_dir, home)
    _move_log(run_dir, home)
    return home, read_summary(home), lock


def write_record(run_dir: Path, files: Mapping[str, str]) -> None:
    """The job's ``.hydra/`` record (file name -> YAML text), each file written atomically.

    Written by the run entry, not by Hydra, and only for a run it trains: a skipped
    run keeps its own record, and a crash leaves each file whole or absent."""
    hyd = Path(run_dir) / HYDRA_DIR
    hyd.mkdir(exist_ok=True)
    for name, text in files.items():
        atomic_write_bytes(hyd / name, text.encode())


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
    for name in RESULTS:
        (Path(run_dir) / name).unlink(missing_ok=True)
