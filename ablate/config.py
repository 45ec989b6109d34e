"""What a run is made of: config schemas, registries and validation.

Every config group option (``conf/<group>/<name>.yaml``) is typed by a dataclass
registered in Hydra's ConfigStore under ``schema/<group>/<name>``; the YAML pulls
it in with ``defaults: [/schema/<group>/<name>@_here_, _self_]``. A misspelt key
or a wrong type is then refused by Hydra when the job's config is composed, and
range checks run in each dataclass's ``__post_init__`` when :func:`typed` turns
the node into an object (OmegaConf itself never calls ``__post_init__``).

Groups with one schema (trainer, dataset, augment, ...) are typed here. Groups of
named builders (model, optimizer, scheduler) keep each schema beside its builder
in a :class:`Registry` (``ablate/models.py``, ``ablate/optim.py``): a new option
there is one YAML file plus one registered builder.

This module imports no torch: composing a config (``--help``, ``--cfg job``,
shell completion) stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

T = TypeVar("T")


def _conf_dir() -> Path:
    """The config groups: ``ablate/conf`` in an installed wheel (setup.py maps the top-level ``conf/`` there),
    the checkout's top-level ``conf/`` otherwise (a clone, an editable install)."""
    package = Path(__file__).resolve().parent
    return package / "conf" if (package / "conf").is_dir() else package.parent / "conf"


CONF_DIR = _conf_dir()


class ConfigError(ValueError):
    """A bad value in the config; the message is one line that names the key."""


# --------------------------------------------------------------------------- checks
def require(ok: bool, key: str, value: Any, what: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {what}")


def positive(group: str, obj: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(obj, f)
        require(v is not None and v > 0, f"{group}.{f}", v, "must be > 0")
        _finite(f"{group}.{f}", v)


def non_negative(group: str, obj: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(obj, f)
        require(v is not None and v >= 0, f"{group}.{f}", v, "must be >= 0")
        _finite(f"{group}.{f}", v)


def _finite(key: str, v: Any) -> None:
    """``inf > 0`` passes a range check (nan does not), and an infinite lr, decay or factor trains nothing."""
    require(math.isfinite(v), key, v, "must be a finite number")


def probability(group: str, obj: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(obj, f)
        require(v is not None and 0.0 <= v <= 1.0, f"{group}.{f}", v, "must be a probability in [0, 1]")


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    require(value in allowed, key, value, f"must be one of {', '.join(map(str, allowed))}")


def store_schema(group: str, name: str, schema: type) -> None:
    """Register ``schema`` as ``schema/<group>/<name>`` for the YAML's defaults list."""
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=schema)


def typed(cfg: Any, schema: type[T]) -> T:
    """Turn a config node into its dataclass (running ``__post_init__`` checks).

    Accepts an already-typed dataclass, a DictConfig typed by ``schema`` or a
    plain mapping (then unknown keys are refused by name)."""
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    known = {f.name for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} for {schema.__name__}; known: {', '.join(sorted(known))}")
    return schema(**cfg)


class Registry:
    """Name -> (schema, builder) for one config group (models, optimizers, ...).

    What a builder can do (a scheduler's interval, an optimizer's fused kernel) is
    data on its schema (``ClassVar``s), read through :meth:`schema_of`, so no other
    module ever checks an option by its name."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.builders: dict[str, Callable[..., Any]] = {}
        self.schemas: dict[str, type] = {}

    def register(self, name: str, schema: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            self.builders[name] = fn
            self.schemas[name] = schema
            store_schema(self.group, name, schema)
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self.builders)

    def schema_of(self, cfg: Any) -> type:
        name = cfg.name if not isinstance(cfg, dict) else cfg["name"]
        if name not in self.schemas:
            raise ConfigError(
                f"{self.group}.name={name!r} has no registered builder; known: {', '.join(self.names())}"
            )
        return self.schemas[name]

    def typed(self, cfg: Any) -> Any:
        """The option's dataclass instance, range-checked."""
        return typed(cfg, self.schema_of(cfg))

    def build(self, cfg: Any, *args: Any, **kwargs: Any) -> Any:
        obj = self.typed(cfg)
        return self.builders[obj.name](obj, *args, **kwargs)


# --------------------------------------------------------------------------- one-schema groups
@dataclass
class TrainerConf:
    epochs: int = 10
    batch_size: int = 128
    drop_last: bool = True  # drop each epoch's ragged last batch (every step one shape: graphable)
    eval_batch_size: int = 1024
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 1
    # A count, not a share: the precision of an accuracy depends on how many images it is measured on
    # (1000 images: a standard error of 1.3 points at 80 %), and so does its cost, whatever the data set's size.
    train_eval_size: int = 1000  # training images re-scored in eval mode, unaugmented, per evaluation; 0 = off
    save_best: bool = True  # keep the validation-best epoch's weights as best.pt
    log_every: int = 50
    limit_batches: Optional[int] = None
    limit_eval_batches: Optional[int] = None
    pipeline: str = "resident"
    num_workers: int = 4
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    cuda_graph: str = "auto"
    cudnn_benchmark: bool = True
    checkpoint_every: int = 1
    fail_fast: bool = False
    failure_value: float = 0.0

    def __post_init__(self) -> None:
        positive("trainer", self, "epochs", "batch_size", "eval_batch_size", "eval_every", "log_every")
        non_negative("trainer", self, "seed", "num_workers", "checkpoint_every", "train_eval_size")
        for key in ("limit_batches", "limit_eval_batches"):
            v = getattr(self, key)
            require(v is None or v > 0, f"trainer.{key}", v, "must be > 0 or null")
        one_of("trainer.pipeline", self.pipeline, ("resident", "dataloader"))
        one_of("trainer.amp", self.amp, ("auto", "bf16", "off"))
        one_of("trainer.channels_last", str(self.channels_last).lower(), ("auto", "true", "false"))
        one_of("trainer.cuda_graph", str(self.cuda_graph).lower(), ("auto", "true", "false"))
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "trainer.device", self.device, "must be auto, cpu, cuda or cuda:N")

    def check_split(self, images: int) -> None:
        """A batch larger than the ``images`` a run trains on: with ``drop_last`` that batch is never full, so
        every image would be dropped (without it, each step is the whole split: a warning when the run starts)."""
        require(not self.drop_last or self.batch_size <= images, "trainer.batch_size", self.batch_size,
                f"exceeds the {images:,}-image training split, which trainer.drop_last=true would drop whole; "
                f"use at most {images}, or trainer.drop_last=false to train on the whole split each step")


@dataclass
class RegularizationConf:
    name: str = "none"
    weight_decay: float = 0.0      # the optimizer's (decoupled for adamw)
    l2: float = 0.0                # explicit l2 * sum(w^2) over all parameters, added to the loss
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        non_negative("regularization", self, "weight_decay", "l2")
        require(0.0 <= self.label_smoothing < 1.0, "regularization.label_smoothing", self.label_smoothing,
                "must be in [0, 1)")


@dataclass
class DatasetConf:
    name: str = MISSING
    source: str = MISSING                # a reader registered in ablate/data.py (SOURCES)
    classes: Optional[list[int]] = None  # original label ids to keep, relabelled 0..k-1 in this order
    mean: Optional[list[float]] = None   # per channel in [0, 1] units; None = computed from train and cached
    std: Optional[list[float]] = None
    # A share, not a count, so one default fits 10,000 to 60,000 training images alike. Part of the run's
    # identity, like every dataset key: the split is drawn with split_seed, never trainer.seed, so the
    # runs of a sweep share it and stay paired.
    val_size: float = 0.1                # stratified share of the training split held out for validation
    split_seed: int = 0                  # draws the held-out split (and the trainer's train_eval subset)

    def __post_init__(self) -> None:
        require(0.0 <= self.val_size < 1.0, "dataset.val_size", self.val_size,
                "must be a share of the training split in [0, 1) (0 = no validation split)")
        non_negative("dataset", self, "split_seed")
        require((self.mean is None) == (self.std is None), "dataset.mean", self.mean,
                "set dataset.mean and dataset.std together, or neither")
        require(self.std is None or all(s > 0 for s in self.std), "dataset.std", self.std, "must be > 0")
        require(self.mean is None or len(self.mean) == len(self.std), "dataset.std", self.std,
                "needs as many values as dataset.mean (one per channel)")
        require(self.classes is None or (len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)),
                "dataset.classes", self.classes, "must list at least two distinct label ids")


@dataclass
class DataConf:
    root: str = MISSING
    download: bool = False


@dataclass
class AugmentConf:
    """One ``conf/augment/*.yaml``; every knob at 0 turns its op off."""

    name: str = MISSING
    crop_padding: int = 0  # RandomCrop(size, padding) with zero fill
    hflip: float = 0.0  # probability
    brightness: float = 0.0  # ColorJitter: factor uniform in [max(0, 1-b), 1+b]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # shift uniform in [-hue, hue], hue <= 0.5
    rotation: float = 0.0  # degrees, uniform in [-r, r], nearest, zero fill
    erasing: float = 0.0  # RandomErasing probability, value 0 after Normalize
    erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])

    def __post_init__(self) -> None:
        non_negative("augment", self, "crop_padding", "brightness", "contrast", "saturation", "rotation")
        probability("augment", self, "hflip", "erasing")
        require(0.0 <= self.hue <= 0.5, "augment.hue", self.hue, "must be in [0, 0.5]")
        require(self.rotation <= 180.0, "augment.rotation", self.rotation, "must be <= 180 degrees")
        s = list(self.erasing_scale)
        require(len(s) == 2 and 0.0 < s[0] <= s[1] <= 1.0, "augment.erasing_scale", s,
                "must be [lo, hi] with 0 < lo <= hi <= 1")
        self.erasing_scale = [float(v) for v in s]

    @property
    def jitter(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))


@dataclass
class ReportConf:
    """How the comparison report reads a sweep (``conf/report/default.yaml``)."""

    overfit_gap: float = 0.10  # flag a run whose final train - test accuracy exceeds this (clean train acc if logged)
    confidence: float = 0.95  # 1 - the family-wise error of all the report's verdicts together (Holm)
    min_seeds: int = 3  # warn when an arm has fewer finished seeds
    smoothing: float = 0.9  # EMA factor (weight of the past) for the per-iteration loss curve
    arm_panels: bool = True  # confusion matrix + Grad-CAM of the best and the worst arm (from model.pt, on CPU)

    def __post_init__(self) -> None:
        probability("report", self, "overfit_gap", "smoothing")
        positive("report", self, "min_seeds")
        require(0.0 < self.confidence < 1.0, "report.confidence", self.confidence, "must be in (0, 1)")
        require(self.smoothing < 1.0, "report.smoothing", self.smoothing, "must be < 1")


MAX_INSPECT_IMAGES = 64  # rows of one feature-map or Grad-CAM figure that stay readable and quick to draw


@dataclass
class InspectConf:
    """What ``python -m ablate.inspect RUN_DIR`` draws (``conf/inspect.yaml``)."""

    layers: Optional[list[str]] = None  # layers whose feature maps are drawn; None = every Conv2d
    gradcam_layer: Optional[str] = None  # layer Grad-CAM hooks; None = the last Conv2d
    images: int = 8  # fixed test images drawn (the first image of each class in turn)
    channels: int = 16  # at most this many channels per feature-map grid
    batch_size: int = 1024  # for the confusion matrix
    device: str = "auto"
    out_dir: Optional[str] = None  # None = RUN_DIR/inspect

    def __post_init__(self) -> None:
        positive("inspect", self, "images", "channels", "batch_size")
        require(self.images <= MAX_INSPECT_IMAGES, "inspect.images", self.images,
                f"at most {MAX_INSPECT_IMAGES}: each image is a row of the figures, and drawing grows faster than "
                f"the rows (256 took minutes and gigabytes)")


@dataclass
class TensorBoardConf:
    log_dir: Optional[str] = None  # None = RUN_DIR/tensorboard; else LOG_DIR/<run dir name>


@dataclass
class MlflowConf:
    tracking_uri: str = "outputs/mlruns"  # a directory (local file store), sqlite:///FILE or http(s)://SERVER
    experiment: str = "ablate"
    log_model: bool = True  # model.pt as an artifact (next to epochs.csv, steps.csv, summary.json)


@dataclass
class LoggerConf:
    """Where a run reports while it trains (``conf/logger/``): the terminal always, the run directory's CSVs
    always, TensorBoard and MLflow when their node is set. Never part of a run's identity."""

    progress: str = "auto"  # auto: a bar in a terminal, plain lines otherwise; bar; lines; none
    poll_seconds: float = 2.0  # how often a sweep's launching process reads its run dirs for `k/N runs done`
    tensorboard: Optional[TensorBoardConf] = None
    mlflow: Optional[MlflowConf] = None

    def __post_init__(self) -> None:
        one_of("logger.progress", self.progress, ("auto", "bar", "lines", "none"))
        positive("logger", self, "poll_seconds")
        if isinstance(self.tensorboard, dict):  # typed() hands nested nodes over as plain mappings
            self.tensorboard = typed(self.tensorboard, TensorBoardConf)
        if isinstance(self.mlflow, dict):
            self.mlflow = typed(self.mlflow, MlflowConf)


for _group, _schema in (("trainer", TrainerConf), ("regularization", RegularizationConf), ("dataset", DatasetConf),
                        ("augment", AugmentConf), ("report", ReportConf), ("inspect", InspectConf),
                        ("logger", LoggerConf)):
    store_schema(_group, "base", _schema)
