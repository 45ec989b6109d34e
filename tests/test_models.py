"""Models: tutorial parameter counts, every data set shape, every layer used, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from ablate.config import ConfigError
from ablate.models import (MODELS, LeNetConf, SimpleCNNConf, TinyNetConf, build_model, count_parameters,
                           last_conv)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
SHAPES = [(1, 28, 28, 10), (3, 32, 32, 10), (3, 32, 32, 2)]
NAMES = ["lenet", "simple_cnn", "cnn3", "tinynet"]
TINY_VARIANTS = [{}, {"n_channel": 32}, {"dropout2d": 0.4}, {"batchnorm": True}]


@pytest.fixture(scope="module")
def yaml_cfgs() -> dict:
    """The shipped YAMLs, composed by Hydra: checks they match the registered schemas."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return {n: compose(config_name=f"model/{n}").model for n in NAMES}


def test_registry_names() -> None:
    assert MODELS.names() == sorted(NAMES)


@pytest.mark.parametrize(("cfg", "shape", "expected"), [
    (SimpleCNNConf(), (1, 28, 28, 10), 421_642),
    (TinyNetConf(), (3, 32, 32, 2), 18_090),
    (TinyNetConf(n_channel=32), (3, 32, 32, 2), 38_386),
    (LeNetConf(), (1, 28, 28, 10), 61_706),
])
def test_tutorial_parameter_counts(cfg, shape, expected: int) -> None:
    c, h, w, k = shape
    model = build_model(cfg, c, (h, w), k)
    assert count_parameters(model) == expected
    model.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 0


def test_lenet_layer_sequence() -> None:
    """The d2l layer table: shapes after each layer on a 1x28x28 input."""
    model = build_model(LeNetConf(), 1, (28, 28), 10)
    x, seen = torch.randn(1, 1, 28, 28), []
    for layer in model:
        x = layer(x)
        seen.append((type(layer).__name__, tuple(x.shape[1:])))
    assert seen == [("Conv2d", (6, 28, 28)), ("Sigmoid", (6, 28, 28)), ("AvgPool2d", (6, 14, 14)),
                    ("Conv2d", (16, 10, 10)), ("Sigmoid", (16, 10, 10)), ("AvgPool2d", (16, 5, 5)),
                    ("Flatten", (400,)), ("Linear", (120,)), ("Sigmoid", (120,)), ("Linear", (84,)),
                    ("Sigmoid", (84,)), ("Linear", (10,))]


def test_cnn3_flatten_size() -> None:
    model = build_model({"name": "cnn3"}, 1, (28, 28), 10)  # 28 -> 14 -> 7 -> 3
    assert model.fc1.in_features == 128 * 3 * 3


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_every_shape(name: str, shape, yaml_cfgs) -> None:
    c, h, w, k = shape
    torch.manual_seed(0)
    model = build_model(yaml_cfgs[name], c, (h, w), k)
    out = model(torch.randn(4, c, h, w))
    assert out.shape == (4, k)
    out.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert isinstance(last_conv(model), nn.Conv2d)


@pytest.mark.parametrize("knobs", TINY_VARIANTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "base")
def test_tinynet_uses_every_layer(knobs: dict) -> None:
    """The tutorial's NetWidth/NetDropout defined conv2 but never called it; ours must."""
    model = build_model(TinyNetConf(**knobs), 3, (32, 32), 2)
    leaves = {n: m for n, m in model.named_modules() if not list(m.children())}
    fired: list[str] = []
    for n, m in leaves.items():
        m.register_forward_hook(lambda *_, n=n: fired.append(n))
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    before = model(x)
    assert fired == list(leaves)  # every leaf, once, in registration order
    assert last_conv(model) is model.conv2
    with torch.no_grad():
        model.conv2.weight.zero_()
    assert not torch.allclose(before, model(x))
    names = list(leaves)
    assert ("bn1" in names) == bool(knobs.get("batchnorm")) and ("drop2" in names) == bool(knobs.get("dropout2d"))


def test_channels_last_bf16_compile() -> None:
    """What the trainer does on a GPU: channels_last, bf16 autocast, torch.compile without graph breaks."""
    for name in NAMES:
        model = build_model({"name": name}, 3, (32, 32), 10).to(memory_format=torch.channels_last)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = compiled(torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last))
        out.float().sum().backward()
        assert out.shape == (4, 10) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_unknown_model_lists_known() -> None:
    with pytest.raises(ConfigError, match="model.name='resnet'.*cnn3, lenet, simple_cnn, tinynet"):
        build_model({"name": "resnet"}, 3, (32, 32), 10)


@pytest.mark.parametrize(("cfg", "key"), [
    ({"name": "simple_cnn", "dropout": 1.5}, "model.dropout"),
    ({"name": "cnn3", "dropout": -0.1}, "model.dropout"),
    ({"name": "tinynet", "dropout2d": 1.5}, "model.dropout2d"),
    ({"name": "tinynet", "n_channel": 1}, "model.n_channel"),
    ({"name": "cnn3", "conv_channels": [32, 0]}, "model.conv_channels"),
    ({"name": "lenet", "init": "he"}, "model.init"),
])
def test_bad_knob_names_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(cfg, 3, (32, 32), 10)


def test_bad_knob_from_yaml_override() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="model/simple_cnn", overrides=["model.dropout=1.5"]).model
    with pytest.raises(ConfigError, match=r"model\.dropout=1\.5"):
        build_model(cfg, 1, (28, 28), 10)


def test_image_too_small_is_config_error() -> None:
    with pytest.raises(ConfigError, match="cnn3"):
        build_model({"name": "cnn3"}, 3, (4, 4), 10)
