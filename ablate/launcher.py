"""``hydra/launcher=packed``: a sweep's compatible jobs trained as packed groups, in the launching process.

    python -m ablate.run -m hydra/launcher=packed scheduler=step,cosine,plateau trainer.seed=0,1,2

The jobs are composed as Hydra's basic launcher composes them, then grouped
(:mod:`ablate.packing`): each group trains in this process as one batched model
(:mod:`ablate.packed`, at most ``hydra.launcher.max_group`` runs at once; batched on
CUDA also as many as a probe step says fit in ``hydra.launcher.memory_fraction`` of
the free memory; ``hydra.launcher.step`` chooses batched or interleaved steps). A job that cannot be packed runs as the basic launcher runs it, with
one log line saying why; a run already finished with its config runs that way too
(and is skipped there). Every run still goes through :mod:`ablate.job`: it claims
its directory (lock held), skips a finished run, resumes a checkpoint, records a
failure, and writes what a separate run writes, ``.hydra/`` and ``run.log``
included. The sweep's callbacks (report, `k/N runs done`) run as with any launcher.

Hydra finds launchers only in its ``hydra_plugins`` namespace package: the class
Hydra instantiates is a thin shim there
(``hydra_plugins/ablate_packed_launcher``) that calls :func:`launch`.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .config import ConfigError, one_of, positive, require, typed

if TYPE_CHECKING:  # imported when a sweep launches: Hydra imports this module in every app's plugin scan
    from . import job, packing

log = logging.getLogger("ablate")


@dataclass
class PackedLauncherConf:
    """``hydra.launcher.*`` of ``hydra/launcher=packed``."""

    _target_: str = "hydra_plugins.ablate_packed_launcher.packed_launcher.PackedLauncher"
    max_group: int = 16  # most runs trained as one group (the only bound on the CPU)
    memory_fraction: float = 0.8  # batched on CUDA: share of the free GPU memory a group may fill (probe step)
    step: str = "auto"  # batched (one vmapped model), interleaved (each run's model in turn), auto: batched on CUDA

    def __post_init__(self) -> None:
        positive("hydra.launcher", self, "max_group")
        require(0 < self.memory_fraction <= 1, "hydra.launcher.memory_fraction", self.memory_fraction,
                "must be in (0, 1]")
        one_of("hydra.launcher.step", self.step, ("auto", "batched", "interleaved"))


def launch(hydra_context: Any, task_function: Any, config: DictConfig, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> list[Any]:
    """Hydra's ``Launcher.launch``: one ``JobReturn`` per job, in the order given."""
    from hydra.core.utils import configure_log, filter_overrides, setup_globals

    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    try:
        knobs = typed(OmegaConf.to_container(config.hydra.launcher, resolve=True), PackedLauncherConf)
    except ConfigError as e:  # before any job starts: one line, exit 1
        raise SystemExit(f"ablate: {e}") from None
    jobs = []
    for idx, overrides in enumerate(job_overrides, initial_job_idx):
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
        _set_output_dir(sweep_config)
        jobs.append(sweep_config)
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
    plan = _plan(jobs)
    returns: list[Any] = [None] * len(jobs)
    for g, members in enumerate(plan.groups, 1):
        log.info("packed: group %d/%d: jobs %s train as one model", g, len(plan.groups),
                 ", ".join(f"#{jobs[i].hydra.job.num}" for i in members))
        for i, ret in zip(members, _run_group(hydra_context, task_function, [jobs[i] for i in members], knobs)):
            returns[i] = ret
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    for i in sorted(plan.alone):
        returns[i] = _run_alone(hydra_context, task_function, jobs[i])
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return returns


def _set_output_dir(sweep_config: DictConfig) -> None:
    """``hydra.runtime.output_dir`` of a sweep job, as Hydra's ``run_job`` sets it."""
    out = Path(str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))) / str(OmegaConf.select(sweep_config,
                                                                                                "hydra.sweep.subdir"))
    with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
        sweep_config.hydra.runtime.output_dir = os.path.abspath(out)


def _name(sweep_config: DictConfig) -> str:
    return Path(sweep_config.hydra.runtime.output_dir).name


def _plan(jobs: list[DictConfig]) -> "packing.Plan":
    """Groups of the jobs that can train packed; one line for each job that trains alone, and one saying
    what split the sweep into several groups. A dry run, and a run already finished, train alone silently."""
    from . import packing, rundir
    from .identity import config_hash

    if any(j.get("dry_run") for j in jobs):
        return packing.Plan(alone={i: "dry run" for i in range(len(jobs))})
    quiet, todo = {}, []
    for i, j in enumerate(jobs):
        _, prev = rundir.placement(Path(j.hydra.runtime.output_dir), config_hash(j))
        if prev is not None and prev.get("status") in ("completed", "diverged"):
            quiet[i] = f"already {prev['status']}"
        else:
            todo.append(i)
    sub = packing.plan([jobs[i] for i in todo])
    plan = packing.Plan(groups=[[todo[k] for k in g] for g in sub.groups],
                        alone={**quiet, **{todo[k]: why for k, why in sub.alone.items()}}, split=sub.split)
    if plan.split:
        log.info("packed: jobs differ in %s: they train in separate groups", plan.split)
    for k, why in sorted(sub.alone.items()):
        log.info("packed: %s trains on its own: %s", _name(jobs[todo[k]]), why)
    return plan


def _run_alone(hydra_context: Any, task_function: Any, sweep_config: DictConfig) -> Any:
    """The job as Hydra's basic launcher runs it: its task function, in this process."""
    from hydra.core.utils import run_job

    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _run_group(hydra_context: Any, task_function: Any, jobs: list[DictConfig],
               knobs: PackedLauncherConf) -> list[Any]:
    """The jobs trained as one group through :func:`ablate.job.run_group`; a ``JobReturn`` each, with the
    callbacks' job hooks around, as Hydra's ``run_job`` calls them."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobRuntime, JobStatus

    from . import job

    callbacks, tasks, runs = hydra_context.callbacks, [], []
    for sweep_config in jobs:
        HydraConfig.instance().set_config(sweep_config)
        Path(sweep_config.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
        callbacks.on_job_start(config=sweep_config, task_function=task_function)
        task = copy.deepcopy(sweep_config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        tasks.append(task)
        runs.append(job.Job(task, *job.hydra_job(sweep_config.hydra),
                            job.hydra_record(task, OmegaConf.masked_copy(sweep_config, "hydra"))))
    with _group_logs([r.run_dir for r in runs], str(jobs[0].hydra.job.name)):
        outcomes = job.run_group(runs, multirun=True, max_group=knobs.max_group,
                                 memory_fraction=knobs.memory_fraction, step=knobs.step)
        values = [_score(r, task, *out) for r, task, out in zip(runs, tasks, outcomes)]
    returns = []
    for sweep_config, task, value in zip(jobs, tasks, values):
        HydraConfig.instance().set_config(sweep_config)
        ret = JobReturn(overrides=list(sweep_config.hydra.overrides.task), cfg=task,
                        hydra_cfg=copy.deepcopy(HydraConfig.instance().cfg), working_dir=os.getcwd(),
                        task_name=JobRuntime.instance().get("name"), status=JobStatus.COMPLETED)
        ret.return_value = value
        callbacks.on_job_end(config=sweep_config, job_return=ret)
        returns.append(ret)
    return returns


def _score(run: "job.Job", task: DictConfig, summary: Any, error: Any) -> float:
    """What :mod:`ablate.run` returns for a sweep job, saying what it says."""
    from . import job
    from .packed import RUN
    from .runlock import RunLocked

    failure = float(task.trainer.failure_value)
    if isinstance(error, RunLocked):
        log.warning("%s", error)
        return failure
    token = RUN.set(Path(summary["run_dir"]).name)
    try:
        if error is not None:
            job.log_failure(summary, error)
    finally:
        RUN.reset(token)
    return job.score(summary, failure)


@contextmanager
def _group_logs(run_dirs: list[Path], job_name: str) -> Iterator[None]:
    """While a group trains, each log line names its run and goes to the console and to that run's
    ``<job name>.log`` (the group's own lines go to every run's)."""
    from .packed import RUN

    label = f"packed: {len(run_dirs)} runs"

    class Tag(logging.Filter):
        def __init__(self, only: str | None = None) -> None:
            super().__init__()
            self.only = only

        def filter(self, record: logging.LogRecord) -> bool:
            run = RUN.get()
            record.ablate_run = run or label
            return self.only is None or run is None or run.split("~")[0] == self.only

    fmt = logging.Formatter("[%(asctime)s][%(ablate_run)s][%(levelname)s] - %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    handlers[0].addFilter(Tag())
    for d in run_dirs:
        h = logging.FileHandler(Path(d) / f"{job_name}.log")
        h.addFilter(Tag(Path(d).name))
        handlers.append(h)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    for h in handlers:
        h.setFormatter(fmt)
    root.handlers, _ = handlers, root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers, level = saved
        root.setLevel(level)
        for h in handlers[1:]:
            h.close()
