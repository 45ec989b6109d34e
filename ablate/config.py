"""Config schemas, registries and validation.

Every config group option (``conf/<group>/<name>.yaml``) is typed by a dataclass
registered in Hydra's ConfigStore under ``schema/<group>/<name>``; the YAML pulls
it in with ``defaults: [/schema/<group>/<name>@_here_, _self_]``. A misspelt key
or a wrong type is then refused by Hydra when the job's config is composed, and
range checks run in each dataclass's ``__post_init__`` when :func:`typed` turns
the node into an object (OmegaConf itself never calls ``__post_init__``).

A new option is one YAML file plus one builder registered with
:meth:`Registry.register`; nothing else needs touching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad value in the config; the message is one line that names the key."""


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the config groups (an editable install keeps them here)


def require(ok: bool, key: str, value: Any, what: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {what}")


def positive(group: str, obj: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(obj, f)
        require(v is not None and v > 0, f"{group}.{f}", v, "must be > 0")


def non_negative(group: str, obj: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(obj, f)
        require(v is not None and v >= 0, f"{group}.{f}", v, "must be >= 0")


def probability(group: str, obj: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(obj, f)
        require(v is not None and 0.0 <= v <= 1.0, f"{group}.{f}", v, "must be a probability in [0, 1]")


def store_schema(group: str, name: str, schema: type) -> None:
    """Register ``schema`` as ``schema/<group>/<name>`` for the YAML's defaults list."""
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=schema)


class Registry:
    """Name -> (schema, builder) for one config group (models, optimizers, ...)."""

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

    def typed(self, cfg: Any) -> Any:
        """The option's dataclass instance, range-checked."""
        name = cfg.name if not isinstance(cfg, dict) else cfg["name"]
        if name not in self.schemas:
            raise ConfigError(
                f"{self.group}.name={name!r} has no registered builder; known: {', '.join(self.names())}"
            )
        return typed(cfg, self.schemas[name])

    def build(self, cfg: Any, *args: Any, **kwargs: Any) -> Any:
        obj = self.typed(cfg)
        return self.builders[obj.name](obj, *args, **kwargs)


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


def plain(cfg: Any) -> Any:
    """A JSON-friendly copy of a config node or dataclass."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    require(value in allowed, key, value, f"must be one of {', '.join(map(str, allowed))}")


def _subdir(override_dirname: str) -> str:
    """Job dir name: the overrides (``model=cnn3,scheduler=step``), or ``default``."""
    return override_dirname or "default"


def _register_resolvers() -> None:
    for name, fn in {
        "ablate_subdir": _subdir,
        "multiply": lambda a, b: float(a) * float(b),
        # hydra.output_subdir: a dry run writes no .hydra/, so it never touches a real run's record.
        "ablate_hydra_subdir": lambda dry_run: None if dry_run else ".hydra",
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


_register_resolvers()
