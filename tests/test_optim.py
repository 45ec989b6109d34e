"""Every registered optimizer and scheduler, checked for what the trainer and the CUDA graph rely on.

The tests iterate the registries, so a new option is checked without editing them;
the last test adds one the way a user would (one YAML + one registered builder)."""

from __future__ import annotations

import dataclasses
import inspect
import textwrap

import pandas as pd
import pytest
import torch

from ablate import cudagraph, rundir
from ablate.compose import compose
from ablate.config import TrainerConf
from ablate.optim import OPTIMIZERS, SCHEDULERS, SchedulerConf, build_optimizer, build_scheduler
from ablate.train import fit

EPOCHS, STEPS = 6, 5


def _default(registry, name: str):
    """The option's YAML as shipped (conf/<group>/<name>.yaml)."""
    return compose([f"{registry.group}={name}", "optimizer.lr=0.1"])[registry.group]


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_updates_the_lr_tensor_in_place(name):
    """A graphed step reads the lr from a device tensor's memory: a scheduler must fill it, never replace it,
    and must move it (except ``none``)."""
    schema = SCHEDULERS.schemas[name]
    assert schema.interval in ("epoch", "step")
    assert schema.metric is None or schema.metric in rundir.EPOCH_COLUMNS
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(_default(OPTIMIZERS, "adam"), [p], 0.0)
    schedule = build_scheduler(_default(SCHEDULERS, name), opt, EPOCHS, STEPS)
    cudagraph.lr_to_tensor(opt, torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    seen = [float(lr)]
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            p.grad = torch.ones(2)
            opt.step()
            schedule.after_step()
            assert opt.param_groups[0]["lr"] is lr, name
        schedule.after_epoch({"val_loss": 1.0, "val_acc": 0.5})  # a metric that never improves
        assert opt.param_groups[0]["lr"] is lr, name
        seen.append(float(lr))
    assert (len(set(seen)) > 1) == (schedule.scheduler is not None), (name, seen)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_takes_the_flags_its_schema_claims(name):
    """``fused``/``capturable`` are what ablate.optim.speed_flags passes on CUDA: the constructor must accept
    them, and a step with a tensor lr (the graph's) must move the weights."""
    schema = OPTIMIZERS.schemas[name]
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(_default(OPTIMIZERS, name), [p], 0.0)
    accepts = inspect.signature(type(opt).__init__).parameters
    assert not schema.capturable or "capturable" in accepts, name
    assert not schema.fused or "fused" in accepts, name
    cudagraph.lr_to_tensor(opt, torch.device("cpu"))
    p.grad = torch.ones(3)
    opt.step()
    assert torch.all(p.detach() < 1.0), name
    if schema.fused:  # torch runs fused kernels on the CPU too
        q = torch.nn.Parameter(torch.ones(3))
        fused = build_optimizer(_default(OPTIMIZERS, name), [q], 0.0, fused=True)
        q.grad = torch.ones(3)
        fused.step()
        assert torch.allclose(q.detach(), p.detach(), atol=1e-6), name


@dataclasses.dataclass
class HalvingConf(SchedulerConf):
    name: str = "halving"
    every: int = 2


@pytest.fixture
def halving():
    """A new scheduler, registered as a user would in their own module; removed afterwards."""
    @SCHEDULERS.register("halving", HalvingConf)
    def build(cfg: HalvingConf, opt, epochs: int, steps_per_epoch: int):
        from torch.optim.lr_scheduler import StepLR

        return StepLR(opt, step_size=cfg.every, gamma=0.5)

    yield
    SCHEDULERS.builders.pop("halving")
    SCHEDULERS.schemas.pop("halving")


def test_a_new_scheduler_is_one_yaml_and_one_builder(tmp_path, halving):
    conf = tmp_path / "conf" / "scheduler"
    conf.mkdir(parents=True)
    (conf / "halving.yaml").write_text(textwrap.dedent("""\
        defaults:
          - /schema/scheduler/halving@_here_
          - _self_
        name: halving
        every: 1
        """))
    cfg = compose(["scheduler=halving", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=lenet",
                   "trainer.epochs=3", "trainer.limit_batches=2", "trainer.limit_eval_batches=1",
                   "trainer.batch_size=32", "optimizer.lr=0.008", f"data.root={tmp_path / 'data'}"])
    summary = fit(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    assert pd.read_csv(tmp_path / "run" / rundir.EPOCHS_CSV)["lr"].tolist() == [0.008, 0.004, 0.002]
    with pytest.raises(Exception, match="scheduler.every"):
        compose(["scheduler=halving", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "scheduler.every=x"])


def test_a_scheduler_that_steps_on_a_metric_needs_it_every_epoch():
    for name, schema in SCHEDULERS.schemas.items():
        if schema.metric is not None:
            with pytest.raises(Exception, match="trainer.eval_every"):
                SCHEDULERS.typed(_default(SCHEDULERS, name)).check(TrainerConf(eval_every=2))
