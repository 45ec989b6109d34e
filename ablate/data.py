"""Data sets as uint8 tensors in memory, read from their real on-disk formats.

Every data set here fits in memory, so it is loaded once as ``uint8 [N, C, H, W]``
tensors and batches are drawn by indexing (on the device, see ``train``), never
by per-image PIL work. Files are read by this module with strict checks so that
a missing, truncated or foreign file stops the run with one line naming it;
torchvision is used only to download, and only when ``data.download=true``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .config import DataConf, DatasetConf, require, typed
from .split import check_split, hold_out, stratified_sample

if TYPE_CHECKING:
    import torch

# Debian's package dataset-fashion-mnist installs the four IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # its 60,000 training images by digit
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(RuntimeError):
    """A data set is missing or damaged; the message says which file and what to do."""


@dataclass
class TensorData:
    name: str
    train_x: "torch.Tensor"  # uint8 [N, C, H, W]
    train_y: "torch.Tensor"  # int64 [N]
    test_x: "torch.Tensor"
    test_y: "torch.Tensor"
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_x: Optional["torch.Tensor"] = None  # the held-out part of the training split (dataset.val_size);
    val_y: Optional["torch.Tensor"] = None  # None without one: then nothing but the test split is evaluated
    split_seed: int = 0  # what fixed subsets of the training split are drawn with (dataset.split_seed)

    @property
    def has_val(self) -> bool:
        return self.val_x is not None and len(self.val_x) > 0

    def train_subset(self, n: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """A fixed stratified subset of ``n`` training images (all when ``n`` exceeds them), the same for
        every run of this data set whatever its seed: the clean pass that measures the generalisation gap."""
        idx = stratified_sample(self.train_y.numpy(), min(n, len(self.train_y)), self.split_seed)
        return self.train_x[idx], self.train_y[idx]

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Source:
    """A data set format: the shape and classes it holds, its reader, and where the reader looks; what a
    config is checked against before anything is loaded (:func:`check_dataset`)."""

    shape: tuple[int, int, int]  # channels, height, width of one image
    classes: tuple[str, ...]
    read: Callable[[str, Path, bool], tuple]  # (name, root, download) -> train_x, train_y, test_x, test_y
    find: Callable[[str, Path, bool], Optional[list[Path]]]  # its files; None: to download; DataError: absent
    counts: tuple[int, ...]  # training images of each class, as published: stand in for labels not yet on disk
    labels: Optional[Callable[[list[Path]], np.ndarray]] = None  # the training labels alone, from find's files


SOURCES: dict[str, Source] = {}


def source(name: str, shape: tuple[int, int, int], classes: list[str],
           find: Callable[[str, Path, bool], Optional[list[Path]]], counts: Sequence[int],
           labels: Optional[Callable[[list[Path]], np.ndarray]] = None) -> Callable:
    """Register a reader as ``dataset.source=<name>``: a new data set format is one reader plus one YAML."""
    def deco(read: Callable[[str, Path, bool], tuple]) -> Callable[[str, Path, bool], tuple]:
        SOURCES[name] = Source(shape, tuple(classes), read, find, tuple(counts), labels)
        return read
    return deco


def source_of(cfg: Any) -> Source:
    """The registered source of a dataset config (one-line ConfigError for an unknown one)."""
    name = cfg["source"] if isinstance(cfg, dict) else cfg.source
    require(name in SOURCES, "dataset.source", name, f"must be one of {', '.join(SOURCES)}")
    return SOURCES[name]


def dataset_shape(cfg: Any) -> tuple[int, int, int, int]:
    """(channels, height, width, classes) of a data set config, without reading its files."""
    classes = cfg["classes"] if isinstance(cfg, dict) else cfg.classes
    src = source_of(cfg)
    return (*src.shape, len(classes) if classes else len(src.classes))


# --------------------------------------------------------------------------- readers
def _open(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable ({e}); delete it and fetch the data set again") from None


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """An IDX file (MNIST's format) as a uint8 array, checking magic number and length."""
    buf = _open(path)
    fix = "delete it and fetch the data set again (data.download=true, or apt-get install dataset-fashion-mnist)"
    if len(buf) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(buf)} bytes); {fix}")
    zero, dtype, ndim = struct.unpack(">HBB", buf[:4])
    if zero != 0 or dtype != 0x08 or ndim != expected_dims:
        magic = struct.unpack(">I", buf[:4])[0]
        want = 0x800 + expected_dims
        raise DataError(f"{path}: wrong magic number {magic} (expected {want}: uint8 with {expected_dims} "
                        f"dimensions); not an IDX file of this kind; {fix}")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header; {fix}")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    size = int(np.prod(dims))
    if len(buf) - header != size:
        raise DataError(f"{path}: truncated or padded IDX file: {len(buf) - header} data bytes for dimensions "
                        f"{'x'.join(map(str, dims))} ({size} expected); {fix}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, name: str) -> Optional[Path]:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _check_labels(path: Path, y: np.ndarray, n_classes: int = 10) -> np.ndarray:
    # A stray label would only surface later as an opaque (CUDA) assert in the loss.
    if len(y) and int(y.max()) >= n_classes:
        raise DataError(f"{path}: label {int(y.max())} out of range 0..{n_classes - 1}; the file is damaged or "
                        "foreign; fetch the data set again")
    return y


def _idx_labels(paths: list[Path]) -> np.ndarray:
    """The training labels of :func:`_find_idx`'s files (train images, train labels, test images, test labels)."""
    return _check_labels(paths[1], read_idx(paths[1], 1))


def _idx_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = IDX_FILES[split]
    img_path, lbl_path = _find(directory, img_name), _find(directory, lbl_name)
    x, y = read_idx(img_path, 3), read_idx(lbl_path, 1)
    if len(x) != len(y):
        raise DataError(f"{lbl_path}: {len(y)} labels for {len(x)} images in {img_path}; the files do not belong "
                        "together; fetch the data set again")
    _check_labels(lbl_path, y)
    return x[:, None], y


def _download(name: str, cls: str, root: Path) -> None:
    """torchvision fetches the files (all splits in one call); we read them ourselves."""
    import torchvision

    try:
        getattr(torchvision.datasets, cls)(str(root), train=True, download=True)
    except Exception as e:  # no network, bad checksum, full disk: one line, not a urllib traceback
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{name}: download into {root} failed ({type(e).__name__}: {msg}); "
                        "check the network or put the files there yourself") from None


def _idx_dir_complete(directory: Path) -> bool:
    return all(_find(directory, n) for pair in IDX_FILES.values() for n in pair)


def _idx_dir(name: str, folder: str, root: Path, download: bool, extra: tuple[Path, ...] = ()) -> Optional[Path]:
    """The first directory holding all four IDX files; None when they are to be downloaded."""
    raw = root / folder / "raw"
    places = [raw, *extra]
    for directory in places:
        if _idx_dir_complete(directory):
            return directory
    if download:
        return None
    where = " or ".join(str(p) for p in places)
    how = "run `apt-get install dataset-fashion-mnist`, " if extra else ""
    raise DataError(f"{name}: not found in {where}; {how}put the four IDX files in {raw}, "
                    "or set data.download=true (needs a network)")


def _find_idx(name: str, folder: str, root: Path, download: bool, extra: tuple[Path, ...] = ()) -> Optional[list[Path]]:
    directory = _idx_dir(name, folder, root, download, extra)
    return None if directory is None else [_find(directory, n) for pair in IDX_FILES.values() for n in pair]


def _load_idx(name: str, folder: str, root: Path, download: bool, extra: tuple[Path, ...] = ()) -> tuple:
    directory = _idx_dir(name, folder, root, download, extra)
    if directory is None:
        _download(name, folder, root)
        directory = _idx_dir(name, folder, root, False, extra)
    return (*_idx_split(directory, "train"), *_idx_split(directory, "test"))


_NP_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
# numpy's array reconstruction, named numpy.core in the official batches (Python 2, numpy 1), numpy._core when
# written by numpy 2; nothing else is admitted.
_ARRAY_GLOBALS = {**{(m, "_reconstruct"): _NP_CORE.multiarray._reconstruct
                     for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
                  ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 python batch holds: dicts, lists, bytes and numbers (built without any
    lookup) and numpy arrays. Every other global, the way a crafted pickle runs code, is refused before
    it is even imported."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ARRAY_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR-10 batch holds only arrays and lists")
        return found


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001  (a damaged pickle fails in many ways; each is this one line)
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); delete "
                        "cifar-10-batches-py and fetch it again (data.download=true)") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (a {type(d).__name__}, not a dict); "
                        "fetch cifar-10-batches-py again")
    return d


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a CIFAR-10 batch (missing or malformed data/labels: {e}); "
                        "fetch cifar-10-batches-py again") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(y)} labels for {len(x)} images; fetch cifar-10-batches-py again")
    _check_labels(path, y)
    return x, y


def _find_cifar10(name: str, root: Path, download: bool) -> Optional[list[Path]]:
    base, names = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (base / n).is_file()]
    if missing and download:
        return None
    if missing:
        raise DataError(f"{name}: CIFAR-10 not found in {base} (missing {', '.join(missing)}); put the "
                        "python-version batches there (cifar-10-python.tar.gz, extracted), or set data.download=true")
    return [base / n for n in names]


def _load_cifar10(name: str, root: Path, download: bool) -> tuple:
    paths = _find_cifar10(name, root, download)
    if paths is None:
        _download(name, "CIFAR10", root)
        paths = _find_cifar10(name, root, False)
    train = [_cifar_batch(p) for p in paths[:5]]
    tx, ty = _cifar_batch(paths[5])
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), tx, ty


@source("fashion_mnist", (1, 28, 28), FASHION_CLASSES, counts=[6000] * 10, labels=_idx_labels,
        find=lambda name, root, download: _find_idx(name, "FashionMNIST", root, download, (DEBIAN_FASHION_MNIST,)))
def _read_fashion_mnist(name: str, root: Path, download: bool) -> tuple:
    return _load_idx(name, "FashionMNIST", root, download, (DEBIAN_FASHION_MNIST,))


@source("mnist", (1, 28, 28), MNIST_CLASSES, counts=MNIST_COUNTS, labels=_idx_labels,
        find=lambda name, root, download: _find_idx(name, "MNIST", root, download))
def _read_mnist(name: str, root: Path, download: bool) -> tuple:
    return _load_idx(name, "MNIST", root, download)


# No labels reader: CIFAR-10's labels share each pickled batch with its images, so the counts are the published ones.
@source("cifar10", (3, 32, 32), CIFAR10_CLASSES, counts=[5000] * 10, find=_find_cifar10)
def _read_cifar10(name: str, root: Path, download: bool) -> tuple:
    return _load_cifar10(name, root, download)


# The Fashion-MNIST subset shipped inside the package: no files to fetch, no download.
EMBEDDED = importlib.resources.files("ablate") / "_data" / "fashion_mnist_mini.npz"
_REBUILD = "reinstall ablate, or rebuild it with `python scripts/make_fashion_mnist_mini.py`"


def _find_embedded(name: str, root: Path, download: bool) -> list[Path]:
    if not EMBEDDED.is_file():
        raise DataError(f"embedded: {EMBEDDED} is missing; {_REBUILD}")
    return [Path(str(EMBEDDED))]


def _embedded(*keys: str) -> list[np.ndarray]:
    """Arrays of ``ablate/_data/fashion_mnist_mini.npz`` (each read alone), checked like any data file: a
    damaged archive is one line."""
    try:
        with importlib.resources.as_file(EMBEDDED) as path, np.load(path) as z:
            return [z[k] for k in keys]
    except Exception as e:  # noqa: BLE001  (bit flips surface as BadZipFile, zlib.error, TokenError from the
        # array header, NotImplementedError, ...: whatever the library, the file is damaged)
        raise DataError(f"embedded: {EMBEDDED} missing or damaged ({type(e).__name__}: {str(e)[:120]}); "
                        f"{_REBUILD}") from None


def _embedded_labels(paths: list[Path]) -> np.ndarray:
    (y,) = _embedded("train_y")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"embedded: {EMBEDDED} is damaged (labels of shape {y.shape} {y.dtype}); {_REBUILD}")
    return _check_labels(Path(str(EMBEDDED)), y)


@source("embedded", (1, 28, 28), FASHION_CLASSES, counts=[600] * 10, labels=_embedded_labels, find=_find_embedded)
def _read_embedded(name: str, root: Path, download: bool) -> tuple:
    tx, ty, vx, vy = _embedded("train_x", "train_y", "test_x", "test_y")
    for x, y in ((tx, ty), (vx, vy)):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y) \
                or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"embedded: {EMBEDDED} is damaged (arrays of shape {x.shape} {x.dtype}, {y.shape} "
                            f"{y.dtype}); {_REBUILD}")
        _check_labels(Path(str(EMBEDDED)), y)
    return tx[:, None], ty, vx[:, None], vy


# --------------------------------------------------------------------------- public
def _subset(x: np.ndarray, y: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isin(y, classes)
    remap = np.full(int(max(y.max(), max(classes))) + 1, -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    return x[keep], remap[y[keep]]


def _stats(name: str, classes: Optional[list[int]], x: np.ndarray, root: Path) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the train split in [0, 1] units, cached under ``root``."""
    key = hashlib.sha256(json.dumps([name, classes, list(x.shape)]).encode()).hexdigest()[:12]
    cache = root / ".ablate_cache" / f"{name}-{key}-stats.json"
    try:
        d = json.loads(cache.read_text())
        return d["mean"], d["std"]
    except (OSError, ValueError, KeyError):
        pass
    # A 256-bin histogram per channel: exact float64 moments without a float copy of the images
    # (a float64 copy of CIFAR-10's train split would be 1.2 GB).
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for ch in range(x.shape[1]):
        counts = np.bincount(x[:, ch].ravel(), minlength=256).astype(np.float64)
        m = float(counts @ levels / counts.sum())
        mean.append(m)
        std.append(float(np.sqrt(counts @ (levels - m) ** 2 / counts.sum())))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"mean": mean, "std": std}))
    except OSError:
        pass  # read-only root: compute again next time
    return mean, std


def _check_class_ids(c: DatasetConf, names: Sequence[str]) -> None:
    bad = [k for k in c.classes or [] if not 0 <= k < len(names)]
    require(not bad, "dataset.classes", list(c.classes or []), f"label ids must be in 0..{len(names) - 1}")


def check_dataset(cfg: Any, data: Any) -> int:
    """Class ids fit the source, ``dataset.mean`` has one value per channel, the files are where the reader
    looks and open (or are to be downloaded), and ``dataset.val_size`` leaves every class a training image;
    returns how many images a run trains on. Reads no images (every launch and dry run checks this): the
    class counts come from the labels alone where a source reads them so, else from its published counts
    (CIFAR-10, a data set still to download). Damage inside a file is found when a run loads it."""
    c: DatasetConf = typed(cfg, DatasetConf)
    d: DataConf = typed(data, DataConf)
    src = source_of(c)
    _check_class_ids(c, src.classes)
    channels = src.shape[0]
    require(c.mean is None or len(c.mean) == channels, "dataset.mean", c.mean,
            f"needs one value per channel ({channels})")
    paths = src.find(c.name, Path(d.root).expanduser(), d.download)
    for path in paths or []:
        try:
            open(path, "rb").close()
        except OSError as e:
            raise DataError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    counts = np.bincount(src.labels(paths), minlength=len(src.classes)) if paths and src.labels else np.array(src.counts)
    return check_split(c, counts[list(c.classes)] if c.classes else counts)


def load_dataset(cfg: Any, data: Any) -> TensorData:
    """Load the configured data set into memory as uint8 tensors (one clear DataError if it can't). What
    :func:`check_dataset` checks, a launch has checked before (:func:`ablate.compose.validate`)."""
    c: DatasetConf = typed(cfg, DatasetConf)
    d: DataConf = typed(data, DataConf)
    root = Path(d.root).expanduser()
    src = source_of(c)
    arrays, names = src.read(c.name, root, d.download), list(src.classes)
    tx, ty, vx, vy = arrays
    ty, vy = np.asarray(ty, dtype=np.int64), np.asarray(vy, dtype=np.int64)
    if c.classes is not None:
        _check_class_ids(c, names)
        tx, ty = _subset(tx, ty, list(c.classes))
        vx, vy = _subset(vx, vy, list(c.classes))
        names = [names[k] for k in c.classes]
    if c.mean is None:  # of the whole training split, as published constants are: the same for any val_size
        mean, std = _stats(c.name, c.classes, tx, root)
    else:
        mean, std = list(c.mean), list(c.std)
    tx, ty, hx, hy = hold_out(tx, ty, c)
    import torch

    t = lambda a: torch.from_numpy(np.require(a, requirements=["C", "W"]))  # noqa: E731
    return TensorData(c.name, t(tx), t(ty), t(vx), t(vy), list(names), tuple(map(float, mean)),
                      tuple(map(float, std)), t(hx) if len(hy) else None, t(hy) if len(hy) else None, c.split_seed)
