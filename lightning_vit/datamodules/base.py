"""DataLoader plumbing shared by every DataModule."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["BaseDataModule", "UnpaddedDistributedSampler"]


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
        if trainer is not None and trainer.world_size > 1 and split in ("val", "test"):
            sampler = UnpaddedDistributedSampler(self.datasets[split], trainer.world_size, trainer.global_rank)
        return DataLoader(
            self.datasets[split],
            batch_size=self.split_batch_size(split),
            shuffle=train,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
