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
    for preset in ("experiment=homework", "experiment=birds_vs_planes", "experiment=cifar10_schedulers"):
        assert compose([preset], return_hydra_config=True).hydra.mode == RunMode.MULTIRUN, preset
    assert compose(["experiment=cifar10_cnn"], return_hydra_config=True).hydra.mode in (None, RunMode.RUN)


def test_optuna_maximises_unless_told_otherwise():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

    def direction(*overrides: str) -> str:
        d = compose(list(overrides), return_hydra_config=True).hydra.sweeper.direction
        return getattr(d, "name", d)  # the schema's default is an Enum, an override a string

    assert direction("hydra/sweeper=optuna") == "maximize"
    assert direction("hydra/sweeper=optuna", "hydra.sweeper.direction=minimize") == "minimize"
    assert direction("hparams_search=cnn3_cosine") == "maximize"
