"""Data sets load from their real on-disk formats; missing or damaged files get one clear line."""

from __future__ import annotations

import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from ablate import data as D
from ablate.config import ConfigError
from ablate.data import DataError, load_dataset, stratified_sample
from fakedata import make_cifar10, make_mnist_like, py2_pickle, write_idx


@pytest.fixture(autouse=True)
def no_debian(monkeypatch, tmp_path):
    """Tests must not see this machine's installed Fashion-MNIST."""
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


def ds(name, source, classes=None, mean=None, std=None, val_size=0.0, split_seed=0):
    """A dataset config; no validation split unless asked, so the readers' tests see whole files."""
    return dict(name=name, source=source, classes=classes, mean=mean, std=std, val_size=val_size,
                split_seed=split_seed)


def mini(tmp_path, **kw):
    return load_dataset(ds("fashion_mnist_mini", "embedded", mean=[0.286], std=[0.353], **kw), dict(root=str(tmp_path)))


def _images(x: torch.Tensor) -> Counter:
    return Counter(bytes(img.numpy()) for img in x)


def test_embedded_subset_is_real_balanced_and_offline(tmp_path):
    d = load_dataset(ds("fashion_mnist_mini", "embedded", mean=[0.286], std=[0.353]), dict(root=str(tmp_path)))
    assert d.train_x.shape == (6000, 1, 28, 28) and d.test_x.shape == (1000, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert torch.bincount(d.train_y).tolist() == [600] * 10 and torch.bincount(d.test_y).tolist() == [100] * 10
    assert d.num_classes == 10 and d.classes[9] == "Ankle boot" and d.image_size == (28, 28)
    # real images: Fashion-MNIST's mean pixel is about 0.286 (synthetic noise would not be)
    assert abs(d.train_x.float().mean().item() / 255 - 0.286) < 0.02


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("source,folder", [("fashion_mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_idx_from_root(tmp_path, source, folder, gz):
    make_mnist_like(tmp_path, folder, n_train=40, n_test=20, gz=gz)
    d = load_dataset(ds(source, source, mean=[0.5], std=[0.5]), dict(root=str(tmp_path)))
    assert d.train_x.shape == (40, 1, 28, 28) and d.test_x.shape == (20, 1, 28, 28)
    assert set(d.train_y.tolist()) == set(range(10))


def test_fashion_mnist_falls_back_to_debian_dir(tmp_path, monkeypatch):
    raw = make_mnist_like(tmp_path / "deb", "x", n_train=20, n_test=10, gz=True)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", raw)
    d = load_dataset(ds("fashion_mnist", "fashion_mnist", mean=[0.5], std=[0.5]), dict(root=str(tmp_path / "r")))
    assert len(d.train_x) == 20


def test_cifar10_and_cifar2_remap(tmp_path):
    make_cifar10(tmp_path, n_per_batch=30, n_test=30)
    full = load_dataset(ds("cifar10", "cifar10", mean=[0.5] * 3, std=[0.2] * 3), dict(root=str(tmp_path)))
    assert full.train_x.shape == (150, 3, 32, 32) and full.num_classes == 10
    two = load_dataset(ds("cifar2", "cifar10", classes=[0, 2]), dict(root=str(tmp_path)))
    keep = (full.train_y == 0) | (full.train_y == 2)
    assert torch.equal(two.train_x, full.train_x[keep])
    assert torch.equal(two.train_y, (full.train_y[keep] == 2).long())  # airplane -> 0, bird -> 1
    assert two.classes == ["airplane", "bird"]


def test_mean_std_computed_and_cached(tmp_path):
    make_cifar10(tmp_path)
    cfg, root = ds("cifar2", "cifar10", classes=[0, 2]), dict(root=str(tmp_path))
    d = load_dataset(cfg, root)
    x = d.train_x.double() / 255
    assert d.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())
    assert d.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist())
    cache = list((tmp_path / ".ablate_cache").glob("cifar2-*-stats.json"))
    assert len(cache) == 1
    cache[0].write_text('{"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}')  # a second load reads the cache
    assert load_dataset(cfg, root).mean == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("source,folder,look", [("fashion_mnist", "FashionMNIST", "dataset-fashion-mnist"),
                                                ("mnist", "MNIST", "data.download=true"),
                                                ("cifar10", None, "data.download=true")])
def test_missing_data_set_says_where_and_how(tmp_path, source, folder, look):
    with pytest.raises(DataError) as e:
        load_dataset(ds(source, source, mean=[0.5], std=[0.5]), dict(root=str(tmp_path)))
    msg = str(e.value)
    assert "\n" not in msg and source in msg and str(tmp_path) in msg and look in msg


def test_truncated_idx_names_the_file(tmp_path):
    raw = make_mnist_like(tmp_path, "MNIST")
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated"):
        load_dataset(ds("mnist", "mnist", mean=[0.5], std=[0.5]), dict(root=str(tmp_path)))


def test_wrong_magic_names_the_file(tmp_path):
    raw = make_mnist_like(tmp_path, "MNIST")
    f = raw / "t10k-labels-idx1-ubyte"
    f.write_bytes(b"\x00\x00\x08\x03" + f.read_bytes()[4:])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: wrong magic number 2051"):
        load_dataset(ds("mnist", "mnist", mean=[0.5], std=[0.5]), dict(root=str(tmp_path)))


def test_bad_pickle_names_the_file(tmp_path):
    base = make_cifar10(tmp_path)
    (base / "data_batch_3").write_bytes(b"\x80\x04 this is not a pickle")
    with pytest.raises(DataError, match=r"data_batch_3: not a readable CIFAR-10 batch"):
        load_dataset(ds("cifar10", "cifar10", mean=[0.5] * 3, std=[0.2] * 3), dict(root=str(tmp_path)))
    with open(base / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 5), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR-10 batch"):
        load_dataset(ds("cifar10", "cifar10", mean=[0.5] * 3, std=[0.2] * 3), dict(root=str(tmp_path)))


def test_downloads_only_when_asked_and_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_mnist(root, train, download):  # stands in for the network: writes the files torchvision would
        calls.append(download)
        make_mnist_like(tmp_path, "MNIST", n_train=20, n_test=10, gz=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    cfg = ds("mnist", "mnist", mean=[0.5], std=[0.5])
    with pytest.raises(DataError, match="data.download=true"):
        load_dataset(cfg, dict(root=str(tmp_path), download=False))
    assert calls == []
    assert len(load_dataset(cfg, dict(root=str(tmp_path), download=True)).train_x) == 20 and calls == [True]

    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as e:
        load_dataset(ds("cifar2", "cifar10", classes=[0, 2]), dict(root=str(tmp_path), download=True))
    assert "\n" not in str(e.value) and "cifar2: download into" in str(e.value)


def test_corrupt_gzip_and_stray_labels_name_the_file(tmp_path):
    raw = make_mnist_like(tmp_path, "MNIST", gz=True)
    cfg, root = ds("mnist", "mnist", mean=[0.5], std=[0.5]), dict(root=str(tmp_path))
    f = raw / "train-labels-idx1-ubyte.gz"
    good = f.read_bytes()
    f.write_bytes(good[:12] + b"\xff" * (len(good) - 12))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: unreadable"):
        load_dataset(cfg, root)
    write_idx(raw, "train", np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 200]), gz=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: label 200 out of range"):
        load_dataset(cfg, root)


# --------------------------------------------------------------------------- unsafe or damaged files
def test_cifar_batches_in_the_official_python2_format_and_numpy2_pickles_load(tmp_path):
    base = make_cifar10(tmp_path, n_per_batch=10, n_test=10)  # Python 2 protocol 2, numpy.core names
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in (base / "data_batch_1").read_bytes()
    official = load_dataset(ds("cifar10", "cifar10", mean=[0.5] * 3, std=[0.2] * 3), dict(root=str(tmp_path)))
    d = pickle.load(open(base / "test_batch", "rb"), encoding="bytes")
    with open(base / "test_batch", "wb") as f:  # as numpy 2 writes it today (numpy._core)
        pickle.dump(d, f)
    again = load_dataset(ds("cifar10", "cifar10", mean=[0.5] * 3, std=[0.2] * 3), dict(root=str(tmp_path)))
    assert torch.equal(official.test_x, again.test_x) and official.test_x.shape == (10, 3, 32, 32)


def test_a_crafted_cifar_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    base = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (base / "data_batch_2").write_bytes(py2_pickle({"data": Payload(), "labels": [0]}))  # the official format
    with pytest.raises(DataError) as e:
        load_dataset(ds("cifar10", "cifar10", mean=[0.5] * 3, std=[0.2] * 3), dict(root=str(tmp_path)))
    assert not marker.exists()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{base / 'data_batch_2'}: not a readable CIFAR-10 batch")
    assert "refused posix.system" in msg


def test_a_damaged_embedded_data_file_is_one_line(tmp_path, monkeypatch):
    """Truncated anywhere, or one bit flipped anywhere: one line naming the file, or (a flip in a field
    nothing reads, such as a timestamp) exactly the original arrays: never a traceback, never other data."""
    cfg, root = ds("fashion_mnist_mini", "embedded", mean=[0.3], std=[0.3]), dict(root=str(tmp_path))
    original = load_dataset(cfg, root)
    good = D.EMBEDDED.read_bytes()
    bad = tmp_path / "fashion_mnist_mini.npz"
    monkeypatch.setattr(D, "EMBEDDED", bad)
    rng = np.random.default_rng(0)
    flipped = []
    for pos in rng.integers(len(good), size=12):
        b = bytearray(good)
        b[pos] ^= 1 << int(rng.integers(8))
        flipped.append(bytes(b))
    refused = 0
    for blob in [good[:n] for n in (0, 100, len(good) // 2, len(good) - 10)] + flipped:
        bad.write_bytes(blob)
        try:
            d = load_dataset(cfg, root)
        except DataError as e:
            assert "\n" not in str(e) and str(bad) in str(e) and "reinstall ablate" in str(e)
            refused += 1
            continue
        assert torch.equal(d.train_x, original.train_x) and torch.equal(d.test_y, original.test_y)
    assert refused >= 12


def test_presence_is_checked_without_reading_the_data(tmp_path):
    from ablate.compose import validate
    from conftest import make_cfg

    raw = make_mnist_like(tmp_path, "MNIST")
    cfg = make_cfg(["dataset=mnist", f"data.root={tmp_path}"])
    (raw / "train-images-idx3-ubyte").write_bytes(b"damage is found when the run loads it")
    validate(cfg)  # present: that is all a launch checks up front
    (raw / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=f"mnist: not found in {tmp_path / 'MNIST' / 'raw'}"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"dataset.classes=\[0, 12\] is invalid"):
        validate(make_cfg(["dataset=cifar2", "dataset.classes=[0,12]", f"data.root={tmp_path}"]))


@pytest.mark.parametrize(("overrides", "error"), [
    (["dataset.val_size=0.999"],  # 6 of the embedded 6,000 images left: classes 0-3 lose their last one
     "dataset.val_size=0.999 is invalid: leaves class(es) [0, 1, 2, 3] with no training image; lower it"),
    (["dataset.mean=[0.5,0.5]", "dataset.std=[0.5,0.5]"],
     "dataset.mean=[0.5, 0.5] is invalid: needs one value per channel (1)"),
    (["dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.5,0.5,0.5]"],
     "dataset.mean=[0.5, 0.5, 0.5] is invalid: needs one value per channel (1)"),
    (["dataset=cifar2", "dataset.mean=[0.5]", "dataset.std=[0.5]", "data.download=true"],
     "dataset.mean=[0.5] is invalid: needs one value per channel (3)"),
    # Files still to download: CIFAR-10's published 5,000 airplanes and 5,000 birds; 1 image of them left.
    (["dataset=cifar2", "dataset.val_size=0.9999", "data.download=true"],
     "dataset.val_size=0.9999 is invalid: leaves class(es) [0] with no training image; lower it"),
])
def test_what_loading_would_refuse_is_refused_before_anything_is_loaded(tmp_path, overrides, error):
    """The launch and the dry run share validate(): these once passed it and failed only once the data was
    loaded, so a dry run listed the job as new."""
    from ablate.compose import validate
    from conftest import make_cfg

    with pytest.raises(ConfigError) as e:
        validate(make_cfg([f"data.root={tmp_path}", *overrides]))
    assert str(e.value) == error


def test_the_split_check_refuses_exactly_the_shares_that_empty_a_class(tmp_path):
    """check_dataset reads the labels alone; across val_size it passes exactly when the split the run draws
    leaves every class a training image, and counts that split's images. Unbalanced classes (1 to 30
    images) and a relabelled subset exercise the quota's remainders and its at-least-once rule."""
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat(np.arange(10), [30, 1, 2, 5, 8, 13, 3, 7, 20, 11]))
    write_idx(tmp_path / "MNIST" / "raw", "train", rng.integers(0, 255, (len(y), 28, 28)), y)
    write_idx(tmp_path / "MNIST" / "raw", "t10k", np.zeros((10, 28, 28)), np.arange(10))
    refused = passed = 0
    for classes in (None, [2, 0, 6]):
        for val_size in np.round(np.arange(0, 1, 0.01), 2):
            c, root = ds("mnist", "mnist", classes, [0.5], [0.5], float(val_size)), dict(root=str(tmp_path))
            try:
                n = D.check_dataset(c, root)
            except ConfigError as e:
                lost = [int(k) for k in str(e).split("[")[1].split("]")[0].split(", ")]
                d = load_dataset(c, root)
                assert not set(lost) & set(d.train_y.tolist()) and set(lost) <= set(d.val_y.tolist())
                refused += 1
                continue
            d = load_dataset(c, root)
            assert n == len(d.train_y) and set(d.train_y.tolist()) == set(range(len(classes or range(10))))
            passed += 1
    assert refused > 50 and passed > 50


# --------------------------------------------------------------------------- the validation split
def test_val_split_is_stratified_and_disjoint_from_training(tmp_path):
    full, d = mini(tmp_path), mini(tmp_path, val_size=0.1)
    assert d.has_val and not full.has_val and full.val_x is None
    assert len(d.val_x) == 600 and len(d.train_x) == 5400
    assert torch.bincount(d.val_y).tolist() == [60] * 10 and torch.bincount(d.train_y).tolist() == [540] * 10
    # The two parts are the original training split, cut in two: no image in both, none lost.
    assert _images(d.train_x) + _images(d.val_x) == _images(full.train_x)
    assert not set(_images(d.val_x)) & set(_images(d.train_x))  # (the embedded images are all distinct)
    pairs = {bytes(x.numpy()): int(y) for x, y in zip(full.train_x, full.train_y)}
    assert all(pairs[bytes(x.numpy())] == int(y) for x, y in zip(d.val_x, d.val_y))  # labels travel with images
    assert torch.equal(d.test_x, full.test_x)  # the test split is never touched


def test_val_split_ignores_the_run_seed_and_follows_its_own(tmp_path):
    def load(seed, **kw):  # a run seeds every global RNG before it loads its data
        torch.manual_seed(seed)
        np.random.seed(seed)
        return mini(tmp_path, val_size=0.1, **kw)

    a, b, c = load(0), load(1), load(1, split_seed=1)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    assert torch.equal(a.train_subset(300)[0], b.train_subset(300)[0])  # the train_eval subset too
    assert not torch.equal(a.val_x, c.val_x) and torch.bincount(c.val_y).tolist() == [60] * 10


def test_val_size_changes_the_split_and_a_larger_one_keeps_the_smaller(tmp_path):
    small, large = mini(tmp_path, val_size=0.1), mini(tmp_path, val_size=0.25)
    assert len(large.val_x) == 1500 and torch.bincount(large.val_y).tolist() == [150] * 10
    assert not _images(small.val_x) - _images(large.val_x)  # nested: raising val_size only adds images
    assert len(mini(tmp_path, val_size=0.0).train_x) == 6000


def test_val_split_of_a_class_subset_uses_the_new_labels(tmp_path):
    make_cifar10(tmp_path, n_per_batch=40, n_test=20)
    two = load_dataset(ds("cifar2", "cifar10", classes=[0, 2], val_size=0.2), dict(root=str(tmp_path)))
    n = len(two.train_y) + len(two.val_y)
    counts = torch.bincount(two.val_y, minlength=2).tolist()
    assert sum(counts) == round(0.2 * n) and min(counts) >= 1 and set(two.val_y.tolist()) <= {0, 1}


def test_stratified_sample_is_proportional_on_unbalanced_labels():
    y = np.repeat(np.arange(4), [700, 200, 95, 5])  # shares 0.70, 0.20, 0.095, 0.005
    for n in (10, 37, 100, 999):
        idx = stratified_sample(y, n, seed=3)
        counts = np.bincount(y[idx], minlength=4)
        assert len(idx) == len(set(idx.tolist())) == n and counts.min() >= 1  # every class present
        share = np.array([700, 200, 95, 5]) / 1000 * n
        assert np.all(np.abs(counts - share) <= 1), (n, counts, share)  # proportional to within one image
    assert np.array_equal(stratified_sample(y, 100, 3), stratified_sample(y, 100, 3))
    assert len(stratified_sample(y, 3, 0)) == 3  # fewer than the classes: as many as asked


@pytest.mark.parametrize("size", [1.0, -0.1])
def test_val_size_out_of_range_names_the_key(tmp_path, size):
    with pytest.raises(ConfigError, match=r"dataset\.val_size"):
        mini(tmp_path, val_size=size)
