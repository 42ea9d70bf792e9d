"""DataLoader plumbing shared by every DataModule."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["BaseDataModule", "EpochSampler", "ResumableDataLoader", "SeededDataset", "UnpaddedDistributedSampler"]


class EpochSampler(DistributedSampler):
    """Training order and augmentation randomness that depend only on (seed, epoch, sample), never on the process.

    Shuffles like DistributedSampler (one permutation per ``seed + epoch``, each rank its share, the remainder
    dropped) and yields ``(index, sample_seed)`` pairs for :class:`SeededDataset`, with the sample seeds drawn per
    (seed, epoch) and indexed by sample. So a run's batches and augmentations are the same with any number of
    workers, and a run resumed part-way into an epoch (``start``: samples of this rank to skip once) sees exactly
    the batches an uninterrupted run would. Being a DistributedSampler, Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        seeds = np.random.SeedSequence((self.seed, self.epoch)).generate_state(len(self.dataset))
        start, self.start = self.start, 0
        return iter([(i, int(seeds[i])) for i in indices[start:]])


class SeededDataset(Dataset):
    """A training dataset indexed by ``(index, seed)``: its albumentations pipeline draws from that seed.

    albumentations seeds every Compose from OS entropy unless told otherwise (and forked workers then share one
    stream); seeding it per sample makes augmentation reproducible and independent of the worker that runs it.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        self.dataset.transform.set_random_seed(seed)
        return self.dataset[index]


class ResumableDataLoader(DataLoader):
    """A training loader Lightning checkpoints with the run: its state is the epoch and the batches already trained
    on; a restored loader skips those (without reading them) so a resumed run continues with the next batch."""

    def __init__(self, *args, progress: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["batches"] * self.batch_size


class UnpaddedDistributedSampler(DistributedSampler):
    """Every sample exactly once across the processes: rank r takes samples r, r + world, r + 2 world, ...

    PyTorch's DistributedSampler repeats samples to give every rank the same count, which counts them twice in
    validation metrics; here ranks may get one sample more or less, which metrics that sum counts over the whole
    set (torchmetrics) handle exactly. Being a DistributedSampler, Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class BaseDataModule(L.LightningDataModule):
    """Loaders over ``self.datasets[split]`` (filled by ``setup``), shuffled and dropping the last batch in training.

    Under several processes, training batches come from Lightning's DistributedSampler and validation / test
    batches from :class:`UnpaddedDistributedSampler`, so metrics over the whole set count every sample once.

    Subclasses set ``batch_size``, ``num_workers`` and ``pin_memory`` and may override :meth:`split_batch_size`
    and :meth:`collate_fn`.
    """

    batch_size: int
    num_workers: int
    pin_memory: bool
    datasets: dict[str, Dataset]

    def split_batch_size(self, split: str) -> int:
        """Images per batch of ``split`` (``train``, ``val``, ``test`` or ``predict``)."""
        return self.batch_size

    def collate_fn(self) -> Callable | None:
        """How samples become a batch; ``None`` is PyTorch's default collate."""
        return None

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        trainer, sampler = self.trainer, None
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        kwargs = dict(
            batch_size=self.split_batch_size(split),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
            generator=torch.Generator().manual_seed(seed),  # worker seeds never draw from the global RNG
        )
        if train:
            dataset = self.datasets[split]
            sampler = EpochSampler(dataset, world, rank, seed)
            return ResumableDataLoader(
                SeededDataset(dataset), sampler=sampler, drop_last=True, progress=self._batches_done, **kwargs
            )
        if world > 1 and split in ("val", "test"):
            sampler = UnpaddedDistributedSampler(self.datasets[split], world, rank)
        return DataLoader(self.datasets[split], sampler=sampler, **kwargs)

    def _batches_done(self) -> int:
        """Training batches of the current epoch that have been through a training step."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
