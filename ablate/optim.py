"""Optimizers and learning-rate schedulers: torch's own, built from config.

``optimizer.lr`` is the base learning rate of every optimizer. Weight decay is a
regularization knob (``regularization.weight_decay``), passed in by the trainer,
so the optimizer group only says *how* to step.

Each scheduler schema says when it steps (``interval``: once per ``epoch`` or
every ``step``); ``plateau`` is stepped with the test loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch.optim import lr_scheduler as sched

from .config import ConfigError, Registry, non_negative, positive, probability, require

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")


# --------------------------------------------------------------------------- optimizers
@dataclass
class OptimizerConf:
    name: str = "sgd"
    lr: float = 0.01

    def __post_init__(self) -> None:
        positive("optimizer", self, "lr")


@dataclass
class SGDConf(OptimizerConf):
    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative("optimizer", self, "momentum")
        require(not self.nesterov or self.momentum > 0, "optimizer.nesterov", self.nesterov, "needs optimizer.momentum > 0")


@dataclass
class AdamConf(OptimizerConf):
    name: str = "adam"
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
    lr: float = 1e-3
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        probability("optimizer", self, "alpha")
        non_negative("optimizer", self, "momentum")


@OPTIMIZERS.register("sgd", SGDConf)
def sgd(cfg: SGDConf, params: Iterable, weight_decay: float, **kw) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=weight_decay, **kw)


@OPTIMIZERS.register("adam", AdamConf)
def adam(cfg: AdamConf, params: Iterable, weight_decay: float, **kw) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=weight_decay, **kw)


@OPTIMIZERS.register("adamw", AdamWConf)
def adamw(cfg: AdamWConf, params: Iterable, weight_decay: float, **kw) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=weight_decay, **kw)


@OPTIMIZERS.register("rmsprop", RMSpropConf)
def rmsprop(cfg: RMSpropConf, params: Iterable, weight_decay: float, **kw) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum, eps=cfg.eps,
                               weight_decay=weight_decay, **kw)


def build_optimizer(cfg, params: Iterable, weight_decay: float = 0.0, **kw) -> torch.optim.Optimizer:
    """The configured torch optimizer; ``kw`` passes speed flags (``capturable``, ``foreach``)."""
    return OPTIMIZERS.build(cfg, params, weight_decay, **kw)


# --------------------------------------------------------------------------- schedulers
@dataclass
class SchedulerConf:
    name: str = "none"
    interval: ClassVar[str] = "epoch"  # when the trainer calls .step(): "epoch" or "step"


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


@SCHEDULERS.register("none", NoneConf)
def no_schedule(cfg: NoneConf, opt, epochs: int, steps_per_epoch: int):
    return None


@SCHEDULERS.register("step", StepConf)
def step(cfg: StepConf, opt, epochs: int, steps_per_epoch: int):
    return sched.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


@SCHEDULERS.register("multistep", MultiStepConf)
def multistep(cfg: MultiStepConf, opt, epochs: int, steps_per_epoch: int):
    return sched.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)


@SCHEDULERS.register("exponential", ExponentialConf)
def exponential(cfg: ExponentialConf, opt, epochs: int, steps_per_epoch: int):
    return sched.ExponentialLR(opt, gamma=cfg.gamma)


@SCHEDULERS.register("cosine", CosineConf)
def cosine(cfg: CosineConf, opt, epochs: int, steps_per_epoch: int):
    return sched.CosineAnnealingLR(opt, T_max=cfg.T_max, eta_min=cfg.eta_min)


@SCHEDULERS.register("plateau", PlateauConf)
def plateau(cfg: PlateauConf, opt, epochs: int, steps_per_epoch: int):
    return sched.ReduceLROnPlateau(opt, mode=cfg.mode, factor=cfg.factor, patience=cfg.patience,
                                   threshold=cfg.threshold, min_lr=cfg.min_lr)


@SCHEDULERS.register("onecycle", OneCycleConf)
def onecycle(cfg: OneCycleConf, opt, epochs: int, steps_per_epoch: int):
    return sched.OneCycleLR(opt, max_lr=cfg.max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            pct_start=cfg.pct_start, anneal_strategy=cfg.anneal_strategy,
                            div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)


@SCHEDULERS.register("warmup_cosine", WarmupCosineConf)
def warmup_cosine(cfg: WarmupCosineConf, opt, epochs: int, steps_per_epoch: int):
    if cfg.warmup_epochs >= epochs:
        raise ConfigError(f"scheduler.warmup_epochs={cfg.warmup_epochs} is invalid: must be < trainer.epochs={epochs}")
    warm = sched.LinearLR(opt, start_factor=cfg.start_factor, total_iters=cfg.warmup_epochs)
    cos = sched.CosineAnnealingLR(opt, T_max=epochs - cfg.warmup_epochs, eta_min=cfg.eta_min)
    return sched.SequentialLR(opt, [warm, cos], milestones=[cfg.warmup_epochs])


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """The configured torch scheduler (or None) and when to step it: ``"epoch"`` or ``"step"``."""
    typed_cfg = SCHEDULERS.typed(cfg)
    return SCHEDULERS.builders[typed_cfg.name](typed_cfg, optimizer, epochs, steps_per_epoch), typed_cfg.interval


def needs_metric(scheduler) -> bool:
    """ReduceLROnPlateau steps on the test loss; every other scheduler steps without one."""
    return isinstance(scheduler, sched.ReduceLROnPlateau)
