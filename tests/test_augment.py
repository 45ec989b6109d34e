"""BatchAugment draws per-image parameters and matches torchvision's semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2

from ablate.augment import AugmentConf, BatchAugment, normalize, torchvision_transform
from ablate.config import ConfigError, typed

CONF = Path(__file__).resolve().parents[1] / "conf" / "augment"
ID = ([0.0], [1.0])  # mean/std that make the output x/255, so pixels can be read back
ID3 = ([0.0] * 3, [1.0] * 3)


def conf(**kw: object) -> AugmentConf:
    return AugmentConf(name="test", **kw)  # type: ignore[arg-type]


def yaml_conf(name: str) -> AugmentConf:
    node = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    node.pop("defaults")
    return typed(node, AugmentConf)


def images(b: int, c: int = 1, h: int = 8, w: int = 8, lo: int = 1, hi: int = 256, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (b, c, h, w), dtype=torch.uint8, generator=g)


def to_uint8(out: torch.Tensor) -> torch.Tensor:
    """Invert the ID normalisation."""
    return (out * 255).round().to(torch.uint8)


def windows(x: torch.Tensor, out: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which (top, left) windows of the zero-padded input, plain or flipped, each output is: [B, 2p+1, 2p+1]."""
    h, w = x.shape[-2:]
    win = torch.nn.functional.pad(x, (p, p, p, p)).unfold(2, h, 1).unfold(3, w, 1)  # B C n n H W
    plain = (win == out[:, :, None, None]).all(dim=(1, 4, 5))
    flipped = (win == out.flip(-1)[:, :, None, None]).all(dim=(1, 4, 5))
    return plain, flipped


def offsets_and_flips(x: torch.Tensor, out: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    plain, flipped = windows(x, out, p)
    hit = plain | flipped
    assert (hit.flatten(1).sum(1) == 1).all(), "every output must be exactly one shifted window"
    n = 2 * p + 1
    pos = hit.flatten(1).float().argmax(1)
    return pos // n, pos % n, flipped.flatten(1).any(1)


def test_normalize_values() -> None:
    x = images(4, c=3)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want)


def test_none_is_normalize_exactly() -> None:
    cfg = yaml_conf("none")
    x = images(16, c=3, lo=0)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    assert torch.equal(BatchAugment(cfg, mean, std)(x), normalize(x, mean, std))
    torch.testing.assert_close(torchvision_transform(cfg, mean, std)(x[0]), normalize(x[:1], mean, std)[0])


@pytest.mark.parametrize("name", ["none", "flip_crop", "strong", "tutorial"])
def test_yaml_options_type_check(name: str) -> None:
    cfg = yaml_conf(name)
    assert cfg.name == name
    out = BatchAugment(cfg, *ID3)(images(4, c=3, h=12, w=10))
    assert out.shape == (4, 3, 12, 10) and out.dtype == torch.float32


def test_hflip_always() -> None:
    x = images(32)
    out = to_uint8(BatchAugment(conf(hflip=1.0), *ID)(x))
    assert torch.equal(out, x.flip(-1))


def test_hflip_is_per_sample() -> None:
    x = images(256)
    out = to_uint8(BatchAugment(conf(hflip=0.5), *ID)(x))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) | flipped).all()
    assert 0.35 < flipped.float().mean() < 0.65


def test_crop_is_exact_shift_per_sample() -> None:
    p = 2
    x = images(256)
    out = to_uint8(BatchAugment(conf(crop_padding=p), *ID)(x))
    top, left, flipped = offsets_and_flips(x, out, p)
    assert not flipped.any()
    assert set(top.tolist()) == set(range(2 * p + 1)) == set(left.tolist())
    assert len(set(zip(top.tolist(), left.tolist()))) > 15


def test_crop_then_flip_non_square() -> None:
    p = 3
    x = images(128, c=3, h=6, w=9)
    out = to_uint8(BatchAugment(conf(crop_padding=p, hflip=0.5), *ID3)(x))
    _, _, flipped = offsets_and_flips(x, out, p)
    assert 0.3 < flipped.float().mean() < 0.7


def _draws(seed: int, n: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(n)


def test_rotation_per_sample_matches_torchvision() -> None:
    # Rotation alone draws one uniform per image first; replay them to get the angles.
    x = images(6, c=3, h=10, w=14)
    torch.manual_seed(3)
    out = BatchAugment(conf(rotation=30.0), *ID3)(x)
    angles = (_draws(3, 6) * 2 - 1) * 30.0
    assert angles.std() > 5
    for i, a in enumerate(angles.tolist()):
        want = v2.functional.rotate(x[i], a).float() / 255  # NEAREST, zero fill, like RandomRotation
        assert (out[i] - want).abs().max() < 1e-6


def test_rotation_zero_is_identity() -> None:
    x = images(8, c=3)
    assert torch.equal(BatchAugment(conf(rotation=0.0), *ID3)(x), normalize(x, *ID3))
    # an all-tiny angle range still samples exactly the pixel centres
    assert torch.equal(to_uint8(BatchAugment(conf(rotation=1e-4), *ID3)(x)), x)


def test_erasing_boxes() -> None:
    h = w = 32
    lo, hi = 0.02, 0.33
    x = images(128, c=3, h=h, w=w)
    out = BatchAugment(conf(erasing=1.0, erasing_scale=[lo, hi]), *ID3)(x)
    zero = (out == 0).all(dim=1)  # B H W; inputs are never 0
    assert zero.flatten(1).any(1).float().mean() > 0.95
    boxes = set()
    for z in zero:
        if not z.any():
            continue
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        t, b, l, r = rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()
        bh, bw = b - t + 1, r - l + 1
        assert z[t:b + 1, l:r + 1].all() and z.sum() == bh * bw  # a filled rectangle
        assert bh < h and bw < w
        # h, w are rounded from sqrt(area*ratio), sqrt(area/ratio) with area in [lo, hi]*H*W
        assert (bh - 0.5) * (bw - 0.5) <= hi * h * w and (bh + 0.5) * (bw + 0.5) >= lo * h * w
        boxes.add((t, l, bh, bw))
    assert len(boxes) > 50


def test_erasing_probability() -> None:
    x = images(512, c=1, h=16, w=16)
    out = BatchAugment(conf(erasing=0.5), *ID)(x)
    assert 0.4 < (out == 0).flatten(1).any(1).float().mean() < 0.6


def test_brightness_factor_per_sample() -> None:
    b = 0.4
    x = images(256, lo=40, hi=120)  # no clipping at 1 + b
    out = BatchAugment(conf(brightness=b), *ID)(x)
    ratio = out.flatten(1) / (x.float().flatten(1) / 255)
    f = ratio.mean(1)
    torch.testing.assert_close(ratio, f[:, None].expand_as(ratio))  # one factor per image
    assert f.min() >= 1 - b - 1e-5 and f.max() <= 1 + b + 1e-5
    assert f.min() < 0.7 and f.max() > 1.3


def test_contrast_factor_per_sample() -> None:
    c = 0.4
    x = images(256, lo=80, hi=170)
    out = BatchAugment(conf(contrast=c), *ID)(x)
    xf = x.float().flatten(1) / 255
    f = out.flatten(1).std(1) / xf.std(1)
    torch.testing.assert_close(out.flatten(1).mean(1), xf.mean(1))  # blended with the image mean
    assert f.min() >= 1 - c - 1e-4 and f.max() <= 1 + c + 1e-4
    assert f.min() < 0.7 and f.max() > 1.3


@pytest.mark.parametrize("op", ["saturation", "hue"])
def test_colour_ops_match_torchvision(op: str) -> None:
    amount = 0.5 if op == "hue" else 0.8
    x = images(8, c=3, h=6, w=6, lo=0)
    torch.manual_seed(5)
    out = BatchAugment(conf(**{op: amount}), *ID3)(x)
    u = _draws(5, 8)
    factors = (u * 2 - 1) * amount if op == "hue" else u * 2 * amount + (1 - amount)
    fn = v2.functional.adjust_hue if op == "hue" else v2.functional.adjust_saturation
    for i, f in enumerate(factors.tolist()):
        torch.testing.assert_close(out[i], fn(x[i].float() / 255, f), atol=1e-5, rtol=0)


def test_saturation_and_hue_skip_grayscale() -> None:
    x = images(8)
    assert torch.equal(BatchAugment(conf(saturation=0.5, hue=0.3), *ID)(x), normalize(x, *ID))


def test_reproducible_under_seed() -> None:
    aug = BatchAugment(yaml_conf("tutorial"), [0.5] * 3, [0.25] * 3)
    x = images(32, c=3, h=16, w=16, lo=0)
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    torch.manual_seed(1)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_float32_under_autocast() -> None:
    aug = BatchAugment(yaml_conf("tutorial"), [0.5] * 3, [0.25] * 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert aug(images(4, c=3)).dtype == torch.float32


@pytest.mark.parametrize("channels", [1, 3])
def test_no_data_dependence(channels: int) -> None:
    # Meta tensors carry no values: .item(), nonzero, masked shapes or branching on a
    # tensor raise here. This stands in for the CUDA-graph/no-host-sync check on CPU.
    cfg = conf(crop_padding=4, hflip=0.5, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1,
               rotation=15.0, erasing=0.5)
    aug = BatchAugment(cfg, [0.5] * channels, [0.25] * channels)
    out = aug(torch.empty(16, channels, 32, 32, dtype=torch.uint8, device="meta"))
    assert out.shape == (16, channels, 32, 32) and out.dtype == torch.float32 and out.is_meta


def test_agrees_with_torchvision_flip_crop() -> None:
    cfg = yaml_conf("flip_crop")
    p, n = cfg.crop_padding, 512
    x = images(n, h=6, w=6)
    torch.manual_seed(0)
    ours = offsets_and_flips(x, to_uint8(BatchAugment(cfg, *ID)(x)), p)
    tv = torchvision_transform(cfg, *ID, size=x.shape[-2:])
    theirs = offsets_and_flips(x, to_uint8(torch.stack([tv(img) for img in x])), p)
    for (top, left, flip) in (ours, theirs):
        assert 0.42 < flip.float().mean() < 0.58
        for off in (top, left):
            hist = torch.bincount(off, minlength=2 * p + 1).float() / n
            assert (hist - 1 / (2 * p + 1)).abs().max() < 0.07
    for a, b in zip(ours, theirs):
        assert abs(a.float().mean() - b.float().mean()) < 0.3 * max(1.0, float(a.float().std()))


def test_torchvision_transform_ops() -> None:
    tv = torchvision_transform(yaml_conf("tutorial"), [0.5] * 3, [0.25] * 3, size=(32, 32))
    kinds = [type(t).__name__ for t in tv.transforms]
    assert kinds == ["RandomCrop", "RandomHorizontalFlip", "ColorJitter", "RandomRotation",
                     "ToDtype", "Normalize"]
    strong = [type(t).__name__ for t in torchvision_transform(yaml_conf("strong"), *ID3, size=(9, 7)).transforms]
    assert strong[-1] == "RandomErasing"
    x = images(1, c=3, h=9, w=7, lo=0)
    assert torchvision_transform(yaml_conf("strong"), *ID3, size=(9, 7))(x[0]).shape == (3, 9, 7)
    evalt = torchvision_transform(yaml_conf("strong"), [0.5] * 3, [0.25] * 3, train=False)
    torch.testing.assert_close(evalt(x[0]), normalize(x, [0.5] * 3, [0.25] * 3)[0])


@pytest.mark.parametrize(("key", "value"), [
    ("hflip", 1.5), ("erasing", -0.1), ("hue", 0.6), ("crop_padding", -1), ("brightness", -0.2),
    ("rotation", 270.0), ("erasing_scale", [0.5, 0.1]),
])
def test_bad_config_names_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"augment.{key}"):
        typed({"name": "x", key: value}, AugmentConf)

