"""Where a run's training batches come from: two pipelines, side by side.

Both give ``steps`` batches per epoch of normalised float ``x`` and integer ``y``
on the device, drawn from torch's global RNG (seeding, and a resumed checkpoint,
reproduce them), and say how many images each step holds (``sizes``), so the
trainer counts images exactly. With ``trainer.drop_last`` (default) the ragged
last batch is dropped and every step has one shape; without it the last step
holds the remaining ``N mod batch_size`` images and every image is trained on.
``capturable`` says whether the batch can be gathered inside a captured CUDA
graph (:mod:`ablate.cudagraph`): only when the data already lives on the device.

- :class:`ResidentBatches` (``trainer.pipeline=resident``): the uint8 split stays
  on the device; each epoch draws one permutation there; batches are gathered by
  indexing and augmented batched (:class:`ablate.augment.BatchAugment`).
- :class:`LoaderBatches` (``trainer.pipeline=dataloader``): the classic torchvision
  path, per-sample v2 transforms in DataLoader worker processes
  (:func:`ablate.augment.torchvision_transform`, the same augmentation). Kept for
  comparison and for data too large for the device.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import BatchAugment, torchvision_transform
from .config import AugmentConf, TrainerConf
from .data import TensorData


def step_sizes(n: int, batch_size: int, drop_last: bool, limit: Optional[int]) -> list[int]:
    """Images in each step of an epoch over ``n`` images: full batches, then the ragged rest unless dropped."""
    sizes = [batch_size] * (n // batch_size) + ([] if drop_last or n % batch_size == 0 else [n % batch_size])
    return sizes[:limit] if limit is not None else sizes


class ResidentBatches:
    """Training batches gathered from a uint8 copy of the split held on the device."""

    capturable = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: BatchAugment,
                 device: torch.device, limit: Optional[int] = None, drop_last: bool = True) -> None:
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = min(batch_size, len(x))
        self.augment = augment
        self.sizes = step_sizes(len(x), self.batch_size, drop_last, limit)
        self.steps = len(self.sizes)

    def indices(self) -> Iterator[torch.Tensor]:
        """Each step's batch indices: slices of one on-device permutation per epoch."""
        perm = torch.randperm(len(self.x), device=self.x.device)
        for i in range(self.steps):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size]  # the last may be ragged

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(self.x[idx]), self.y[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return map(self.gather, self.indices())


class TransformDataset(Dataset):
    """uint8 ``[N, C, H, W]`` images + labels, transformed one sample at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Any) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


class LoaderBatches:
    """Training batches from a torch DataLoader, moved to ``device`` as they are consumed.

    Determinism: the shuffle generator is re-seeded from torch's global RNG at the
    start of every epoch (so a seeded run, and a resumed one, draws the same order);
    worker processes are seeded from it the way torch does, and are not persistent,
    so an epoch's augmentation draws depend only on that seed."""

    capturable = False  # batches come from the host

    def __init__(self, data: TensorData, t: TrainerConf, aug_cfg: AugmentConf, device: torch.device) -> None:
        self.device = torch.device(device)
        self.batch_size = min(t.batch_size, len(data.train_x))
        self.generator = torch.Generator()
        transform = torchvision_transform(aug_cfg, data.mean, data.std, train=True, size=data.image_size)
        workers = int(t.num_workers)
        # Fork explicitly: a joblib (loky) job process changes multiprocessing's default context to
        # one whose processes DataLoader cannot start. Workers only touch host tensors, never CUDA.
        context = multiprocessing.get_context("fork") if workers and sys.platform == "linux" else None
        self.loader = DataLoader(
            TransformDataset(data.train_x, data.train_y, transform), batch_size=self.batch_size, shuffle=True,
            drop_last=t.drop_last, num_workers=workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # fresh worker seeds each epoch: resumable
            generator=self.generator, multiprocessing_context=context)
        self.sizes = step_sizes(len(data.train_x), self.batch_size, t.drop_last, t.limit_batches)
        self.steps = len(self.sizes)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.generator.manual_seed(int(torch.randint(0, 2**62, ()).item()))  # from the checkpointed global RNG
        for i, (x, y) in enumerate(self.loader):
            if i >= self.steps:
                break
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def make_batches(data: TensorData, t: TrainerConf, aug_cfg: AugmentConf,
                 device: torch.device) -> ResidentBatches | LoaderBatches:
    """The configured pipeline (``trainer.pipeline``) over the training split."""
    if t.pipeline == "resident":
        aug = BatchAugment(aug_cfg, data.mean, data.std)
        return ResidentBatches(data.train_x, data.train_y, t.batch_size, aug, device, t.limit_batches, t.drop_last)
    return LoaderBatches(data, t, aug_cfg, device)
