"""``trainer.pipeline=dataloader``: the classic torchvision path, per-sample transforms in worker processes.

Kept for comparison with the resident pipeline and for data too large for the
device. The augmentation is :func:`ablate.augment.torchvision_transform`, the
per-sample twin of :class:`ablate.augment.BatchAugment`, so both pipelines
train on the same distribution of images.

Determinism: the shuffle generator is re-seeded from torch's global RNG at the
start of every epoch (so a seeded run, and a resumed one, draws the same
order); worker processes are seeded from it the way torch does, and are not
persistent, so an epoch's augmentation draws depend only on that seed.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import AugmentConf, torchvision_transform
from .data import TensorData


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

    Same contract as :class:`ablate.train.ResidentBatches`: ``steps`` full batches
    per epoch (the ragged last one dropped), each a normalised float ``x`` and ``y``."""

    def __init__(self, data: TensorData, t: Any, aug_cfg: AugmentConf | Any, device: torch.device) -> None:
        self.device = torch.device(device)
        self.batch_size = min(t.batch_size, len(data.train_x))
        self.generator = torch.Generator()
        transform = torchvision_transform(aug_cfg, data.mean, data.std, train=True)
        workers = int(t.num_workers)
        # Fork explicitly: a joblib (loky) job process changes multiprocessing's default context to
        # one whose processes DataLoader cannot start. Workers only touch host tensors, never CUDA.
        context = multiprocessing.get_context("fork") if workers and sys.platform == "linux" else None
        self.loader = DataLoader(
            TransformDataset(data.train_x, data.train_y, transform), batch_size=self.batch_size, shuffle=True,
            drop_last=True, num_workers=workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # fresh worker seeds each epoch: resumable
            generator=self.generator, multiprocessing_context=context)
        self.steps = len(self.loader)
        if t.limit_batches is not None:
            self.steps = min(self.steps, t.limit_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.generator.manual_seed(int(torch.randint(0, 2**62, ()).item()))  # from the checkpointed global RNG
        for i, (x, y) in enumerate(self.loader):
            if i >= self.steps:
                break
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
