"""CNN architectures from the tutorials, built from config for any data set shape.

Every builder takes ``(cfg, in_channels, image_size, num_classes)`` and sizes
its dense layers from ``image_size`` arithmetic, so one model config runs on
MNIST, CIFAR-10 and CIFAR-2 alike. Models are named ``nn.Sequential``s whose
children are registered in execution order: tools that walk leaf modules with
forward hooks (layer tables, Grad-CAM via :func:`last_conv`) see the real
sequence, and ``forward`` has no data-dependent Python branching, so
``torch.compile``, ``channels_last`` and bf16 autocast all work.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import ConfigError, Registry, one_of, positive, probability, require

MODELS = Registry("model")


# --------------------------------------------------------------------------- helpers
def _check_ints(key: str, values: Sequence[int]) -> None:
    require(len(values) > 0 and all(isinstance(v, int) and v > 0 for v in values), key, list(values),
            "must be a non-empty list of integers > 0")


class _Shape:
    """Tracks (C, H, W) through a conv/pool stack so dense layers need no dry run."""

    def __init__(self, model: str, channels: int, image_size: Sequence[int]) -> None:
        h, w = (int(s) for s in image_size)
        if channels <= 0 or h <= 0 or w <= 0:
            raise ConfigError(f"model={model}: bad input shape {channels}x{h}x{w}")
        self.model, self.c, self.h, self.w = model, channels, h, w
        self.input = (channels, h, w)

    def conv(self, out: int, k: int, padding: int) -> None:
        self.c, self.h, self.w = out, self.h + 2 * padding - k + 1, self.w + 2 * padding - k + 1
        self._check()

    def pool(self, k: int = 2) -> None:
        self.h, self.w = self.h // k, self.w // k
        self._check()

    def _check(self) -> None:
        if self.h < 1 or self.w < 1:
            c, h, w = self.input
            raise ConfigError(f"model={self.model}: input {c}x{h}x{w} shrinks to nothing in the conv/pool "
                              "stack; use fewer conv layers or a larger image size")

    @property
    def flat(self) -> int:
        return self.c * self.h * self.w


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` in ``named_modules`` order (= execution order here), e.g. for Grad-CAM."""
    convs = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    return convs[-1]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(cfg: Any, in_channels: int, image_size: Sequence[int], num_classes: int) -> nn.Module:
    """Build ``cfg.name``'s model for inputs ``in_channels x H x W`` and ``num_classes`` outputs."""
    require(int(num_classes) > 0, "dataset.num_classes", num_classes, "must be > 0")
    return MODELS.build(cfg, int(in_channels), tuple(int(s) for s in image_size), int(num_classes))


# --------------------------------------------------------------------------- LeNet
@dataclass
class LeNetConf:
    name: str = "lenet"
    conv_channels: list[int] = field(default_factory=lambda: [6, 16])
    kernel_size: int = 5
    dense: list[int] = field(default_factory=lambda: [120, 84])
    init: str = "xavier_uniform"

    def __post_init__(self) -> None:
        _check_ints("model.conv_channels", self.conv_channels)
        _check_ints("model.dense", self.dense)
        positive("model", self, "kernel_size")
        one_of("model.init", self.init, ["xavier_uniform", "default"])


@MODELS.register("lenet", LeNetConf)
def lenet(cfg: LeNetConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """LeNet-5 as in d2l: sigmoid + average pooling; only the first conv is padded ("same")."""
    s = _Shape("lenet", in_channels, image_size)
    layers: list[tuple[str, nn.Module]] = []
    for i, ch in enumerate(cfg.conv_channels, 1):
        pad = cfg.kernel_size // 2 if i == 1 else 0
        layers.append((f"conv{i}", nn.Conv2d(s.c, ch, cfg.kernel_size, padding=pad)))
        s.conv(ch, cfg.kernel_size, pad)
        layers += [(f"sigmoid{i}", nn.Sigmoid()), (f"pool{i}", nn.AvgPool2d(2, 2))]
        s.pool(2)
    layers.append(("flatten", nn.Flatten()))
    width = s.flat
    for j, d in enumerate(cfg.dense, 1):
        layers += [(f"fc{j}", nn.Linear(width, d)), (f"sigmoid{len(cfg.conv_channels) + j}", nn.Sigmoid())]
        width = d
    layers.append(("out", nn.Linear(width, num_classes)))
    model = nn.Sequential(OrderedDict(layers))
    if cfg.init == "xavier_uniform":  # d2l's init: sigmoid nets train poorly with torch's default
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
    return model


# --------------------------------------------------------------------------- simple_cnn
@dataclass
class SimpleCNNConf:
    name: str = "simple_cnn"
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])
    dense: int = 128
    dropout: float = 0.5

    def __post_init__(self) -> None:
        _check_ints("model.conv_channels", self.conv_channels)
        positive("model", self, "dense")
        probability("model", self, "dropout")


@MODELS.register("simple_cnn", SimpleCNNConf)
def simple_cnn(cfg: SimpleCNNConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """The MNIST tutorial's CNN: (conv3x3 -> ReLU -> max-pool) blocks, dense + dropout."""
    s = _Shape("simple_cnn", in_channels, image_size)
    layers: list[tuple[str, nn.Module]] = []
    for i, ch in enumerate(cfg.conv_channels, 1):
        layers += [(f"conv{i}", nn.Conv2d(s.c, ch, 3, padding=1)), (f"relu{i}", nn.ReLU()),
                   (f"pool{i}", nn.MaxPool2d(2))]
        s.conv(ch, 3, 1)
        s.pool(2)
    layers += [("flatten", nn.Flatten()), ("fc1", nn.Linear(s.flat, cfg.dense)),
               (f"relu{len(cfg.conv_channels) + 1}", nn.ReLU()), ("dropout", nn.Dropout(cfg.dropout)),
               ("out", nn.Linear(cfg.dense, num_classes))]
    return nn.Sequential(OrderedDict(layers))


# --------------------------------------------------------------------------- cnn3
@dataclass
class CNN3Conf:
    name: str = "cnn3"
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    dense: int = 512
    dropout: float = 0.3

    def __post_init__(self) -> None:
        _check_ints("model.conv_channels", self.conv_channels)
        positive("model", self, "dense")
        probability("model", self, "dropout")


@MODELS.register("cnn3", CNN3Conf)
def cnn3(cfg: CNN3Conf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """The CIFAR tutorial's CNN: (conv3x3 -> BN -> ReLU -> max-pool) blocks, dense + BN + dropout."""
    s = _Shape("cnn3", in_channels, image_size)
    layers: list[tuple[str, nn.Module]] = []
    for i, ch in enumerate(cfg.conv_channels, 1):
        layers += [(f"conv{i}", nn.Conv2d(s.c, ch, 3, padding=1)), (f"bn{i}", nn.BatchNorm2d(ch)),
                   (f"relu{i}", nn.ReLU()), (f"pool{i}", nn.MaxPool2d(2))]
        s.conv(ch, 3, 1)
        s.pool(2)
    k = len(cfg.conv_channels) + 1
    layers += [("flatten", nn.Flatten()), ("fc1", nn.Linear(s.flat, cfg.dense)),
               (f"bn{k}", nn.BatchNorm1d(cfg.dense)), (f"relu{k}", nn.ReLU()),
               ("dropout", nn.Dropout(cfg.dropout)), ("out", nn.Linear(cfg.dense, num_classes))]
    return nn.Sequential(OrderedDict(layers))


# --------------------------------------------------------------------------- tinynet
@dataclass
class TinyNetConf:
    name: str = "tinynet"
    n_channel: int = 16
    dense: int = 32
    dropout2d: float = 0.0
    batchnorm: bool = False

    def __post_init__(self) -> None:
        require(self.n_channel is not None and self.n_channel >= 2, "model.n_channel", self.n_channel,
                "must be >= 2 (conv2 has n_channel // 2 channels)")
        positive("model", self, "dense")
        probability("model", self, "dropout2d")


class TinyNet(nn.Sequential):
    """Birds-vs-planes net (Net / NetWidth / NetDropout / NetBatchNorm in one).

    A Sequential, unlike the tutorial's hand-written forward that forgot conv2
    in NetWidth/NetDropout: every registered layer runs, in registration order,
    and optional layers are left out at build time rather than branched on."""

    def __init__(self, cfg: TinyNetConf, in_channels: int, image_size: tuple[int, int], num_classes: int):
        s = _Shape("tinynet", in_channels, image_size)
        n1, n2 = cfg.n_channel, cfg.n_channel // 2
        layers: list[tuple[str, nn.Module]] = []
        for i, ch in enumerate((n1, n2), 1):
            layers.append((f"conv{i}", nn.Conv2d(s.c, ch, 3, padding=1)))
            s.conv(ch, 3, 1)
            if cfg.batchnorm:
                layers.append((f"bn{i}", nn.BatchNorm2d(ch)))
            layers += [(f"tanh{i}", nn.Tanh()), (f"pool{i}", nn.MaxPool2d(2))]
            s.pool(2)
            if cfg.dropout2d > 0:
                layers.append((f"drop{i}", nn.Dropout2d(cfg.dropout2d)))
        layers += [("flatten", nn.Flatten()), ("fc1", nn.Linear(s.flat, cfg.dense)), ("tanh3", nn.Tanh()),
                   ("fc2", nn.Linear(cfg.dense, num_classes))]
        super().__init__(OrderedDict(layers))


@MODELS.register("tinynet", TinyNetConf)
def tinynet(cfg: TinyNetConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    return TinyNet(cfg, in_channels, image_size, num_classes)
