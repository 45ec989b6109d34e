"""``python -m ablate.inspect``: look inside a model (layer table) or a trained run (maps, Grad-CAM, confusion).

Two modes, chosen by the first argument::

    python -m ablate.inspect model=lenet dataset=fashion_mnist [more overrides]
    python -m ablate.inspect RUN_DIR [inspect.images=4 inspect.layers=[conv1] data.root=...]

The first builds the model for one input of the data set's shape (no data files
needed) and prints every layer's output shape, parameters and multiply-adds:
what the tutorials print by hand. The second reloads a finished run from its
``.hydra/config.yaml`` and ``model.pt`` and writes into ``RUN_DIR/inspect/``
the feature maps of chosen layers, Grad-CAM heat maps and the test-set
confusion matrix.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .. import rundir
from ..compose import compose
from ..config import ConfigError, InspectConf, typed
from ..data import DataError
from .probes import InspectError
from .runs import inspect_run
from .table import model_report

CONFIG_NAME = "inspect"  # conf/inspect.yaml: the training config plus the inspect group
USAGE = ("usage: python -m ablate.inspect model=NAME dataset=NAME [overrides]   (layer table)\n"
         "       python -m ablate.inspect RUN_DIR [inspect.KEY=VALUE ...] [data.root=DIR]   "
         "(feature maps, Grad-CAM, confusion matrix -> RUN_DIR/inspect/)")


def _run_dir_mode(run_dir: Path, overrides: Sequence[str]) -> str:
    bad = [o for o in overrides if not o.lstrip("+~").startswith(("inspect.", "data."))]
    if bad:
        raise InspectError(f"{bad[0]!r}: with RUN_DIR only inspect.* and data.* can be overridden "
                           "(the model and data set come from the run's own config)")
    cfg = compose(overrides, CONFIG_NAME)
    data_keys = {o.lstrip("+~").split("=", 1)[0].split(".", 1)[1] for o in overrides
                 if o.lstrip("+~").startswith("data.")}
    data_over = {k: cfg.data[k] for k in data_keys if k in cfg.data}
    written = inspect_run(run_dir, None, typed(cfg.inspect, InspectConf), data_over)
    cm = pd.read_csv(written["confusion_csv"], index_col=0).to_numpy()
    acc = np.trace(cm) / cm.sum() if cm.sum() else float("nan")
    lines = [f"{run_dir}: test accuracy {100 * acc:.2f}% on {int(cm.sum())} images; wrote"]
    lines += [f"  {p}" for p in written.values()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch on the first argument: an existing directory is a run, anything else overrides."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__.split("Two modes", 1)[0].strip())
        return 0
    try:
        # A sweep's job directories are named from their overrides (scheduler=cosine,trainer.seed=0):
        # a directory with a run's .hydra/ is a run even when its name looks like an override.
        first = Path(args[0]) if args else None
        if first is not None and first.is_dir() and ("=" not in args[0] or (first / rundir.HYDRA_DIR).is_dir()):
            print(_run_dir_mode(first, args[1:]))
        elif args and "=" not in args[0]:
            raise InspectError(f"{args[0]} is neither a run directory nor an override (key=value); "
                               "see python -m ablate.inspect --help")
        else:
            print(model_report(compose(args, CONFIG_NAME)))
    except (InspectError, ConfigError, DataError) as e:
        sys.exit(f"ablate.inspect: {e}")
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split("Config search path")[0].split()) or type(e).__name__
        sys.exit(f"ablate.inspect: {msg}")
    return 0
