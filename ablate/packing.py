"""Which jobs of a sweep can train together as one packed group (:mod:`ablate.packed`), and which cannot.

A group's runs share one data set in memory and one batched step, so they must
agree on everything that changes a tensor's shape or where a batch comes from:
the data set (every ``dataset.*`` and ``data.*`` key), the architecture (the model
built from ``model.*``: its layers, their settings and their parameters' shapes;
dropout rates may differ, each run draws its own masks) and every ``trainer.*`` key
but those listed in :data:`PER_RUN_TRAINER_KEYS`. They may differ in anything a run
keeps to itself: seed, epochs, optimizer and its hyper-parameters, scheduler and
its knobs, augmentation, regularization, initialisation.

A job trains on its own, as any launcher would run it, when its pipeline is the
DataLoader's, when it asks for ``torch.compile`` or a CUDA graph, when its config is
refused (it then records why, as a separate run does) or when no other job shares
its group. Import-light: torch is imported only to build a model on the meta device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from .compose import validate
from .config import ConfigError
from .data import DataError, dataset_shape

# Trainer keys a group's runs may differ in: none changes a shape, the batch pipeline or a process-wide flag.
PER_RUN_TRAINER_KEYS = frozenset({
    "seed", "epochs", "eval_every", "eval_batch_size", "train_eval_size", "save_best", "log_every",
    "limit_eval_batches", "num_workers", "channels_last", "checkpoint_every", "fail_fast", "failure_value",
})
SHOWN_KEYS = 4  # differing keys named in the line that says why a sweep was split


def refusal(cfg: DictConfig) -> Optional[str]:
    """Why this job cannot train in a packed group, or None when it can."""
    t = cfg.trainer
    if t.pipeline != "resident":
        return f"trainer.pipeline={t.pipeline}: its batches come from DataLoader worker processes"
    if t.compile:
        return "trainer.compile=true: a compiled model is not batched over runs"
    if str(t.cuda_graph).lower() == "true":
        return "trainer.cuda_graph=true: a packed step runs eagerly"
    try:
        validate(cfg)
    except (ConfigError, DataError) as e:
        return f"its config is refused ({e})"
    odd = _unbatchable_layers(cfg)
    return f"model={cfg.model.name} has {odd} layers, whose random draws a packed step cannot make per run" if odd else None


def _model(cfg: DictConfig) -> Any:
    """The job's model on the meta device: its structure, no memory and no data."""
    import torch

    from .models import build_model

    c, h, w, classes = dataset_shape(cfg.dataset)
    with torch.device("meta"):
        return build_model(cfg.model, c, (h, w), classes)


def _unbatchable_layers(cfg: DictConfig) -> Optional[str]:
    from torch import nn

    from .batched import DROPOUTS

    odd = {type(m).__name__ for m in _model(cfg).modules()
           if isinstance(m, (nn.modules.dropout._DropoutNd, nn.RReLU)) and not isinstance(m, DROPOUTS)}
    return ", ".join(sorted(odd)) or None


def structure(cfg: DictConfig) -> str:
    """The architecture as a packed step sees it: every layer's name, type and settings (a dropout layer's
    rate left out) and every parameter's and buffer's shape."""
    from .batched import DROPOUTS

    model = _model(cfg)
    layers = [(n, type(m).__name__, "" if isinstance(m, DROPOUTS) else m.extra_repr()) for n, m in model.named_modules()]
    shapes = [(n, list(t.shape)) for n, t in [*model.named_parameters(), *model.named_buffers()]]
    return json.dumps([layers, shapes])


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys can train as one group."""
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
               if k not in PER_RUN_TRAINER_KEYS}
    shared = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in ("dataset", "data")}
    return json.dumps([shared, trainer, structure(cfg)], sort_keys=True, default=str)


@dataclass
class Plan:
    """A sweep's jobs (by index) as packed groups and jobs that train alone, each with why."""

    groups: list[list[int]] = field(default_factory=list)
    alone: dict[int, str] = field(default_factory=dict)
    split: Optional[str] = None  # what separates the groups, when there are several


def plan(cfgs: Sequence[DictConfig]) -> Plan:
    """Group the jobs ``cfgs`` by :func:`group_key`; a job :func:`refusal` refuses, or one alone in its group,
    trains on its own."""
    p = Plan()
    by_key: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        why = refusal(cfg)
        if why:
            p.alone[i] = why
        else:
            by_key.setdefault(group_key(cfg), []).append(i)
    for members in by_key.values():
        if len(members) > 1:
            p.groups.append(members)
        else:
            p.alone[members[0]] = "no other job shares its data set, architecture and batch shape"
    if len(by_key) > 1:
        p.split = _differing([cfgs[m[0]] for m in by_key.values()])
    return p


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: json.dumps(node, sort_keys=True, default=str)}


def _differing(cfgs: list[DictConfig]) -> str:
    """The shared keys whose values differ between the groups' first jobs, e.g. ``model.name (lenet, tinynet),
    trainer.batch_size`` (a group whose option differs is named by its option alone)."""
    flats = [_flat({g: OmegaConf.to_container(c[g], resolve=True) for g in ("dataset", "data", "model", "trainer")})
             for c in cfgs]
    keys = sorted({k for f in flats for k in f if len({f.get(k) for f in flats}) > 1
                   and not (k.startswith("trainer.") and k.split(".", 1)[1] in PER_RUN_TRAINER_KEYS)})
    named = {k.split(".")[0] for k in keys if k.count(".") == 1 and k.endswith(".name")}
    keys = [k for k in keys if k.endswith(".name") or k.split(".")[0] not in named]  # the option's name says it
    keys.sort(key=lambda k: (not k.endswith(".name"), k))
    shown = [f"{k} ({', '.join(sorted({json.loads(f[k]) if k in f else 'unset' for f in flats}, key=str))})"
             if k.endswith(".name") else k for k in keys[:SHOWN_KEYS]]
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(shown) + more if shown else "the architecture"
