"""Shared fixtures: compose real configs and run the real trainer on tiny settings."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ablate.compose import compose

ROOT = Path(__file__).resolve().parents[1]

# A run small enough for a 2-core CPU: a few batches of the embedded data.
TINY = ["trainer.epochs=2", "trainer.batch_size=32", "trainer.limit_batches=4",
        "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200", "model=simple_cnn"]


def make_cfg(overrides: list[str] = (), tiny: bool = True):
    return compose((TINY if tiny else []) + list(overrides))


@pytest.fixture
def cfg_factory(tmp_path):
    def factory(*overrides: str, tiny: bool = True):
        return make_cfg([f"data.root={tmp_path / 'data'}", *overrides], tiny=tiny)
    return factory


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m ablate.run`` as a user would, from ``cwd``."""
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             HYDRA_FULL_ERROR="0", MPLBACKEND="Agg")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "ablate.run", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=timeout)

@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A real, small filesystem mounted at ``where`` (a full disk without filling this machine's);
    the test is skipped where mounting needs privileges this process lacks."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


sys.path.insert(0, str(Path(__file__).parent))  # tests import their own helpers (fakedata, rundirs)
