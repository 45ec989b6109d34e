"""The run directory under faults: one writer, liveness, identity before deletion, permissions, a full disk.

In process and fast. The full-disk cases use a real, small tmpfs (mounting needs
root; elsewhere they are skipped, and the sweep-level full-disk test in
``test_faults.py`` is too).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from conftest import make_cfg, tmpfs

from ablate import rundir, runlock
from ablate.train import fit

LENET = ["model=lenet", "trainer.epochs=1", "trainer.limit_batches=1", "trainer.batch_size=32",
         "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200"]


def _run(path: Path, h: str, *extra: str) -> dict:
    """A real one-epoch LeNet run into ``path``, recorded under config hash ``h``."""
    return fit(make_cfg([*LENET, f"data.root={path.parent / 'data'}", *extra], tiny=False), path, h)


# --------------------------------------------------------------------------- one writer per run
def test_a_second_writer_is_refused_with_the_holders_pid_and_host(tmp_path):
    with runlock.RunLock(tmp_path):
        with pytest.raises(runlock.RunLocked) as e:
            runlock.RunLock(tmp_path)
        assert str(e.value) == (f"{tmp_path.name}: running in another process, pid {os.getpid()} on "
                                f"{socket.gethostname()}; skipping")
        assert runlock.lock_held(tmp_path) is True
    assert runlock.lock_held(tmp_path) is False
    runlock.RunLock(tmp_path).release()  # free again


def test_the_lock_of_a_killed_process_never_blocks(tmp_path):
    """The kernel drops a flock with its process: the lock file stays, with the dead owner's note."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242 elsewhere'); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / runlock.LOCK)])
    assert proc.returncode == -9 and "4242" in (tmp_path / runlock.LOCK).read_text()
    assert runlock.lock_held(tmp_path) is False
    with runlock.RunLock(tmp_path):
        assert (tmp_path / runlock.LOCK).read_text() == f"{os.getpid()} {socket.gethostname()}\n"


def test_a_running_run_without_a_live_writer_is_shown_interrupted(tmp_path):
    me = runlock.owner()
    s = {"status": "running", **me, "epochs_done": 2, "seconds": 20.0}
    with runlock.RunLock(tmp_path):
        assert runlock.shown_status(tmp_path, s) == "running"
    assert runlock.shown_status(tmp_path, s) == "interrupted"  # same host, lock free: its process is gone
    assert runlock.shown_status(tmp_path, {**s, "status": "completed"}) == "completed"
    # No lock file (written before locks existed): its pid decides.
    other = tmp_path / "old"
    other.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert runlock.shown_status(other, s) == "running"  # this process's pid
    assert runlock.shown_status(other, {**s, "pid": int(dead.stdout)}) == "interrupted"
    assert runlock.shown_status(other, {"status": "running"}) == "interrupted"  # nobody recorded
    # Another host: its heartbeat, against its own epoch time (10 s here).
    ago = lambda s_: (datetime.now(timezone.utc) - timedelta(seconds=s_)).isoformat()  # noqa: E731
    remote = {**s, "host": "elsewhere"}
    assert runlock.shown_status(tmp_path, {**remote, "heartbeat": ago(5)}) == "running"
    assert runlock.shown_status(tmp_path, {**remote, "heartbeat": ago(3 * 3600)}) == "interrupted"


# --------------------------------------------------------------------------- identity before deletion
@pytest.mark.parametrize("damage", ["truncated", "[1, 2]", "null", '"text"', "missing"])
def test_results_of_an_unknown_config_are_never_deleted(tmp_path, damage):
    """A damaged summary: the checkpoint tells whose results these are; another config goes next door."""
    run = tmp_path / "scheduler=step"
    _run(run, "A" * 16)
    path = run / rundir.SUMMARY_JSON
    if damage == "missing":
        path.unlink()
    else:
        path.write_text(path.read_text()[:40] if damage == "truncated" else damage)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    home, prev, lock = rundir.claim(run, "B" * 16)  # a changed config
    lock.release()
    assert home == tmp_path / f"scheduler=step~{'B' * 8}" and prev is None
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != runlock.LOCK} == \
        {k: v for k, v in before.items() if k != runlock.LOCK}
    home, prev, lock = rundir.claim(run, "A" * 16)  # the same config: its own results, resumed in place
    lock.release()
    assert home == run and prev is None
    (run / rundir.CHECKPOINT).write_bytes(b"garbage")  # and when nothing tells, nothing is deleted either
    assert rundir.placement(run, "A" * 16)[0] == tmp_path / f"scheduler=step~{'A' * 8}"


def test_a_summary_that_is_no_object_or_holds_foreign_types_reads_as_missing(tmp_path):
    """Every reader goes through read_summary: the report reads such runs from their epochs.csv."""
    import rundirs

    from ablate import report

    sweep = rundirs.sweep(tmp_path / "s", {"a": [0.8, 0.81], "b": [0.7, 0.71]})
    first, second = sorted(sweep.glob("scheduler=a,*"))
    (first / rundir.SUMMARY_JSON).write_text("[1, 2]")
    (second / rundir.SUMMARY_JSON).write_text(json.dumps(
        {"status": 3, "config": "x", "overrides": "y", "epochs_planned": "many", "error": 5, "final_test_acc": "high",
         "mult_adds": "many", "seed": 1}))
    assert rundir.read_summary(first) is None and rundir.read_summary(second) == {"seed": 1}
    rows = report.summary_frame(report.build([sweep], plots=False))
    assert list(rows["status"]) == ["no summary.json", "no summary.json", "completed", "completed"]
    assert list(rows["final_test_acc"]) == [0.8, 0.81, 0.7, 0.71]


def test_a_dir_without_results_is_used_in_place(tmp_path):
    (tmp_path / "run.log").write_text("launched\n")
    home, prev, lock = rundir.claim(tmp_path, "C" * 16)
    lock.release()
    assert (home, prev) == (tmp_path, None)


# --------------------------------------------------------------------------- permissions
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        _run(tmp_path / "run", "h")
        rundir.write_record(tmp_path / "run", {"config.yaml": "a: 1\n"})
        with runlock.RunLock(tmp_path / "run"):
            pass
    finally:
        os.umask(old)
    files = [rundir.SUMMARY_JSON, rundir.CHECKPOINT, rundir.MODEL, rundir.EPOCHS_CSV, rundir.STEPS_CSV,
             runlock.LOCK, f"{rundir.HYDRA_DIR}/config.yaml"]
    modes = {n: oct((tmp_path / "run" / n).stat().st_mode & 0o777) for n in files}
    assert modes == {n: oct(0o666 & ~umask) for n in files}


# --------------------------------------------------------------------------- a full disk
@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs holding a run's summary and CSV rows, then filled to the last byte."""
    with tmpfs(tmp_path / "fs", "1m") as mnt:
        run = mnt / "run"
        run.mkdir()
        rundir.atomic_write_json(run / rundir.SUMMARY_JSON, {"status": "running", "config": {"x": "y" * 2000}})
        rundir.append_rows(run / rundir.EPOCHS_CSV, rundir.EPOCH_COLUMNS, [dict(epoch=1, lr=0.1)])
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield run


def _assert_enospc(e: pytest.ExceptionInfo, path: Path) -> None:
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert "No space left on device" in str(e.value) and str(path) in str(e.value)


def test_a_full_disk_is_an_error_naming_the_file_and_leaves_whole_files(full_disk):
    summary, epochs = full_disk / rundir.SUMMARY_JSON, full_disk / rundir.EPOCHS_CSV
    before = summary.read_bytes(), epochs.read_bytes()
    with pytest.raises(OSError) as e:
        rundir.atomic_torch_save({"w": torch.zeros(10_000)}, full_disk / rundir.CHECKPOINT)
    _assert_enospc(e, full_disk / rundir.CHECKPOINT)  # not torch's "file write failed"
    with pytest.raises(OSError) as e:
        rundir.atomic_write_json(summary, {"status": "failed", "pad": "z" * 5000})
    _assert_enospc(e, summary)
    with pytest.raises(OSError) as e:
        rundir.append_rows(epochs, rundir.EPOCH_COLUMNS, [dict(epoch=e_, lr=0.1) for e_ in range(2, 2000)])
    _assert_enospc(e, epochs)
    assert (summary.read_bytes(), epochs.read_bytes()) == before  # whole, unchanged
    assert sorted(p.name for p in full_disk.iterdir()) == [rundir.EPOCHS_CSV, rundir.SUMMARY_JSON]  # no temp left


def test_a_failure_is_recorded_even_on_a_full_disk(full_disk):
    record = {"status": "failed", "config": {"x": "y" * 2000}, "error": "OSError: [Errno 28] No space left",
              "traceback": "Traceback (most recent call last):\n" + "  frame\n" * 500}
    rundir.write_summary_anyway(full_disk, record)
    got = json.loads((full_disk / rundir.SUMMARY_JSON).read_text())
    assert got == {**record, "traceback": None}  # the traceback does not fit; the rest does


# --------------------------------------------------------------------------- .hydra/ record
def test_the_job_record_is_written_whole_and_stale_temps_cleared(tmp_path):
    rundir.write_record(tmp_path, {"config.yaml": "a: 1\n", "overrides.yaml": "- a=1\n"})
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "a: 1\n"
    stale = tmp_path / ".hydra" / ".config.yaml.0123abcd.tmp"
    stale.write_text("a: ")  # a writer killed mid-record
    assert rundir.remove_stale_temps(tmp_path) == [stale] and not stale.exists()
    shutil.rmtree(tmp_path / ".hydra")
