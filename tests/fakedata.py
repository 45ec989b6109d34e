"""Write small data sets in their real on-disk formats (IDX, CIFAR-10 pickle batches)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
    """``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` (``prefix``: train or t10k)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    blobs = {
        f"{prefix}-images-idx3-ubyte": struct.pack(">HBB3I", 0, 8, 3, *images.shape) + images.tobytes(),
        f"{prefix}-labels-idx1-ubyte": struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.tobytes(),
    }
    for name, blob in blobs.items():
        path = directory / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(blob) if gz else blob)


def _patterned(n: int, classes: int, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise plus a bright bar whose position encodes the class, so a model can learn it."""
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    h = shape[-2]
    for i, c in enumerate(y):
        row = (c * (h - 3)) // max(classes - 1, 1)
        x[i, ..., row:row + 3, :] = 250
    return x, y


def make_mnist_like(root: Path, folder: str = "FashionMNIST", n_train: int = 160, n_test: int = 32,
                    classes: int = 10, seed: int = 0, gz: bool = False) -> Path:
    """``<root>/<folder>/raw/`` with the four IDX files of a tiny 28x28 data set; returns that dir. 160 training
    images leave 144 after a 10% validation split: a preset's batch of 128 fits (drop_last refuses one larger)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = _patterned(n, classes, (28, 28), rng)
        write_idx(raw, prefix, x, y, gz=gz)
    return raw


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the official CIFAR-10 batches: every string a byte string
    (``BINSTRING``; Python 3 would call ``_codecs.encode``), numpy under its 1.x name ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # GLOBAL opcodes are newline-terminated text: the module can be renamed in place.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_cifar10(root: Path, n_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py/`` with 5 data batches, test_batch and batches.meta, pickled the way the
    official files are (Python 2, protocol 2); returns that dir."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        x, y = _patterned(n, 10, (3, 32, 32), rng)
        (base / name).write_bytes(py2_pickle({"batch_label": name, "labels": [int(v) for v in y],
                                              "data": x.reshape(n, -1), "filenames": ["x.png"] * n}))
    (base / "batches.meta").write_bytes(py2_pickle({"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                                                    "dog", "frog", "horse", "ship", "truck"]}))
    return base
