"""Optimizers and learning-rate schedulers: torch's own, built from config.

``optimizer.lr`` is the base learning rate of every optimizer. Weight decay is a
regularization knob (``regularization.weight_decay``), passed in by the trainer,
so the optimizer group only says *how* to step.

What each option can do is data on its schema, so neither the trainer nor the
CUDA-graph step knows an option by name: an optimizer says whether torch has a
fused CUDA kernel for it and whether it can be built ``capturable``; a scheduler
says when it steps (every ``epoch`` or every ``step``) and on which metric, if any
(:class:`Schedule` applies both). torch is imported only when something is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from .config import Registry, TrainerConf, non_negative, positive, probability, require

if TYPE_CHECKING:
    import torch

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")


# --------------------------------------------------------------------------- optimizers
@dataclass
class OptimizerConf:
    name: str = "sgd"
    lr: float = 0.01
    fused: ClassVar[bool] = False  # torch has a fused CUDA kernel (``fused=True``): one launch per step
    capturable: ClassVar[bool] = False  # accepts ``capturable=True`` (state and lr read on the device)

    def __post_init__(self) -> None:
        positive("optimizer", self, "lr")


@dataclass
class SGDConf(OptimizerConf):
    name: str = "sgd"
    fused: ClassVar[bool] = True  # no capturable flag: SGD keeps no step counter to hold on the device
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative("optimizer", self, "momentum")
        require(not self.nesterov or self.momentum > 0, "optimizer.nesterov", self.nesterov, "needs optimizer.momentum > 0")


@dataclass
class AdamConf(OptimizerConf):
    name: str = "adam"
    fused: ClassVar[bool] = True
    capturable: ClassVar[bool] = True
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optimizer.betas", self.betas,
                "must be two numbers in [0, 1)")
        positive("optimizer", self, "eps")


@dataclass
class AdamWConf(AdamConf):
    name: str = "adamw"


@dataclass
class RMSpropConf(OptimizerConf):
    name: str = "rmsprop"
    capturable: ClassVar[bool] = True
    lr: float = 1e-3
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        probability("optimizer", self, "alpha")
        non_negative("optimizer", self, "momentum")


@OPTIMIZERS.register("sgd", SGDConf)
def sgd(cfg: SGDConf, params: Iterable, weight_decay: float, **kw) -> "torch.optim.Optimizer":
    from torch.optim import SGD

    return SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=weight_decay, **kw)


@OPTIMIZERS.register("adam", AdamConf)
def adam(cfg: AdamConf, params: Iterable, weight_decay: float, **kw) -> "torch.optim.Optimizer":
    from torch.optim import Adam

    return Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=weight_decay, **kw)


@OPTIMIZERS.register("adamw", AdamWConf)
def adamw(cfg: AdamWConf, params: Iterable, weight_decay: float, **kw) -> "torch.optim.Optimizer":
    from torch.optim import AdamW

    return AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=weight_decay, **kw)


@OPTIMIZERS.register("rmsprop", RMSpropConf)
def rmsprop(cfg: RMSpropConf, params: Iterable, weight_decay: float, **kw) -> "torch.optim.Optimizer":
    from torch.optim import RMSprop

    return RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum, eps=cfg.eps,
                               weight_decay=weight_decay, **kw)


def speed_flags(cfg: Any, device: "torch.device", graphed: bool) -> dict[str, bool]:
    """Constructor flags for speed on CUDA, from the optimizer's capabilities: the fused kernel where
    torch has one (same update rule, far fewer launches), and ``capturable`` when the step is graphed,
    so the update keeps its step counter on the device and reads the lr tensor at replay."""
    schema = OPTIMIZERS.schema_of(cfg)
    if device.type != "cuda":
        return {}
    flags = {"fused": True} if schema.fused else {}
    if graphed and schema.capturable:
        flags["capturable"] = True
    return flags


def build_optimizer(cfg: Any, params: Iterable, weight_decay: float = 0.0, **kw: Any) -> "torch.optim.Optimizer":
    """The configured torch optimizer; ``kw`` passes speed flags (:func:`speed_flags`)."""
    return OPTIMIZERS.build(cfg, params, weight_decay, **kw)


# --------------------------------------------------------------------------- schedulers
@dataclass
class SchedulerConf:
    name: str = "none"
    interval: ClassVar[str] = "epoch"  # when the trainer calls .step(): "epoch" or "step"
    # The epoch metric .step() is given, if any: a validation one ("val_loss"), since what a scheduler adapts to
    # must not be what it is judged on; a run without a validation split gives it the test split's instead.
    metric: ClassVar[Optional[str]] = None

    def check(self, trainer: TrainerConf) -> None:
        """Cross-field checks against the trainer's settings; one-line ConfigError."""
        if self.metric is not None:
            require(trainer.eval_every == 1, "trainer.eval_every", trainer.eval_every,
                    f"scheduler={self.name} steps on the {self.metric} of every epoch and needs trainer.eval_every=1")


@dataclass
class NoneConf(SchedulerConf):
    name: str = "none"


@dataclass
class StepConf(SchedulerConf):
    name: str = "step"
    step_size: int = 5
    gamma: float = 0.1

    def __post_init__(self) -> None:
        positive("scheduler", self, "step_size", "gamma")


@dataclass
class MultiStepConf(SchedulerConf):
    name: str = "multistep"
    milestones: list[int] = field(default_factory=lambda: [5, 8])
    gamma: float = 0.1

    def __post_init__(self) -> None:
        positive("scheduler", self, "gamma")
        require(all(m > 0 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
                "scheduler.milestones", self.milestones, "must be increasing positive epochs")


@dataclass
class ExponentialConf(SchedulerConf):
    name: str = "exponential"
    gamma: float = 0.8

    def __post_init__(self) -> None:
        positive("scheduler", self, "gamma")


@dataclass
class CosineConf(SchedulerConf):
    name: str = "cosine"
    T_max: int = 10
    eta_min: float = 1e-5

    def __post_init__(self) -> None:
        positive("scheduler", self, "T_max")
        non_negative("scheduler", self, "eta_min")


@dataclass
class PlateauConf(SchedulerConf):
    name: str = "plateau"
    metric: ClassVar[Optional[str]] = "val_loss"
    mode: str = "min"
    factor: float = 0.5
    patience: int = 2
    threshold: float = 1e-4
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        require(self.mode in ("min", "max"), "scheduler.mode", self.mode, "must be min or max")
        require(0 < self.factor < 1, "scheduler.factor", self.factor, "must be in (0, 1)")
        non_negative("scheduler", self, "patience", "threshold", "min_lr")


@dataclass
class OneCycleConf(SchedulerConf):
    name: str = "onecycle"
    interval: ClassVar[str] = "step"
    max_lr: Optional[float] = None
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self) -> None:
        require(self.max_lr is not None and self.max_lr > 0, "scheduler.max_lr", self.max_lr,
                "onecycle needs a maximum learning rate > 0")
        require(0 < self.pct_start < 1, "scheduler.pct_start", self.pct_start, "must be in (0, 1)")
        require(self.anneal_strategy in ("cos", "linear"), "scheduler.anneal_strategy", self.anneal_strategy,
                "must be cos or linear")
        positive("scheduler", self, "div_factor", "final_div_factor")


@dataclass
class WarmupCosineConf(SchedulerConf):
    name: str = "warmup_cosine"
    warmup_epochs: int = 2
    start_factor: float = 0.1
    eta_min: float = 1e-5

    def __post_init__(self) -> None:
        positive("scheduler", self, "warmup_epochs")
        require(0 < self.start_factor <= 1, "scheduler.start_factor", self.start_factor, "must be in (0, 1]")
        non_negative("scheduler", self, "eta_min")

    def check(self, trainer: TrainerConf) -> None:
        super().check(trainer)
        require(self.warmup_epochs < trainer.epochs, "scheduler.warmup_epochs", self.warmup_epochs,
                f"must be < trainer.epochs={trainer.epochs}")


def _torch_schedulers() -> Any:
    from torch.optim import lr_scheduler

    return lr_scheduler


@SCHEDULERS.register("none", NoneConf)
def no_schedule(cfg: NoneConf, opt, epochs: int, steps_per_epoch: int):
    return None


@SCHEDULERS.register("step", StepConf)
def step(cfg: StepConf, opt, epochs: int, steps_per_epoch: int):
    return _torch_schedulers().StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


@SCHEDULERS.register("multistep", MultiStepConf)
def multistep(cfg: MultiStepConf, opt, epochs: int, steps_per_epoch: int):
    return _torch_schedulers().MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)


@SCHEDULERS.register("exponential", ExponentialConf)
def exponential(cfg: ExponentialConf, opt, epochs: int, steps_per_epoch: int):
    return _torch_schedulers().ExponentialLR(opt, gamma=cfg.gamma)


@SCHEDULERS.register("cosine", CosineConf)
def cosine(cfg: CosineConf, opt, epochs: int, steps_per_epoch: int):
    return _torch_schedulers().CosineAnnealingLR(opt, T_max=cfg.T_max, eta_min=cfg.eta_min)


@SCHEDULERS.register("plateau", PlateauConf)
def plateau(cfg: PlateauConf, opt, epochs: int, steps_per_epoch: int):
    return _torch_schedulers().ReduceLROnPlateau(opt, mode=cfg.mode, factor=cfg.factor, patience=cfg.patience,
                                                 threshold=cfg.threshold, min_lr=cfg.min_lr)


@SCHEDULERS.register("onecycle", OneCycleConf)
def onecycle(cfg: OneCycleConf, opt, epochs: int, steps_per_epoch: int):
    return _torch_schedulers().OneCycleLR(
        opt, max_lr=cfg.max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=cfg.pct_start,
        anneal_strategy=cfg.anneal_strategy, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)


@SCHEDULERS.register("warmup_cosine", WarmupCosineConf)
def warmup_cosine(cfg: WarmupCosineConf, opt, epochs: int, steps_per_epoch: int):
    s = _torch_schedulers()  # warmup_epochs < epochs: WarmupCosineConf.check
    warm = s.LinearLR(opt, start_factor=cfg.start_factor, total_iters=cfg.warmup_epochs)
    cos = s.CosineAnnealingLR(opt, T_max=epochs - cfg.warmup_epochs, eta_min=cfg.eta_min)
    return s.SequentialLR(opt, [warm, cos], milestones=[cfg.warmup_epochs])


@dataclass
class Schedule:
    """A torch scheduler (or None: a constant rate) with when it steps and on what."""

    scheduler: Any
    interval: str  # "epoch" or "step"
    metric: Optional[str]  # the epoch metric .step() is given, or None

    def after_step(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, Any]) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if self.metric is None:
            self.scheduler.step()
        else:
            self.scheduler.step(metrics[self.metric])


def build_scheduler(cfg: Any, optimizer: "torch.optim.Optimizer", epochs: int, steps_per_epoch: int) -> Schedule:
    """The configured torch scheduler with its stepping rule (from the schema's capabilities)."""
    typed_cfg = SCHEDULERS.typed(cfg)
    sched = SCHEDULERS.builders[typed_cfg.name](typed_cfg, optimizer, epochs, steps_per_epoch)
    return Schedule(sched, typed_cfg.interval, typed_cfg.metric)
