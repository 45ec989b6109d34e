"""A run's config, composed from ``conf/`` as ``python -m ablate.run`` composes it, and checked whole.

Importing this module readies Hydra for ablate's ``conf/``: every group's schema is
registered (the registries of models and optimizers/schedulers register theirs when
imported), the resolvers the YAML names exist, and the Optuna sweeper maximises by
default. Nothing here imports torch: composing and checking a config is fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from . import data, models, optim
from .config import CONF_DIR, AugmentConf, DataConf, DatasetConf, RegularizationConf, TrainerConf, typed
from .identity import job_dirname

def _register_resolvers() -> None:
    for name, fn in {
        "ablate_subdir": lambda task: job_dirname(list(task) if isinstance(task, (list, ListConfig)) else []),
        "multiply": lambda a, b: float(a) * float(b),
        # Log lines name their job (the run directory's name): parallel jobs share one terminal.
        "ablate_job": lambda output_dir: Path(str(output_dir)).name,
        "ablate_groups": lambda: config_groups_text(),
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def config_groups_text() -> str:
    """``group: option, option`` for every user-facing group in ``conf/`` (``--help``; Hydra's own list also
    shows the ``schema/*`` groups and the launchers' internals)."""
    groups = sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra")
    return "\n".join(f"  {d.name}: {', '.join(sorted(p.stem for p in d.glob('*.yaml')))}" for d in groups)


# ``hydra/sweeper=optuna`` maximises unless told otherwise: a run returns its test accuracy. The plugin's
# default is to minimise. The class is at module level so the joblib launcher can pickle the ConfigStore.
try:
    from hydra_plugins.hydra_optuna_sweeper.config import Direction, OptunaSweeperConf
except ImportError:  # the optional extra is not installed
    OptunaSweeperConf = None

if OptunaSweeperConf is not None:
    @dataclass
    class MaximisingOptunaSweeperConf(OptunaSweeperConf):
        direction: Any = Direction.maximize


def store_sweeper_defaults() -> None:
    """Store the Optuna sweeper's schema again with ``direction: maximize`` (``hydra.sweeper.direction=...``
    still wins). Hydra's plugin scan re-executes plugin modules, which store their own schema; it runs once
    per process, so it is run first here."""
    if OptunaSweeperConf is None:
        return
    from hydra.core.plugins import Plugins

    Plugins.instance()
    ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=MaximisingOptunaSweeperConf,
                                 provider="ablate")


_register_resolvers()
store_sweeper_defaults()


def compose(overrides: Sequence[str] = (), config_name: str = "config", return_hydra_config: bool = False) -> DictConfig:
    """``conf/<config_name>.yaml`` with Hydra overrides, for tools outside a Hydra job (notebooks, tests, bench);
    ``return_hydra_config`` keeps the ``hydra`` node (launcher, sweeper, job naming)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def validate(cfg: Any) -> dict[str, Any]:
    """Every group typed and range-checked, then the checks that span groups (the model against the data
    set's image shape), then the data set's files present and its split against its class counts; the typed
    groups by name.

    Raises a one-line :class:`ablate.config.ConfigError` naming the key, or a
    :class:`ablate.data.DataError` naming the missing file. This is what a launch,
    and a dry run, check before anything is loaded or trained: no torch, no images read."""
    t = typed(cfg.trainer, TrainerConf)
    groups: dict[str, Any] = {
        "trainer": t,
        "dataset": typed(cfg.dataset, DatasetConf),
        "data": typed(cfg.data, DataConf),
        "augment": typed(cfg.augment, AugmentConf),
        "regularization": typed(cfg.regularization, RegularizationConf),
        "model": models.MODELS.typed(cfg.model),
        "optimizer": optim.OPTIMIZERS.typed(cfg.optimizer),
        "scheduler": optim.SCHEDULERS.typed(cfg.scheduler),
    }
    groups["scheduler"].check(t)
    check_input = getattr(groups["model"], "check_input", None)  # a model registered outside ablate may lack it
    if check_input is not None:
        channels, h, w, _ = data.dataset_shape(groups["dataset"])
        check_input(channels, (h, w))
    t.check_split(data.check_dataset(groups["dataset"], groups["data"]))
    return groups
