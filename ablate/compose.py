"""A run's config, composed from ``conf/`` as ``python -m ablate.run`` composes it, and checked whole.

Importing this module registers every group's schema (the registries of models
and optimizers/schedulers register theirs when imported), so Hydra can type the
YAML, and the sweepers' defaults (:func:`ablate.config.store_sweeper_defaults`).
Nothing here imports torch: composing and checking a config is fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from . import data, models, optim
from .config import (CONF_DIR, AugmentConf, DataConf, DatasetConf, RegularizationConf, TrainerConf,
                     store_sweeper_defaults, typed)

store_sweeper_defaults()


def compose(overrides: Sequence[str] = (), config_name: str = "config", return_hydra_config: bool = False) -> DictConfig:
    """``conf/<config_name>.yaml`` with Hydra overrides, for tools outside a Hydra job (notebooks, tests, bench);
    ``return_hydra_config`` keeps the ``hydra`` node (launcher, sweeper, job naming)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def validate(cfg: Any) -> dict[str, Any]:
    """Every group typed and range-checked, then the checks that span groups, then the data set's files
    present; the typed groups by name.

    Raises a one-line :class:`ablate.config.ConfigError` naming the key, or a
    :class:`ablate.data.DataError` naming the missing file. This is what a launch,
    and a dry run, check before anything is loaded or trained."""
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
    data.check_dataset(groups["dataset"], groups["data"])
    return groups
