"""DataLoader plumbing shared by every DataModule."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_vit.datamodules._io import DatasetError

__all__ = [
    "BaseDataModule",
    "EpochSampler",
    "ResumableDataLoader",
    "SeededDataset",
    "SkipUnreadable",
    "SkippedSamples",
    "SkippedSamplesReport",
    "UnpaddedDistributedSampler",
]

log = logging.getLogger(__name__)

MAX_SKIPS = 10  # unreadable samples in a row after which skip_bad_samples gives up


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
    on; a restored loader skips those (without reading them) so a resumed run continues with the next batch.

    Each iteration starts in the epoch ``epoch()`` names (the fit loop's), not the one the sampler last had:
    Lightning creates an epoch's iterator before it calls ``set_epoch``, and worker processes start reading as
    soon as the iterator exists. So with workers, a run resumed from an epoch-end checkpoint read its first epoch in
    the order and with the augmentations of epoch 0 (the sampler's initial epoch); without workers the sampler
    started lazily, after ``set_epoch``, and was right.
    """

    def __init__(self, *args, progress: Callable[[], int], epoch: Callable[[], int | None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress
        self._epoch = epoch

    def __iter__(self):
        epoch = self._epoch()
        if epoch is not None:
            self.sampler.set_epoch(epoch)
        return super().__iter__()

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


class SkippedSamples:
    """The samples of a split of ``size`` replaced as unreadable since the last :meth:`pop`, in shared memory.

    Created in the main process before its loader starts, it reaches every DataLoader worker (persistent or not) as
    part of the dataset, so all of them add to the one count the main process reads. A sample
    counts once however often it is read: a loader that is started and dropped (Lightning builds the training
    loader twice, see ``BaseTask.configure_optimizers``) has its workers read the first batches ahead, and those
    are read again. The error messages of the first ``keep`` samples are kept too (each cut to ``width`` bytes).
    """

    def __init__(self, size: int, keep: int = 3, width: int = 512) -> None:
        self.size, self.keep, self.width = size, keep, width
        self._count = mp.Value("q", 0)  # its lock guards the flags and messages too
        self._seen = mp.Array("B", size, lock=False)
        self._messages = mp.Array("c", keep * width, lock=False)

    def add(self, index: int, message: str) -> None:
        with self._count.get_lock():
            if self._seen[index]:
                return
            self._seen[index] = 1
            slot = self._count.value
            if slot < self.keep:
                data = message.encode()[: self.width].ljust(self.width, b"\0")
                self._messages[slot * self.width : (slot + 1) * self.width] = data
            self._count.value = slot + 1

    def pop(self) -> tuple[int, list[str]]:
        """The count and the first messages since the last call; starts counting again from zero."""
        with self._count.get_lock():
            count, data = self._count.value, self._messages[:]
            self._count.value = 0
            ctypes.memset(self._seen, 0, self.size)
        slots = (data[i * self.width : (i + 1) * self.width] for i in range(min(count, self.keep)))
        return count, [slot.rstrip(b"\0").decode(errors="replace") for slot in slots]


class SkipUnreadable(Dataset):
    """``dataset`` with each sample that cannot be read (a :class:`DatasetError`: a corrupt, truncated, empty or
    missing file, a mask that does not fit its image, ...) replaced by the next readable one, wrapping around.

    Every unreadable file is logged; each replaced sample is counted in ``skipped``. Batches keep their size, so
    collate functions are unaffected. Keys are indices or, from :class:`EpochSampler`, ``(index, seed)`` pairs:
    the replacement is read with the replaced sample's seed, so training stays reproducible with any number of
    workers and across a resume.

    Raises:
        DatasetError: with the first error's message, when ``MAX_SKIPS`` samples in a row (or the whole set) are
            unreadable.
    """

    def __init__(self, dataset: Dataset, split: str, skipped: SkippedSamples) -> None:
        self.dataset = dataset
        self.split = split
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, *seed = key if isinstance(key, tuple) else (key,)
        tries = min(MAX_SKIPS, len(self.dataset))
        first = None  # the message only: a kept exception's traceback would hold this frame in a reference cycle
        for step in range(tries):
            i = (index + step) % len(self.dataset)
            try:
                sample = self.dataset[(i, *seed) if seed else i]
            except DatasetError as err:
                log.warning("%s sample %d skipped (data.skip_bad_samples): %s", self.split, i, err)
                first = first or str(err)
                continue
            if first is not None:
                self.skipped.add(index, first)
            return sample
        raise DatasetError(
            f"{first} (data.skip_bad_samples gave up: the {tries} {self.split} samples from index {index} on are all "
            "unreadable)"
        )


class SkippedSamplesReport(L.Callback):
    """Reports what :class:`SkipUnreadable` replaced, at the end of each training epoch and each validation or test
    run: one warning line naming the first files, and the count logged as ``<split>_skipped_samples`` (summed over
    the processes). Nothing is logged when the DataModule's ``skip_bad_samples`` is off."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    @staticmethod
    def _report(trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, BaseDataModule) or split not in datamodule.skipped:
            return
        count, messages = datamodule.skipped[split].pop()
        if count:
            when = "the sanity check" if trainer.sanity_checking else f"{split} epoch {trainer.current_epoch}"
            more = "; ..." if count > len(messages) else ""
            log.warning("skipped %d unreadable sample(s) in %s: %s%s", count, when, "; ".join(messages), more)
        pl_module.log(f"{split}_skipped_samples", float(count), reduce_fx="sum", sync_dist=True)


def _init_worker(worker_id: int, rank: int) -> None:
    """One OpenCV thread per DataLoader worker (the workers already share the cores; OpenCV's own pool on top
    oversubscribes them), and Lightning's per-worker seeding when ``seed_everything(workers=True)`` asked for it
    (Lightning adds it only to loaders without a ``worker_init_fn``).

    A forked worker cannot resize a pool its parent has started (``cv2.setNumThreads`` hangs in
    ``pthread_cond_destroy``), so :meth:`BaseDataModule._loader` sets one thread in the main process before the
    workers start: forked workers inherit it and this call changes nothing; spawned workers need it.
    """
    cv2.setNumThreads(1)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank)


class BaseDataModule(L.LightningDataModule):
    """Loaders over ``self.datasets[split]`` (filled by ``setup``), shuffled and dropping the last batch in training.

    Under several processes, training batches come from Lightning's DistributedSampler and validation / test
    batches from :class:`UnpaddedDistributedSampler`, so metrics over the whole set count every sample once.

    With ``skip_bad_samples``, the training, validation and test sets are wrapped in :class:`SkipUnreadable`, each
    split counting into its ``skipped[split]`` (reported by :class:`SkippedSamplesReport`). Prediction still stops
    at an unreadable file: a replaced sample would write another image's prediction under its own name.

    Subclasses set ``batch_size``, ``num_workers``, ``pin_memory``, ``prefetch_factor`` and ``skip_bad_samples``
    and may override :meth:`split_batch_size` and :meth:`collate_fn`.
    """

    batch_size: int
    num_workers: int
    pin_memory: bool
    prefetch_factor: int | None
    skip_bad_samples: bool
    datasets: dict[str, Dataset]

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, SkippedSamples] = {}

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
            collate_fn=self.collate_fn(),
            generator=torch.Generator().manual_seed(seed),  # worker seeds never draw from the global RNG
        )
        if self.num_workers > 0:
            cv2.setNumThreads(1)  # before the workers fork (see _init_worker); they decode, this process does not
            kwargs.update(
                persistent_workers=True,
                prefetch_factor=self.prefetch_factor,
                worker_init_fn=partial(_init_worker, rank=rank),
            )
        dataset = SeededDataset(self.datasets[split]) if train else self.datasets[split]
        if self.skip_bad_samples and split != "predict":
            if split not in self.skipped or self.skipped[split].size != len(dataset):  # shared by the split's loaders
                self.skipped[split] = SkippedSamples(len(dataset))
            dataset = SkipUnreadable(dataset, split, self.skipped[split])
        if train:
            sampler = EpochSampler(self.datasets[split], world, rank, seed)
            return ResumableDataLoader(
                dataset, sampler=sampler, drop_last=True, progress=self._batches_done, epoch=self._epoch, **kwargs
            )
        if world > 1 and split in ("val", "test"):
            sampler = UnpaddedDistributedSampler(self.datasets[split], world, rank)
        return DataLoader(dataset, sampler=sampler, **kwargs)

    def _epoch(self) -> int | None:
        """The training epoch Lightning's fit loop is in or about to start (what it passes to ``set_epoch``)."""
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer else None

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
