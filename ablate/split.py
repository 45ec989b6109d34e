"""The validation split: stratified samples of a training split, and the check of ``dataset.val_size``.

How many images of each class a stratified sample takes depends on the class
counts alone, never on the images or the seed, so a config can be checked from
the counts (:func:`check_split`, which a launch and a dry run run before anything
is loaded) and the split drawn later from the labels (:func:`hold_out`) always
agrees with that check. numpy only: no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import require


def quota(counts: np.ndarray, n: int) -> np.ndarray:
    """Images of each class (of ``counts`` images each, every count > 0) in a stratified sample of ``n``:
    in proportion to its count (largest remainder; every class at least once when ``n`` allows)."""
    counts = np.asarray(counts, dtype=np.int64)
    share = n * counts / max(int(counts.sum()), 1)
    take = np.floor(share).astype(np.int64)
    if n >= len(counts):
        take = np.maximum(take, 1)
    short = n - int(take.sum())
    if short > 0:  # largest remainders first (stable: ties go to the lower class id)
        take[np.argsort(take - share, kind="stable")[:short]] += 1
    while take.sum() > n:  # the at-least-once rule overshot: give back from the largest classes
        take[np.argmax(take)] -= 1
    return take


def stratified_sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` items of ``y``: each class's :func:`quota`, drawn from a generator of its own
    ``seed``.

    Each class's sample is the head of one fixed permutation of that class, so a larger ``n`` keeps
    the items of a smaller one. Hand-written: scikit-learn's StratifiedShuffleSplit would be a new
    dependency for ten lines, and it does not keep that nesting."""
    require(0 <= n <= len(y), "sample size", n, f"must be in 0..{len(y)}")
    classes, counts = np.unique(y, return_counts=True)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, quota(counts, n))]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def held_out(images: int, val_size: float) -> int:
    """Images the validation split holds out of a training split of ``images``."""
    return int(round(val_size * images))


def check_split(c: Any, counts: np.ndarray) -> int:
    """The images left to train on once ``c.val_size`` (a :class:`ablate.config.DatasetConf`) is held out of a
    training split of ``counts[k]`` images of class ``k``; refuses a share that would take every image of a class."""
    ids = np.flatnonzero(np.asarray(counts) > 0)
    present = np.asarray(counts, dtype=np.int64)[ids]
    held = quota(present, held_out(int(present.sum()), c.val_size))
    lost = ids[held == present]
    require(not len(lost), "dataset.val_size", c.val_size,
            f"leaves class(es) {lost.tolist()} with no training image; lower it")
    return int(present.sum() - held.sum())


def hold_out(x: np.ndarray, y: np.ndarray, c: Any) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, val_x, val_y): a stratified ``dataset.val_size`` share of the training split held
    out, drawn with ``dataset.split_seed`` (never the run's seed), so every run of a sweep sees the same split.
    :func:`check_split` has refused a share that leaves a class out."""
    held = stratified_sample(y, held_out(len(y), c.val_size), c.split_seed)
    keep = np.ones(len(y), dtype=bool)
    keep[held] = False
    return x[keep], y[keep], x[held], y[held]
