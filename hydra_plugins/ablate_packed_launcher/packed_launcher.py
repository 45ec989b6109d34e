"""``hydra/launcher=packed``: the class Hydra instantiates, and its config node.

Hydra admits a launcher only when its class is defined inside the ``hydra_plugins``
namespace package, so this shim lives here; what it does is :mod:`ablate.launcher`'s.
Hydra imports this module in every application's plugin scan: it stays import-light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig

from ablate.launcher import PackedLauncherConf, launch

ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="ablate")


class PackedLauncher(Launcher):
    def __init__(self, **_knobs: Any) -> None:  # read from the config in launch(), where they are checked
        self.config: Optional[DictConfig] = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        return launch(self.hydra_context, self.task_function, self.config, job_overrides, initial_job_idx)
