"""Build ablate/_data/fashion_mnist_mini.npz: a seeded, stratified subset of Fashion-MNIST.

    apt-get install dataset-fashion-mnist   # or put the four IDX .gz files in a folder
    python scripts/make_fashion_mnist_mini.py [--src /usr/share/datasets/fashion-mnist]

600 training and 100 test images per class (6,000 / 1,000), chosen with a fixed
seed from the official splits, so the file is reproducible byte for byte.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ablate.data import DEBIAN_FASHION_MNIST, _idx_split

OUT = Path(__file__).resolve().parents[1] / "ablate" / "_data" / "fashion_mnist_mini.npz"


def stratified(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=DEBIAN_FASHION_MNIST)
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    tx, ty = _idx_split(a.src, "train")
    vx, vy = _idx_split(a.src, "test")
    ti, vi = stratified(ty, a.train_per_class, rng), stratified(vy, a.test_per_class, rng)
    np.savez_compressed(a.out, train_x=tx[ti, 0], train_y=ty[ti], test_x=vx[vi, 0], test_y=vy[vi])
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB): {len(ti)} train / {len(vi)} test images")


if __name__ == "__main__":
    main()
