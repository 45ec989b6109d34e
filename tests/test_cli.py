"""The command line and the package: presets, sweeper defaults, --help, start-up cost, completion, the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra.types import RunMode

from ablate.compose import compose
from conftest import ROOT


def test_sweep_presets_are_sweeps_without_dash_m():
    for preset in ("experiment=homework_schedulers", "experiment=birds_vs_planes", "experiment=cifar10_schedulers"):
        assert compose([preset], return_hydra_config=True).hydra.mode == RunMode.MULTIRUN, preset
    for preset in ("experiment=cifar10_cnn", "experiment=homework"):  # single runs
        assert compose([preset], return_hydra_config=True).hydra.mode in (None, RunMode.RUN), preset


def test_optuna_maximises_unless_told_otherwise():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

    def direction(*overrides: str) -> str:
        d = compose(list(overrides), return_hydra_config=True).hydra.sweeper.direction
        return getattr(d, "name", d)  # the schema's default is an Enum, an override a string

    assert direction("hydra/sweeper=optuna") == "maximize"
    assert direction("hydra/sweeper=optuna", "hydra.sweeper.direction=minimize") == "minimize"
    assert direction("hparams_search=cnn3_cosine") == "maximize"


# ----------------------------------------------------------------------------- --help and start-up
_CLI = """
import atexit, runpy, sys
atexit.register(lambda: print("HEAVY", sorted(m for m in ("torch", "torchvision", "pandas", "matplotlib", "optuna")
                                              if m in sys.modules), file=sys.stderr))
sys.argv = ["ablate-run", *sys.argv[1:]]
runpy.run_module("ablate.run", run_name="__main__")
"""


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-c", _CLI, *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=300)


def test_help_shows_usage_examples_and_only_the_user_facing_groups():
    p = _cli("--help")
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert "Usage:" in out and "Examples:" in out and "python -m ablate.run -m scheduler=step,cosine,plateau" in out
    groups = dict(line.strip().split(": ", 1) for line in out.split("Config groups")[1].splitlines()[1:]
                  if line.startswith("  ") and ": " in line)
    user = sorted(d.name for d in (ROOT / "conf").iterdir() if d.is_dir() and d.name != "hydra")
    assert sorted(groups) == user and "logger" in groups and "schema" not in out
    assert groups["scheduler"].split(", ") == sorted(p.stem for p in (ROOT / "conf" / "scheduler").glob("*.yaml"))
    assert 'eval "$(ablate-run -sc install=bash)"' in out


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["--info"], ["-sc", "query=bash"]])
def test_queries_that_train_nothing_import_no_torch(args):
    p = _cli(*args, env={"COMP_LINE": "ablate-run sched", "COMP_POINT": "16"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "HEAVY []" in p.stderr, p.stderr[-2000:]
    if args == ["-sc", "query=bash"]:
        assert "scheduler=" in p.stdout.split()


def test_a_dry_run_checks_the_model_and_the_split_without_torch(tmp_path):
    """What a launch refuses only after importing torch (a model the images shrink to nothing, a split that
    empties a class), a dry run refuses from the config alone: arithmetic and the labels, no torch."""
    p = _cli("-m", "model=lenet", "model.conv_channels=[6,16],[6,16,32]", "dataset.val_size=0.1,0.999",
             "dry_run=true", f"hydra.sweep.dir={tmp_path}")
    assert p.returncode == 1 and "HEAVY []" in p.stderr, p.stderr[-2000:]
    lines = [ln.split(" -> ", 1)[1].split(" (", 1)[1] for ln in p.stdout.splitlines() if ln.startswith("[dry run]")]
    assert lines[0] == "new)" and len(lines) == 4, p.stdout
    assert lines[1].startswith("refused: ablate: dataset.val_size=0.999 is invalid: leaves class(es) [0, 1, 2, 3]")
    assert all(ln.startswith("refused: ablate: model.conv_channels=[6, 16, 32] is invalid: ") for ln in lines[2:])


def test_completion_lists_a_groups_options():
    p = _cli("-sc", "query=bash", env={"COMP_LINE": "ablate-run scheduler=", "COMP_POINT": "21"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(p.stdout.split()) == sorted(f"scheduler={s.stem}" for s in (ROOT / "conf" / "scheduler").glob("*.yaml"))


# ----------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` would install, built from a copy of this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "outputs", "__pycache__", "build", "*.egg-info",
                                                             ".venv", ".pytest_cache", "dist", "multirun"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("ablate-*.whl")
    return whl


def test_the_wheel_holds_the_configs_the_packages_and_the_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = {f"ablate/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert len(confs) > 50 and confs <= names, sorted(confs - names)[:5]
    packages = {f"ablate/{p.relative_to(ROOT / 'ablate')}" for p in (ROOT / "ablate").rglob("__init__.py")}
    assert packages <= names and "ablate/_data/fashion_mnist_mini.npz" in names
    # hydra/launcher=packed: Hydra finds launchers only in its hydra_plugins namespace package (no __init__ there)
    assert "hydra_plugins/ablate_packed_launcher/packed_launcher.py" in names
    assert "hydra_plugins/__init__.py" not in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for line in ("ablate-run = ablate.run:main", "ablate-report = ablate.cli:report",
                 "ablate-inspect = ablate.cli:inspect"):
        assert line in scripts


@pytest.mark.slow
def test_the_installed_wheel_works_from_any_directory(wheel, tmp_path):
    venv = tmp_path / "venv"  # torch & co. come from this interpreter's site-packages, not a download
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          "--force-reinstall", str(wheel)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MPLBACKEND"] = "Agg"

    def run(*cmd: str, **extra: str) -> str:
        p = subprocess.run(cmd, cwd=elsewhere, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-3000:])
        return p.stdout

    where = run(str(venv / "bin" / "python"), "-c", "import ablate, ablate.config as c; print(ablate.__file__, c.CONF_DIR)")
    assert where.split()[0].startswith(str(venv)) and where.split()[1] == str(Path(where.split()[0]).parent / "conf")
    assert "scheduler:\n  name: cosine" in run(str(venv / "bin" / "ablate-run"), "--cfg", "job")
    assert "ablate_packed_launcher.packed_launcher.PackedLauncher" in run(
        str(venv / "bin" / "ablate-run"), "hydra/launcher=packed", "--cfg", "hydra")
    out = run(str(venv / "bin" / "ablate-run"), "trainer.epochs=1", "trainer.limit_batches=2", "model=lenet",
              "trainer.limit_eval_batches=1", f"data.root={tmp_path / 'data'}")
    (run_dir,) = (elsewhere / "outputs" / "runs").glob("*/*")
    assert f"Run: {run_dir} (completed)" in out
    assert "Report:" in run(str(venv / "bin" / "ablate-report"), str(run_dir), "--no-arm-panels")
    assert "61,706 total" in run(str(venv / "bin" / "ablate-inspect"), "model=lenet", "dataset=fashion_mnist_mini")
    install = run(str(venv / "bin" / "ablate-run"), "-sc", "install=bash")
    assert install.strip().endswith("-F hydra_bash_completion ablate-run")
    assert run(str(venv / "bin" / "ablate-run"), "-sc", "query=bash",
               COMP_LINE="ablate-run model=le", COMP_POINT="19").split() == ["model=lenet"]
