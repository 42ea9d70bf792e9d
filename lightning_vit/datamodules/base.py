"""DataLoader plumbing shared by every DataModule."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["BaseDataModule"]


class BaseDataModule(L.LightningDataModule):
    """Loaders over ``self.datasets[split]`` (filled by ``setup``), shuffled and dropping the last batch in training.

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
        return DataLoader(
            self.datasets[split],
            batch_size=self.split_batch_size(split),
            shuffle=train,
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
