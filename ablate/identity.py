"""What a run is: one definition of the keys that make a run and those that do not.

The config hash recorded in every run, the name of a sweep job's directory (``conf/config.yaml``
names it through :func:`job_dirname`), the keys the report compares (:func:`is_factor_key`) and
the check that refuses a sweep whose jobs would share a directory (:func:`check_sweep`) all read
the sets below, so relaunching with a speed option keeps every finished run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError

# A run is its choice in each of these groups, as resolved...
RUN_GROUPS = ("dataset", "model", "optimizer", "scheduler", "augment", "regularization", "trainer")
# ...set directly or through a preset (whose choice is recorded too)...
PRESET_GROUPS = ("experiment", "variant", "structure", "hparams_search")
# ...minus the keys that say how or where it runs, not what it computes. A finished run relaunched with
# another value of these is the same run: skipped, or resumed where it stopped.
# How it executes: a report may still compare these (sweeps run once per value, merged).
EXECUTION_KEYS = frozenset({
    "trainer.device", "trainer.pipeline", "trainer.num_workers", "trainer.channels_last", "trainer.compile",
    "trainer.cuda_graph", "trainer.cudnn_benchmark", "trainer.eval_batch_size",
})
# Bookkeeping: never a difference between runs.
BOOKKEEPING_KEYS = frozenset({"trainer.log_every", "trainer.checkpoint_every", "trainer.fail_fast",
                              "trainer.failure_value", "trainer.save_best"})
NOT_IDENTITY = EXECUTION_KEYS | BOOKKEEPING_KEYS
# trainer.amp stays in the identity: bf16 and float32 are different arithmetic, and a sweep over them
# must give two runs.


def _key(override_key: str) -> str:
    return override_key.lstrip("+~").split("@", 1)[0]


def split_override(override: str) -> tuple[str, str] | None:
    """An override's key (without ``+``/``~`` and ``@package``) and value; None for one without a value."""
    if "=" not in override:
        return None
    key, value = override.split("=", 1)
    return _key(key), value


def is_identity_key(key: str) -> bool:
    """Whether an override key (``trainer.seed``, ``scheduler``, ``+variant``) changes what a run is.

    Everything outside the run's groups (``data.*``, ``report.*``, ``dry_run``,
    ``hydra/launcher``, ...) says where or how a run is read, never what it is."""
    key = _key(key)
    group = key.split(".", 1)[0]
    return (group in RUN_GROUPS or group in PRESET_GROUPS) and key not in NOT_IDENTITY


def is_factor_key(key: str) -> bool:
    """Whether runs that differ in this key may be compared on it in a report: identity or execution keys."""
    return is_identity_key(key) or _key(key) in EXECUTION_KEYS


def check_sweep(overrides: Sequence[str]) -> None:
    """Refuse a sweep over a key outside the run's identity (``hydra.*`` aside): its jobs would share one run
    directory.

    ``overrides`` are the command line's (``trainer.cuda_graph=true,false``) and a preset's sweeper
    params; one-line ConfigError saying what to do instead."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for line in overrides:
        try:
            (o,) = parser.parse_overrides([str(line)])
        except Exception:  # noqa: BLE001  (Hydra itself reports unparsable overrides)
            continue
        key = o.key_or_group
        if not o.is_sweep_override() or is_identity_key(key) or key.startswith("hydra"):
            continue
        what = ("says how a run executes" if key.split(".", 1)[0] in RUN_GROUPS else
                "says where data is read or how runs are logged and reported")
        raise ConfigError(
            f"{key} is swept, but it {what}, not what a run is: every value would land in the same run "
            f"directory; launch one sweep per value (hydra.sweep.dir=...) and compare them with "
            f"python -m ablate.report SWEEP_A SWEEP_B --out DIR")


def config_hash(cfg: DictConfig | dict) -> str:
    """Identity of a run: the resolved config of :data:`RUN_GROUPS` minus :data:`NOT_IDENTITY`."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    d = {k: v for k, v in d.items() if k in RUN_GROUPS}
    for key in NOT_IDENTITY:
        group, name = key.split(".", 1)
        if isinstance(d.get(group), dict):
            d[group] = {k: v for k, v in d[group].items() if k != name}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_dirname(overrides: Sequence[str]) -> str:
    """A sweep job's directory name: its identity overrides, sorted (``scheduler=step,trainer.seed=1``).

    Named from the overrides, never from the job number, so a relaunch finds the
    same directory; ``default`` when no override belongs to the run's identity."""
    lines = sorted(str(o) for o in overrides if "=" in str(o) and is_identity_key(str(o).split("=", 1)[0]))
    return ",".join(lines) or "default"
