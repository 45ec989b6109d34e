"""CNN architectures from the tutorials, plus a residual family, built from config for any data set shape.

Every builder takes ``(cfg, in_channels, image_size, num_classes)`` and sizes
its dense layers from ``image_size`` arithmetic, so one model config runs on
MNIST, CIFAR-10 and CIFAR-2 alike. Structure is a set of knobs, one concept
each, with the same name and meaning on every model that has them (``norm``,
``norm_groups``, ``activation``, ``init``; the plain CNNs add ``conv_channels``,
``kernel_size``, ``pool``, ``dropout2d``, ``dense``, ``dense_norm``, ``dropout``;
``resnet`` adds ``width``, ``depth``, ``stages``, ``residual``); each model's
defaults rebuild its tutorial's net exactly.

Models are named ``nn.Sequential``s whose children are registered in execution
order: tools that walk leaf modules with forward hooks (layer tables, Grad-CAM
via :func:`last_conv`) see the real sequence, and ``forward`` has no
data-dependent Python branching, so ``torch.compile``, ``channels_last`` and
bf16 autocast all work. Optional layers are left out at build time.

torch is imported inside the builders: this module registers the schemas and
must stay importable without it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .config import ConfigError, Registry, one_of, positive, probability, require

if TYPE_CHECKING:
    from torch import nn

MODELS = Registry("model")

# Knob values -> what they build (torch.nn class names, so this module needs no torch).
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "sigmoid": "Sigmoid", "tanh": "Tanh"}
NORMS = {"none": "", "batch": "bn", "group": "gn", "layer": "ln"}  # value -> layer-name prefix
POOLS = {"max": "MaxPool2d", "avg": "AvgPool2d"}
INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


# --------------------------------------------------------------------------- helpers
def _check_ints(key: str, values: Sequence[int], allow_empty: bool = False) -> None:
    ok = isinstance(values, Sequence) and (allow_empty or len(values) > 0)
    require(ok and all(isinstance(v, int) and v > 0 for v in values), key, list(values),
            f"must be a {'' if allow_empty else 'non-empty '}list of integers > 0")


def _input_shape(model: str, channels: int, image_size: Sequence[int]) -> tuple[int, int, int]:
    h, w = (int(s) for s in image_size)
    if channels <= 0 or h <= 0 or w <= 0:
        raise ConfigError(f"model={model}: bad input shape {channels}x{h}x{w}")
    return int(channels), h, w


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` in ``named_modules`` order (= execution order here), e.g. for Grad-CAM."""
    from torch import nn

    convs = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    return convs[-1]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _mult_adds(module: nn.Module, out: Any) -> int:
    """Multiply-adds of one call (bias adds not counted): Conv2d and Linear only."""
    from torch import nn

    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def layer_calls(model: nn.Module, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    """One record per leaf-module call on one input of ``input_shape`` (C, H, W), in execution order:
    ``layer`` (name), ``type``, ``output_shape`` (batch dimension dropped), ``params``, ``trainable``,
    ``mult_adds``. Runs in eval mode (a batch of one through BatchNorm1d), restores the model's mode,
    and draws no random numbers, so the trainer may call it before training."""
    import torch

    calls: list[dict[str, Any]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        tensor = isinstance(out, torch.Tensor)
        own = list(module.parameters(recurse=False))
        calls.append(dict(layer=names[module], type=type(module).__name__,
                          output_shape=tuple(out.shape[1:]) if tensor else (), params=sum(p.numel() for p in own),
                          trainable=sum(p.numel() for p in own if p.requires_grad),
                          mult_adds=_mult_adds(module, out) if tensor else 0))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    p = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def count_mult_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of one image of ``input_shape`` (C, H, W): Conv2d and Linear."""
    return sum(c["mult_adds"] for c in layer_calls(model, input_shape))


def build_model(cfg: Any, in_channels: int, image_size: Sequence[int], num_classes: int) -> nn.Module:
    """Build ``cfg.name``'s model for inputs ``in_channels x H x W`` and ``num_classes`` outputs."""
    require(int(num_classes) > 0, "dataset.num_classes", num_classes, "must be > 0")
    return MODELS.build(cfg, int(in_channels), tuple(int(s) for s in image_size), int(num_classes))


# --------------------------------------------------------------------------- shared knobs
@dataclass
class NetKnobs:
    """Knobs every model has, with one meaning everywhere."""

    name: str = ""
    norm: str = "none"         # layer after each conv, before the activation: none, batch, group, layer
    norm_groups: int = 8       # groups of norm=group (must divide every normalised width)
    activation: str = "relu"   # relu, gelu, sigmoid, tanh
    init: str = "default"      # weights of every Conv2d/Linear: default (torch's) or an nn.init scheme

    def __post_init__(self) -> None:
        one_of("model.norm", self.norm, NORMS)
        one_of("model.activation", self.activation, ACTIVATIONS)
        one_of("model.init", self.init, INITS)
        positive("model", self, "norm_groups")
        for w in self.normalised_widths() if self.norm == "group" else []:
            require(w % self.norm_groups == 0, "model.norm_groups", self.norm_groups,
                    f"must divide every normalised width ({w} does not); pick a divisor or use model.norm=layer")

    def normalised_widths(self) -> list[int]:
        """Channel counts that get a norm layer (for the norm_groups check)."""
        return []

    def check_input(self, channels: int, image_size: Sequence[int]) -> None:
        """Refuse an input of ``channels x H x W`` that this model cannot take (one line naming the knob).
        :func:`ablate.compose.validate` runs it on the data set's shape: no torch, no model built."""
        _input_shape(self.name, channels, image_size)


def _norm(kind: str, channels: int, groups: int, dense: bool = False) -> nn.Module:
    """The ``norm`` knob's layer; ``layer`` on a conv is GroupNorm(1, C) (over C, H, W per image)."""
    from torch import nn

    if kind == "batch":
        return nn.BatchNorm1d(channels) if dense else nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels) if dense else nn.GroupNorm(1, channels)
    return nn.GroupNorm(groups, channels)


def _activation(name: str) -> nn.Module:
    from torch import nn

    return getattr(nn, ACTIVATIONS[name])()


def _initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Re-draw every Conv2d/Linear weight with ``nn.init.<scheme>_`` (torch's default arguments);
    biases and norm layers keep torch's defaults."""
    from torch import nn

    if scheme != "default":
        fn = getattr(nn.init, f"{scheme}_")
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fn(m.weight)
    return model


# --------------------------------------------------------------------------- plain CNNs
@dataclass
class PlainCNNConf(NetKnobs):
    """(conv -> [norm] -> act -> pool -> [Dropout2d]) per entry of ``conv_channels``, then
    (Linear -> [norm] -> act -> [Dropout]) per entry of ``dense``, then the output Linear."""

    conv_channels: list[int] = field(default_factory=lambda: [32, 64])  # length = conv blocks, values = widths
    kernel_size: int = 3       # odd; convs are padded to keep the size (LeNet: only the first)
    pool: str = "max"          # 2x2 pooling after each conv block: max, avg
    dropout2d: float = 0.0     # nn.Dropout2d (drops whole channels) after each conv block; 0 = no layer
    dense: list[int] = field(default_factory=lambda: [128])  # hidden dense widths; [] = none
    dense_norm: bool = False   # also put the norm layer after each hidden dense layer
    dropout: float = 0.0       # nn.Dropout after each hidden dense layer's activation; 0 = no layer
    pad_first_only: ClassVar[bool] = False  # LeNet pads only its first conv ("same"); the others shrink the map

    def __post_init__(self) -> None:
        _check_ints("model.conv_channels", self.conv_channels)
        _check_ints("model.dense", self.dense, allow_empty=True)
        positive("model", self, "kernel_size")
        require(self.kernel_size % 2 == 1, "model.kernel_size", self.kernel_size, "must be odd")
        one_of("model.pool", self.pool, POOLS)
        probability("model", self, "dropout", "dropout2d")
        super().__post_init__()

    def normalised_widths(self) -> list[int]:
        return list(self.conv_channels) + (list(self.dense) if self.dense_norm else [])

    def paddings(self) -> list[int]:
        return [0 if self.pad_first_only and i else self.kernel_size // 2 for i in range(len(self.conv_channels))]

    def feature_shape(self, channels: int, image_size: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) the conv blocks leave of one input (each block's 2x2 pooling floors), what sizes the dense
        layers; refuses a stack that shrinks the input to nothing."""
        _, h, w = shape = _input_shape(self.name, channels, image_size)
        k, seen = self.kernel_size, f"model={self.name} on a {'x'.join(map(str, shape))} input"
        for i, pad in enumerate(self.paddings(), 1):
            m, fewer = min(h, w), f"at most {i - 1} conv block(s)"
            # Only an unpadded conv shrinks the map; it needs one at least as large as its kernel (and a kernel
            # <= m - 1 leaves the pooling 2 pixels).
            require(m + 2 * pad >= k, "model.kernel_size", k, f"{seen}: conv{i} (unpadded) gets a {h}x{w} map; use "
                    + (f"a kernel_size <= {(m - 2) | 1} or {fewer}" if m >= 2 else fewer))
            h, w = (h + 2 * pad - k + 1) // 2, (w + 2 * pad - k + 1) // 2  # then 2x2 pooling, floored
            require(h >= 1 and w >= 1, "model.conv_channels", list(self.conv_channels),
                    f"{seen}: conv block {i} pools the map to nothing; use {fewer} or a larger image")
        return self.conv_channels[-1], h, w

    def check_input(self, channels: int, image_size: Sequence[int]) -> None:
        self.feature_shape(channels, image_size)


def _plain_cnn(cfg: PlainCNNConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    from torch import nn

    c, h, w = cfg.feature_shape(in_channels, image_size)
    act, norm = cfg.activation, NORMS[cfg.norm]
    layers: list[tuple[str, nn.Module]] = []
    for i, (c_in, ch, pad) in enumerate(zip([in_channels, *cfg.conv_channels], cfg.conv_channels, cfg.paddings()), 1):
        layers.append((f"conv{i}", nn.Conv2d(c_in, ch, cfg.kernel_size, padding=pad)))
        if norm:
            layers.append((f"{norm}{i}", _norm(cfg.norm, ch, cfg.norm_groups)))
        layers += [(f"{act}{i}", _activation(act)), (f"pool{i}", getattr(nn, POOLS[cfg.pool])(2))]
        if cfg.dropout2d > 0:
            layers.append((f"drop{i}", nn.Dropout2d(cfg.dropout2d)))
    layers.append(("flatten", nn.Flatten()))
    width = c * h * w
    for j, d in enumerate(cfg.dense, 1):
        k = len(cfg.conv_channels) + j
        layers.append((f"fc{j}", nn.Linear(width, d)))
        if norm and cfg.dense_norm:
            layers.append((f"{norm}{k}", _norm(cfg.norm, d, cfg.norm_groups, dense=True)))
        layers.append((f"{act}{k}", _activation(act)))
        if cfg.dropout > 0:
            layers.append((f"drop{k}", nn.Dropout(cfg.dropout)))
        width = d
    layers.append(("out", nn.Linear(width, num_classes)))
    return _initialise(nn.Sequential(OrderedDict(layers)), cfg.init)


@dataclass
class LeNetConf(PlainCNNConf):
    name: str = "lenet"
    conv_channels: list[int] = field(default_factory=lambda: [6, 16])
    kernel_size: int = 5
    activation: str = "sigmoid"
    pool: str = "avg"
    dense: list[int] = field(default_factory=lambda: [120, 84])
    init: str = "xavier_uniform"
    pad_first_only: ClassVar[bool] = True


@MODELS.register("lenet", LeNetConf)
def lenet(cfg: LeNetConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """LeNet-5 as in d2l: sigmoid + average pooling, Xavier init (sigmoid nets train poorly with
    torch's default); only the first conv is padded ("same"), the others shrink the map."""
    return _plain_cnn(cfg, in_channels, image_size, num_classes)


@dataclass
class SimpleCNNConf(PlainCNNConf):
    name: str = "simple_cnn"
    dropout: float = 0.5


@MODELS.register("simple_cnn", SimpleCNNConf)
def simple_cnn(cfg: SimpleCNNConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """The MNIST tutorial's CNN: (conv3x3 -> ReLU -> max-pool) blocks, dense + dropout."""
    return _plain_cnn(cfg, in_channels, image_size, num_classes)


@dataclass
class CNN3Conf(PlainCNNConf):
    name: str = "cnn3"
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    norm: str = "batch"
    dense: list[int] = field(default_factory=lambda: [512])
    dense_norm: bool = True
    dropout: float = 0.3


@MODELS.register("cnn3", CNN3Conf)
def cnn3(cfg: CNN3Conf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """The CIFAR tutorial's CNN: (conv3x3 -> BN -> ReLU -> max-pool) blocks, dense + BN + dropout."""
    return _plain_cnn(cfg, in_channels, image_size, num_classes)


@dataclass
class TinyNetConf(PlainCNNConf):
    name: str = "tinynet"
    conv_channels: list[int] = field(default_factory=lambda: [16, 8])
    activation: str = "tanh"
    dense: list[int] = field(default_factory=lambda: [32])


@MODELS.register("tinynet", TinyNetConf)
def tinynet(cfg: TinyNetConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """Birds-vs-planes net: Net, NetWidth (conv_channels [32, 16]), NetDropout (+ dropout2d 0.4),
    NetBatchNorm (+ norm batch). Unlike the tutorial's hand-written forward, which forgot conv2 in
    NetWidth/NetDropout, every registered layer runs, in registration order."""
    return _plain_cnn(cfg, in_channels, image_size, num_classes)


# --------------------------------------------------------------------------- resnet
@dataclass
class ResNetConf(NetKnobs):
    name: str = "resnet"
    width: int = 64            # channels of the first stage; each later stage doubles them
    depth: int = 2             # basic blocks per stage (6 * depth + 2 weighted layers with 3 stages)
    stages: int = 3            # each stage after the first halves the resolution (stride-2 first block)
    residual: bool = True      # false: the same blocks without shortcuts (He et al.'s "plain" net)
    norm: str = "batch"
    init: str = "kaiming_normal"

    def __post_init__(self) -> None:
        positive("model", self, "width", "depth", "stages")
        super().__post_init__()

    def normalised_widths(self) -> list[int]:
        return [self.width * 2 ** i for i in range(self.stages)]


@MODELS.register("resnet", ResNetConf)
def resnet(cfg: ResNetConf, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """A CIFAR-style ResNet (He et al. 2016): 3x3 stem, ``stages`` stages of ``depth`` basic blocks,
    global average pooling, one Linear; with 3 stages, depth n is the paper's 6n+2-layer net.

    Classic post-activation blocks, ``act(norm(conv(act(norm(conv(x))))) + shortcut(x))``, not
    pre-activation: at these depths (tens of layers) pre-activation gains nothing measurable, the
    classic block is torchvision's BasicBlock that readers know, and every block's output is
    normalised and activated, so the head needs no extra norm. Downsampling is by stride-2 convs (no
    stem pooling: 28-32 pixel inputs), so any input size >= 1 works. A shortcut is a projection
    (1x1 conv + norm) where the shape changes, else the identity. Convs followed by a norm layer
    have no bias (the norm's shift replaces it). ``residual=false`` drops every shortcut, leaving
    ``act(main(x))``: the paper's plain counterpart, the same layers less the projections."""
    from torch import nn

    from .layers import Residual

    cfg.check_input(in_channels, image_size)
    act, norm, bias = cfg.activation, NORMS[cfg.norm], cfg.norm == "none"

    def conv_norm(c_in: int, c_out: int, k: int, stride: int, tag: str) -> list[tuple[str, nn.Module]]:
        conv = [(f"conv{tag}", nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=bias))]
        return conv + ([(f"{norm}{tag}", _norm(cfg.norm, c_out, cfg.norm_groups))] if norm else [])

    layers = conv_norm(in_channels, cfg.width, 3, 1, "1") + [(f"{act}1", _activation(act))]
    c = cfg.width
    for i in range(cfg.stages):
        out, blocks = cfg.width * 2 ** i, []
        for b in range(cfg.depth):
            stride = 2 if i > 0 and b == 0 else 1
            main = nn.Sequential(OrderedDict(conv_norm(c, out, 3, stride, "1") + [(f"{act}1", _activation(act))]
                                             + conv_norm(out, out, 3, 1, "2")))
            if cfg.residual:
                shortcut = (nn.Identity() if stride == 1 and c == out
                            else nn.Sequential(OrderedDict(conv_norm(c, out, 1, stride, ""))))
                block: nn.Module = Residual(shortcut, main, _activation(act))
            else:
                block = nn.Sequential(OrderedDict([("main", main), ("act", _activation(act))]))
            blocks.append((f"block{b + 1}", block))
            c = out
        layers.append((f"stage{i + 1}", nn.Sequential(OrderedDict(blocks))))
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("out", nn.Linear(c, num_classes))]
    return _initialise(nn.Sequential(OrderedDict(layers)), cfg.init)
