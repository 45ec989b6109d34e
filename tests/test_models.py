"""Models: tutorial parameter counts, structure knobs, the residual family, every data set shape, config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from ablate import inspect as ins
from ablate.config import ConfigError
from ablate.models import (MODELS, CNN3Conf, LeNetConf, ResNetConf, SimpleCNNConf, TinyNetConf, build_model,
                           count_mult_adds, count_parameters, last_conv)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
SHAPES = [(1, 28, 28, 10), (3, 32, 32, 10), (3, 32, 32, 2)]
NAMES = ["lenet", "simple_cnn", "cnn3", "tinynet", "resnet"]
SCHEMAS = {"lenet": LeNetConf, "simple_cnn": SimpleCNNConf, "cnn3": CNN3Conf, "tinynet": TinyNetConf,
           "resnet": ResNetConf}
SMALL_RESNET = {"name": "resnet", "width": 8, "depth": 1, "stages": 3}


@pytest.fixture(scope="module")
def yaml_cfgs() -> dict:
    """The shipped YAMLs, composed by Hydra: checks they match the registered schemas."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return {n: compose(config_name=f"model/{n}").model for n in NAMES}


def types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if not list(m.children())]


def params(cfg: dict, shape=(1, 28, 28, 10)) -> int:
    c, h, w, k = shape
    return count_parameters(build_model(cfg, c, (h, w), k))


def test_registry_names() -> None:
    assert MODELS.names() == sorted(NAMES)


def test_yaml_is_the_schema_default(yaml_cfgs) -> None:
    """Each YAML spells out every knob with the schema's default: the tutorial net either way."""
    for name in NAMES:
        assert MODELS.typed(yaml_cfgs[name]) == SCHEMAS[name](), name


def test_models_module_does_not_import_torch() -> None:
    code = "import sys, ablate.models; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- tutorial defaults
@pytest.mark.parametrize(("cfg", "shape", "expected"), [
    (SimpleCNNConf(), (1, 28, 28, 10), 421_642),
    (CNN3Conf(), (3, 32, 32, 10), 1_148_938),
    (TinyNetConf(), (3, 32, 32, 2), 18_090),
    (TinyNetConf(conv_channels=[32, 16]), (3, 32, 32, 2), 38_386),  # NetWidth
    (TinyNetConf(conv_channels=[32, 16], norm="batch"), (3, 32, 32, 2), 38_386 + 2 * 32 + 2 * 16),  # NetBatchNorm
    (LeNetConf(), (1, 28, 28, 10), 61_706),
])
def test_tutorial_parameter_counts(cfg, shape, expected: int) -> None:
    c, h, w, k = shape
    model = build_model(cfg, c, (h, w), k)
    assert count_parameters(model) == expected
    model.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 0


@pytest.mark.parametrize(("variant", "expected", "has"), [
    ("base", 18_090, set()), ("width", 38_386, set()), ("dropout", 38_386, {"Dropout2d"}),
    ("batchnorm", 38_386 + 2 * 32 + 2 * 16, {"BatchNorm2d"})])
def test_variants_are_the_tutorial_nets(variant: str, expected: int, has: set) -> None:
    import ablate.run  # noqa: F401  (every group's schema, to compose the whole config)

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=["model=tinynet", f"+variant={variant}"]).model
    model = build_model(cfg, 3, (32, 32), 2)
    assert count_parameters(model) == expected
    assert {"Dropout2d", "BatchNorm2d"} & set(types(model)) == has
    assert types(model).count("Tanh") == 3 and types(model).count("Conv2d") == 2


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


# --------------------------------------------------------------------------- knobs
def test_conv_channels_sets_depth_and_width() -> None:
    # simple_cnn on 1x28x28, dense 128, 10 classes; a 3x3 conv has in*out*9 + out parameters
    one = 1 * 16 * 9 + 16 + (16 * 14 * 14) * 128 + 128 + 128 * 10 + 10         # 28 -> 14
    three = (1 * 8 * 9 + 8) + (8 * 16 * 9 + 16) + (16 * 32 * 9 + 32) \
        + (32 * 3 * 3) * 128 + 128 + 128 * 10 + 10                              # 28 -> 14 -> 7 -> 3
    assert (one, three) == (402_986, 44_170)
    assert params({"name": "simple_cnn", "conv_channels": [16]}) == one
    model = build_model({"name": "simple_cnn", "conv_channels": [8, 16, 32]}, 1, (28, 28), 10)
    assert count_parameters(model) == three
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [8, 16, 32]
    assert types(model).count("MaxPool2d") == 3


def test_norm_kinds() -> None:
    cnn3 = {"name": "cnn3"}  # 3x32x32, 10 classes: BN has 2 parameters per channel
    bn = 2 * (32 + 64 + 128) + 2 * 512
    assert params(cnn3, (3, 32, 32, 10)) == 1_148_938
    none = build_model({**cnn3, "norm": "none"}, 3, (32, 32), 10)
    assert count_parameters(none) == 1_148_938 - bn == 1_147_466
    assert not {"BatchNorm2d", "BatchNorm1d", "GroupNorm", "LayerNorm"} & set(types(none))
    assert params({**cnn3, "dense_norm": False}, (3, 32, 32, 10)) == 1_148_938 - 2 * 512
    group = build_model({**cnn3, "norm": "group", "norm_groups": 4}, 3, (32, 32), 10)
    gns = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in gns] == [(4, 32), (4, 64), (4, 128), (4, 512)]
    assert count_parameters(group) == 1_148_938 and "BatchNorm2d" not in types(group)
    layer = build_model({**cnn3, "norm": "layer"}, 3, (32, 32), 10)
    assert [m.num_groups for m in layer.modules() if isinstance(m, nn.GroupNorm)] == [1, 1, 1]
    assert types(layer).count("LayerNorm") == 1 and count_parameters(layer) == 1_148_938
    assert [n for n, _ in layer.named_children()][:4] == ["conv1", "ln1", "relu1", "pool1"]
    # lenet gains a BN per conv: 2 * (6 + 16)
    assert params({"name": "lenet", "norm": "batch"}) == 61_706 + 2 * (6 + 16)


@pytest.mark.parametrize(("name", "act", "cls", "count"), [
    ("lenet", "relu", "ReLU", 4), ("simple_cnn", "gelu", "GELU", 3), ("cnn3", "sigmoid", "Sigmoid", 4),
    ("tinynet", "relu", "ReLU", 3), ("resnet", "tanh", "Tanh", 1 + 2 * 3)])
def test_activation_swaps_every_nonlinearity(name: str, act: str, cls: str, count: int) -> None:
    base = build_model({"name": name, **(SMALL_RESNET if name == "resnet" else {})}, 3, (32, 32), 10)
    model = build_model({"name": name, "activation": act, **(SMALL_RESNET if name == "resnet" else {})},
                        3, (32, 32), 10)
    assert types(model).count(cls) == count
    assert not {"ReLU", "GELU", "Sigmoid", "Tanh"} - {cls} & set(types(model))
    assert count_parameters(model) == count_parameters(base)
    assert f"{act}1" in dict(model.named_modules())


def test_pool_kind() -> None:
    relu_max = build_model({"name": "lenet", "activation": "relu", "pool": "max"}, 1, (28, 28), 10)
    assert types(relu_max).count("MaxPool2d") == 2 and "AvgPool2d" not in types(relu_max)
    assert count_parameters(relu_max) == 61_706
    avg = build_model({"name": "cnn3", "pool": "avg"}, 3, (32, 32), 10)
    assert types(avg).count("AvgPool2d") == 3 and "MaxPool2d" not in types(avg)


def test_dropout_and_dropout2d_layers() -> None:
    assert "Dropout" not in types(build_model({"name": "simple_cnn", "dropout": 0.0}, 1, (28, 28), 10))
    lenet = build_model({"name": "lenet", "dropout": 0.5}, 1, (28, 28), 10)
    assert [n for n, m in lenet.named_children() if isinstance(m, nn.Dropout)] == ["drop3", "drop4"]
    assert count_parameters(lenet) == 61_706
    spatial = build_model({"name": "simple_cnn", "dropout2d": 0.2}, 1, (28, 28), 10)
    assert [n for n, m in spatial.named_children() if isinstance(m, nn.Dropout2d)] == ["drop1", "drop2"]
    assert spatial.drop1.p == 0.2 and spatial.drop3.p == 0.5 and type(spatial.drop3) is nn.Dropout
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    kept = spatial[:3](x) / 0.8  # conv1, relu1, pool1; Dropout2d scales what it keeps by 1 / (1 - p)
    dropped = spatial[:4].train()(x)  # + drop1: each channel of each image is zeroed whole, or kept
    zero = (dropped == 0).flatten(2).all(2)
    assert torch.allclose(dropped[~zero], kept[~zero]) and 0 < zero.float().mean() < 0.5


def test_dense_and_kernel_size() -> None:
    # lenet on 1x28x28: conv1 1*6*25+6 = 156, conv2 6*16*25+16 = 2,416, then 16x5x5 = 400 features
    assert params({"name": "lenet", "dense": []}) == 156 + 2_416 + 400 * 10 + 10 == 6_582
    assert params({"name": "lenet", "dense": [50]}) == 156 + 2_416 + 400 * 50 + 50 + 50 * 10 + 10 == 23_132
    # 5x5 "same" convs in simple_cnn: 1*32*25+32, 32*64*25+64, then 64x7x7 as before
    assert params({"name": "simple_cnn", "kernel_size": 5}) == 832 + 51_264 + 3_136 * 128 + 128 + 1_290 == 454_922
    # lenet with 3x3: conv1 padded (28 -> 14), conv2 not (14 -> 12 -> 6): 16x6x6 = 576 features
    assert params({"name": "lenet", "kernel_size": 3}) == (
        1 * 6 * 9 + 6 + 6 * 16 * 9 + 16 + 576 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10) == 81_194


@pytest.mark.parametrize(("scheme", "std", "bounded"), [
    # conv2 of simple_cnn: fan_in = 32 * 9 = 288, fan_out = 64 * 9 = 576
    ("default", (1 / (3 * 288)) ** 0.5, True),      # torch: kaiming_uniform(a=sqrt(5))
    ("xavier_uniform", (2 / (288 + 576)) ** 0.5, True),
    ("xavier_normal", (2 / (288 + 576)) ** 0.5, False),
    ("kaiming_uniform", (2 / 288) ** 0.5, True),
    ("kaiming_normal", (2 / 288) ** 0.5, False),
])
def test_init_scheme(scheme: str, std: float, bounded: bool) -> None:
    torch.manual_seed(0)
    model = build_model({"name": "simple_cnn", "init": scheme}, 1, (28, 28), 10)
    w = model.conv2.weight.detach()
    assert abs(w.std().item() / std - 1) < 0.05
    # a uniform draw never passes sqrt(3) std; 18,432 normal draws do (P(|z| > sqrt 3) = 8%)
    assert (w.abs().max().item() <= 3 ** 0.5 * std * 1.001) == bounded
    fc = model.fc1.weight.detach()  # Linear layers too: fan_in 3,136, fan_out 128
    if scheme == "kaiming_normal":
        assert abs(fc.std().item() / (2 / 3136) ** 0.5 - 1) < 0.05


def test_lenet_init_default_is_xavier() -> None:
    torch.manual_seed(0)
    w = build_model(LeNetConf(), 1, (28, 28), 10).fc1.weight.detach()  # fan_in 400, fan_out 120
    assert abs(w.std().item() / (2 / 520) ** 0.5 - 1) < 0.05


# --------------------------------------------------------------------------- compute
def test_count_mult_adds_by_hand() -> None:
    # LeNet on 1x28x28: conv 1->6 5x5 at 28x28, conv 6->16 5x5 at 10x10, dense 400->120->84->10
    assert count_mult_adds(build_model(LeNetConf(), 1, (28, 28), 10), (1, 28, 28)) == (
        28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10) == 416_520
    # cnn3 on 3x32x32: convs at 32, 16, 8 pixels; BatchNorm, pooling and activations count nothing
    assert count_mult_adds(build_model(CNN3Conf(), 3, (32, 32), 10), (3, 32, 32)) == (
        32 * 32 * 32 * 3 * 9 + 16 * 16 * 64 * 32 * 9 + 8 * 8 * 128 * 64 * 9 + 2048 * 512 + 512 * 10) == 11_375_616
    # resnet width 4, 2 stages, 1x8x8: stem, two 3x3 convs at 8x8, stride-2 block (3x3 + 3x3 + 1x1) at 4x4
    small = build_model({"name": "resnet", "width": 4, "depth": 1, "stages": 2}, 1, (8, 8), 10)
    assert count_mult_adds(small, (1, 8, 8)) == (
        64 * 4 * 1 * 9 + 2 * 64 * 4 * 4 * 9 + 16 * 8 * 4 * 9 + 16 * 8 * 8 * 9 + 16 * 8 * 4 + 8 * 10)


def test_count_mult_adds_leaves_the_model_and_the_rng_alone() -> None:
    model = build_model(CNN3Conf(), 1, (28, 28), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    count_mult_adds(model, (1, 28, 28))
    drawn = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(3))  # no random number drawn: the trainer's seeding holds
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm's running statistics untouched


# --------------------------------------------------------------------------- resnet
def test_resnet_parameter_counts() -> None:
    # width 4, one block per stage, 2 stages, 1x28x28, 10 classes; BN: 2 per channel; convs before a
    # norm have no bias
    stem = 1 * 4 * 9 + 2 * 4
    stage1 = 2 * (4 * 4 * 9 + 2 * 4)                                       # identity shortcut
    stage2 = (4 * 8 * 9 + 2 * 8) + (8 * 8 * 9 + 2 * 8) + (4 * 8 + 2 * 8)   # stride 2 + 1x1 projection
    head = 8 * 10 + 10
    small = {"name": "resnet", "width": 4, "depth": 1, "stages": 2}
    assert params(small) == stem + stage1 + stage2 + head == 1_382
    # norm none: no norm parameters, but each conv has a bias
    assert params({**small, "norm": "none"}) == (
        (36 + 4) + 2 * (144 + 4) + (288 + 8) + (576 + 8) + (32 + 8) + head) == 1_346
    # depth 2 adds one identity block per stage
    assert params({**small, "depth": 2}) == 1_382 + (4 * 4 * 9 + 8) * 2 + (8 * 8 * 9 + 16) * 2 == 2_870
    # residual false: the same blocks without shortcuts, so only the projection (1x1 conv + BN) goes
    assert params({**small, "residual": False}) == 1_382 - (4 * 8 + 2 * 8) == 1_334
    assert params({**small, "depth": 2, "residual": False}) == 2_870 - (4 * 8 + 2 * 8) == 2_822


def test_resnet_default_size() -> None:
    """Widths 64/128/256, two blocks each, on Fashion-MNIST (1x28x28, 10 classes)."""
    def conv_bn(c_in: int, c_out: int, k: int = 3) -> int:
        return c_in * c_out * k * k + 2 * c_out

    expected = (conv_bn(1, 64)
                + 4 * conv_bn(64, 64)
                + conv_bn(64, 128) + conv_bn(128, 128) + conv_bn(64, 128, 1) + 2 * conv_bn(128, 128)
                + conv_bn(128, 256) + conv_bn(256, 256) + conv_bn(128, 256, 1) + 2 * conv_bn(256, 256)
                + 256 * 10 + 10)
    model = build_model(ResNetConf(), 1, (28, 28), 10)
    assert count_parameters(model) == expected == 2_776_522
    assert last_conv(model) is model.stage3.block2.main.conv2


@pytest.mark.parametrize("shape", [(1, 28), (1, 32), (3, 28), (3, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_resnet_trains(shape) -> None:
    c, size = shape
    torch.manual_seed(0)
    model = build_model(SMALL_RESNET, c, (size, size), 4)
    x, y = torch.randn(16, c, size, size), torch.arange(16) % 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_resnet_skip_connections_exist() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_RESNET, 3, (32, 32), 10).eval()
    with torch.no_grad():
        h = model[:3](torch.randn(4, 3, 32, 32))  # conv1, bn1, relu1
        block = model.stage1.block1
        assert isinstance(block.shortcut, nn.Identity)
        assert torch.allclose(block(h), block.act(block.main(h) + h))
        proj = model.stage2.block1
        y = block(h)
        assert torch.allclose(proj(y), proj.act(proj.main(y) + proj.shortcut(y)))
        # silence the main paths: a block then passes act(shortcut(x)) on
        block.main.bn2.weight.zero_()
        block.main.bn2.bias.zero_()
        assert torch.equal(block(h), torch.relu(h))
    df = ins.layer_table(model, (3, 32, 32))
    rows = {r.layer: (r.type, r.output_shape, r.params) for r in df.itertuples()}
    assert rows["stage2.block1.shortcut.conv"] == ("Conv2d", (16, 16, 16), 8 * 16)  # 1x1, stride 2
    assert rows["stage2.block1.shortcut.bn"] == ("BatchNorm2d", (16, 16, 16), 2 * 16)
    assert rows["stage1.block1.shortcut"] == ("Identity", (8, 32, 32), 0)
    assert rows["stage3.block1.act"][1] == (32, 8, 8) and df.output_shape.iloc[-1] == (10,)


def test_resnet_residual_false_is_the_plain_net() -> None:
    torch.manual_seed(0)
    plain = build_model({**SMALL_RESNET, "residual": False}, 3, (32, 32), 10).eval()
    assert "Residual" not in {type(m).__name__ for m in plain.modules()}
    assert not [n for n, _ in plain.named_modules() if "shortcut" in n]
    with torch.no_grad():
        h = plain[:3](torch.randn(4, 3, 32, 32))
        block = plain.stage2.block1
        assert torch.allclose(block(h), block.act(block.main(h)))  # no shortcut added
        block.main.bn2.weight.zero_()
        block.main.bn2.bias.zero_()
        assert torch.equal(block(h), torch.zeros_like(block(h)))  # main path silenced: nothing passes
    assert last_conv(plain) is plain.stage3.block1.main.conv2


def test_resnet_norm_knobs() -> None:
    none = build_model({**SMALL_RESNET, "norm": "none"}, 1, (28, 28), 10)
    assert not {"BatchNorm2d", "GroupNorm"} & set(types(none))
    assert all(m.bias is not None for m in none.modules() if isinstance(m, nn.Conv2d))
    group = build_model({**SMALL_RESNET, "norm": "group", "norm_groups": 2}, 1, (28, 28), 10)
    assert {m.num_groups for m in group.modules() if isinstance(m, nn.GroupNorm)} == {2}
    assert all(m.bias is None for m in group.modules() if isinstance(m, nn.Conv2d))


# --------------------------------------------------------------------------- every model, every shape
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


@pytest.mark.parametrize("cfg", [
    {"name": "tinynet"}, {"name": "tinynet", "conv_channels": [32, 16]},
    {"name": "tinynet", "conv_channels": [32, 16], "dropout2d": 0.4},
    {"name": "tinynet", "conv_channels": [32, 16], "norm": "batch"},
    {"name": "cnn3", "norm": "layer", "dropout2d": 0.1}, {"name": "lenet", "dropout": 0.2},
    {"name": "resnet", "width": 8, "depth": 2, "stages": 3, "norm": "group", "norm_groups": 4},
], ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_every_leaf_runs_in_registration_order(cfg: dict) -> None:
    """What layer tables and Grad-CAM rely on (the tutorial's NetWidth/NetDropout never called conv2)."""
    model = build_model(cfg, 3, (32, 32), 2)
    leaves = {n: m for n, m in model.named_modules() if not list(m.children())}
    fired: list[str] = []
    for n, m in leaves.items():
        m.register_forward_hook(lambda *_, n=n: fired.append(n))
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    before = model(x)
    assert fired == list(leaves)  # every leaf, once, in registration order
    last = last_conv(model)
    last_run = [n for n in fired if isinstance(leaves[n], nn.Conv2d)][-1]
    assert leaves[last_run] is last and "shortcut" not in last_run
    with torch.no_grad():
        last.weight.zero_()
    assert not torch.allclose(before, model(x))


def test_channels_last_bf16_compile() -> None:
    """What the trainer does on a GPU: channels_last, bf16 autocast, torch.compile without graph breaks."""
    for cfg in [{"name": n} for n in NAMES if n != "resnet"] + [SMALL_RESNET]:
        model = build_model(cfg, 3, (32, 32), 10).to(memory_format=torch.channels_last)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = compiled(torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last))
        out.float().sum().backward()
        assert out.shape == (4, 10) and all(torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------- errors
def test_unknown_model_lists_known() -> None:
    with pytest.raises(ConfigError, match="model.name='vgg'.*cnn3, lenet, resnet, simple_cnn, tinynet"):
        build_model({"name": "vgg"}, 3, (32, 32), 10)


@pytest.mark.parametrize(("cfg", "key"), [
    ({"name": "simple_cnn", "dropout": 1.5}, "model.dropout"),
    ({"name": "cnn3", "dropout": -0.1}, "model.dropout"),
    ({"name": "tinynet", "dropout2d": 1.5}, "model.dropout2d"),
    ({"name": "tinynet", "conv_channels": []}, "model.conv_channels"),
    ({"name": "cnn3", "conv_channels": [32, 0]}, "model.conv_channels"),
    ({"name": "lenet", "dense": [0]}, "model.dense"),
    ({"name": "lenet", "kernel_size": 4}, "model.kernel_size"),
    ({"name": "lenet", "init": "he"}, "model.init"),
    ({"name": "cnn3", "norm": "instance"}, "model.norm"),
    ({"name": "tinynet", "activation": "swish"}, "model.activation"),
    ({"name": "simple_cnn", "pool": "median"}, "model.pool"),
    ({"name": "lenet", "norm": "group"}, "model.norm_groups"),  # 8 does not divide 6
    ({"name": "cnn3", "norm_groups": 0}, "model.norm_groups"),
    ({"name": "resnet", "width": 0}, "model.width"),
    ({"name": "resnet", "depth": 0}, "model.depth"),
    ({"name": "resnet", "stages": -1}, "model.stages"),
    ({"name": "resnet", "width": 12, "norm": "group"}, "model.norm_groups"),
    ({"name": "resnet", "activation": "softmax"}, "model.activation"),
])
def test_bad_knob_names_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + "=") as e:
        build_model(cfg, 3, (32, 32), 10)
    assert "\n" not in str(e.value)


def test_knob_not_on_this_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key 'conv_channels' for ResNetConf"):
        build_model({"name": "resnet", "conv_channels": [8]}, 3, (32, 32), 10)


def test_bad_knob_from_yaml_override() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="model/simple_cnn", overrides=["model.dropout=1.5"]).model
    with pytest.raises(ConfigError, match=r"model\.dropout=1\.5"):
        build_model(cfg, 1, (28, 28), 10)


def test_image_too_small_is_config_error() -> None:
    with pytest.raises(ConfigError, match="cnn3"):
        build_model({"name": "cnn3"}, 3, (4, 4), 10)


@pytest.mark.parametrize(("name", "pool"), [("lenet", nn.AvgPool2d), ("simple_cnn", nn.MaxPool2d)])
def test_the_shape_check_refuses_exactly_the_stacks_torch_cannot_run(name: str, pool: type) -> None:
    """check_input is arithmetic (a dry run builds no model); across depths, kernels and image sizes it passes
    exactly when torch runs the conv/pool stack (lenet pads its first conv only, simple_cnn every conv), and
    its (C, H, W) is the shape torch produces."""
    refused = 0
    for size in (3, 7, 8, 14, 28):
        for depth in range(1, 6):
            for k in (1, 3, 5, 7, 9):
                cfg = MODELS.typed({"name": name, "conv_channels": [2] * depth, "kernel_size": k})
                stack = nn.Sequential(*[m for i, pad in enumerate(cfg.paddings())
                                        for m in (nn.Conv2d(1 if i == 0 else 2, 2, k, padding=pad), pool(2))])
                try:
                    shape = cfg.feature_shape(1, (size, size))
                except ConfigError as e:
                    assert "\n" not in str(e) and str(e).startswith(("model.conv_channels=", "model.kernel_size="))
                    with pytest.raises(RuntimeError):
                        stack(torch.zeros(1, 1, size, size))
                    refused += 1
                    continue
                assert stack(torch.zeros(1, 1, size, size)).shape[1:] == shape, (size, depth, k)
    assert refused > 20


def test_validate_refuses_a_model_the_data_sets_images_shrink_to_nothing() -> None:
    """The launch and the dry run share validate(): this once failed only when the launch built the model."""
    from ablate.compose import validate
    from conftest import make_cfg

    with pytest.raises(ConfigError) as e:
        validate(make_cfg(["model=lenet", "model.conv_channels=[32,64,128,256,512,1024]"]))
    assert str(e.value) == ("model.conv_channels=[32, 64, 128, 256, 512, 1024] is invalid: model=lenet on a 1x28x28 "
                            "input: conv block 3 pools the map to nothing; use at most 2 conv block(s) or a larger image")
    with pytest.raises(ConfigError, match=r"^model\.kernel_size=15 is invalid: .*conv2 \(unpadded\) gets a 14x14 map; "
                                          r"use a kernel_size <= 13 or at most 1 conv block\(s\)$"):
        validate(make_cfg(["model=lenet", "model.kernel_size=15"]))
    with pytest.raises(ConfigError, match=r"model=cnn3 on a 3x32x32 input: conv block 6 pools"):
        validate(make_cfg(["model=cnn3", "dataset=cifar10", "data.download=true", "model.conv_channels=[8,8,8,8,8,8]"]))
    validate(make_cfg(["model=cnn3", "dataset=cifar10", "data.download=true", "model.conv_channels=[8,8,8,8,8]"]))
