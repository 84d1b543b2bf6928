"""``MeshDataModule``: the LightningDataModule every morphzoo dataset derives from.

A dataset subclass only says how to obtain its :class:`~morphzoo.data.collection.MeshCollection`; this base class
applies the split protocol, computes the training split's normalisation, and serves dict batches:

- ``vertices`` (B, V, 3) float32, metres;
- where the dataset has them: ``identity``, ``expression``, ``frame`` (long), ``intensity`` (float), ``neutral``
  (B, V, 3: the subject's neutral mesh) and ``index`` (position in the collection).

``template``, ``mean`` and ``std`` are available right after construction: ``morphzoo fit`` links them into the model,
so recipes never repeat numbers the data knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from morphzoo.data.collection import MeshCollection
from morphzoo.data.splits import split_indices
from morphzoo.mesh.template import Template

# Floor for the per-vertex std (metres) so a vertex that never moves does not blow up the standardised data.
MIN_STD_METRES = 1e-5


class MeshSubset(Dataset):
    """The meshes of a collection at ``indices``. Fetches whole batches at once (``__getitems__``), which keeps reads
    from a memory-mapped array sequential-ish and avoids per-mesh Python overhead."""

    def __init__(self, collection: MeshCollection, indices: np.ndarray,
                 unlabelled: dict[str, np.ndarray] | None = None) -> None:
        self.collection, self.indices = collection, np.asarray(indices)
        self.unlabelled = unlabelled or {}  # label name -> (N,) bool: served as -1 (unlabelled) where True

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.__getitems__([i]).items()}

    def __getitems__(self, positions: Sequence[int]) -> dict[str, Tensor]:
        index = self.indices[np.asarray(positions)]
        order = np.argsort(index)  # read the memory map in ascending order, then restore the sampler's order
        vertices = np.empty((len(index), *self.collection.vertices.shape[1:]), dtype=np.float32)
        vertices[order] = self.collection.vertices[index[order]]
        batch = {"vertices": torch.from_numpy(vertices), "index": torch.from_numpy(index)}
        for name, values in self.collection.labels.items():
            values = values[index]
            if name in self.unlabelled:
                values = np.where(self.unlabelled[name][index], -1, values)
            batch[name] = torch.as_tensor(values)
        if self.collection.neutral is not None and "identity" in self.collection.labels:
            batch["neutral"] = torch.from_numpy(self.collection.neutral[self.collection.labels["identity"][index]])
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``size`` items that depends only on ``(seed, epoch)``, and can start part-way into an epoch.

    This is what lets a run resumed from a mid-epoch checkpoint see the very batches the uninterrupted run saw
    (README, "Reliability"): torch's ``RandomSampler`` draws each epoch's order from the global RNG, whose state a
    resumed process does not share. Lightning calls :meth:`set_epoch` before each epoch; ``skip`` items are left out
    of the first pass only (the batches a resumed epoch had already trained on). ``len`` stays the epoch's full size,
    as Lightning counts the batches of a resumed epoch from where it stopped.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, skip: int = 0) -> None:
        self.size, self.seed, self.epoch, self.skip = size, seed, epoch, skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        skip, self.skip = self.skip, 0
        yield from np.random.default_rng([self.seed, self.epoch]).permutation(self.size)[skip:].tolist()


def _already_batched(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch


class MeshDataModule(L.LightningDataModule):
    """Base DataModule for registered-mesh datasets (see the module docstring).

    Args:
        split: split protocol (see :mod:`morphzoo.data.splits`): ``interpolation``, ``pyg-interpolation``,
            ``extrapolation``, ``sequence``, ``identity``, ``random`` or ``file``.
        held_out_expression: the test expression of the ``extrapolation`` split.
        held_out_sequences: the test sequences of the ``sequence`` split.
        test_identities: the test subjects of the ``identity`` split.
        test_size: the ``random`` split's test meshes: a count (int) or a fraction (float).
        split_seed: the ``random`` split's seed.
        split_file: the ``file`` split's JSON file of mesh names.
        expression_label_fraction: the fraction of training meshes that keep their ``expression`` label; the others
            are served with label -1 (unlabelled), as in datasets whose expression labels are sparse (the decoupled
            GAN's data: 7 %). Within each sequence (identity × expression) the most intense frames keep it where the
            dataset has an ``intensity`` label (the peak frames, as the GAN paper labels BU-4DFE), a random
            (``split_seed``) subset otherwise.
        batch_size: training batch size (evaluation uses the same).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        split: str = "interpolation",
        held_out_expression: str | None = None,
        held_out_sequences: Sequence[str] | None = None,
        test_identities: Sequence[str] | None = None,
        test_size: int | float = 0.1,
        split_seed: int = 0,
        split_file: str | None = None,
        expression_label_fraction: float = 1.0,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= expression_label_fraction <= 1.0:
            raise ValueError(f"expression_label_fraction must lie in [0, 1], got {expression_label_fraction}")
        self.expression_label_fraction = expression_label_fraction
        self.split_arguments = {
            "protocol": split, "held_out_expression": held_out_expression,
            "held_out_sequences": None if held_out_sequences is None else list(held_out_sequences),
            "test_identities": None if test_identities is None else list(test_identities),
            "test_size": test_size, "split_seed": split_seed, "split_file": split_file,
        }
        self.batch_size, self.num_workers = batch_size, num_workers
        # The seed of the training order (EpochShuffleSampler): the global seed (``seed_everything``) when the first
        # loader is made, saved in checkpoints so that a resumed run keeps it even when no seed was set.
        self.shuffle_seed: int | None = None

    def _shuffle_seed(self) -> int:
        if self.shuffle_seed is None:
            self.shuffle_seed = torch.initial_seed()
        return self.shuffle_seed

    def state_dict(self) -> dict:
        return {"shuffle_seed": self._shuffle_seed()}

    def load_state_dict(self, state: dict) -> None:
        self.shuffle_seed = state["shuffle_seed"]

    def load_collection(self) -> MeshCollection:
        """Return the dataset's meshes (implemented by each dataset)."""
        raise NotImplementedError

    @cached_property
    def collection(self) -> MeshCollection:
        return self.load_collection()

    def resolved_split_arguments(self) -> dict:
        """The arguments of :func:`~morphzoo.data.splits.split_indices`; datasets fill in their protocol defaults."""
        return dict(self.split_arguments)

    @cached_property
    def split_indices(self) -> dict[str, np.ndarray]:
        return split_indices(self.collection, **self.resolved_split_arguments())

    @property
    def template(self) -> Template:
        return self.collection.template

    @property
    def vocabularies(self) -> dict[str, tuple[str, ...]]:
        """Names of the integer labels, e.g. ``{"identity": (...), "expression": (...)}``."""
        return self.collection.vocabularies

    @cached_property
    def _statistics(self) -> tuple[Tensor, Tensor]:
        train = self.split_indices["train"]
        # Accumulate in float64 over chunks: exact enough and never loads a large dataset into memory at once.
        total = np.zeros(self.collection.vertices.shape[1:], dtype=np.float64)
        total_sq = np.zeros_like(total)
        for start in range(0, len(train), 1024):
            chunk = self.collection.vertices[np.sort(train[start:start + 1024])].astype(np.float64)
            total += chunk.sum(0)
            total_sq += (chunk**2).sum(0)
        mean = total / len(train)
        std = np.sqrt(np.maximum(total_sq / len(train) - mean**2, 0.0))
        return torch.from_numpy(mean).float(), torch.from_numpy(np.maximum(std, MIN_STD_METRES)).float()

    @property
    def mean(self) -> Tensor:
        """(V, 3) per-vertex mean of the training split, metres."""
        return self._statistics[0]

    @property
    def std(self) -> Tensor:
        """(V, 3) per-vertex standard deviation of the training split, metres (floored at 0.01 mm)."""
        return self._statistics[1]

    def subset(self, name: str) -> MeshSubset:
        """The ``train``, ``val`` or ``test`` meshes (training meshes with the expression labels kept only on
        ``expression_label_fraction`` of them)."""
        unlabelled = {"expression": self._expression_unlabelled} if name == "train" and \
            self.expression_label_fraction < 1 and "expression" in self.collection.labels else None
        return MeshSubset(self.collection, self.split_indices[name], unlabelled)

    def training_labels(self, name: str) -> np.ndarray:
        """The training split's ``name`` labels as training batches serve them (-1: unlabelled)."""
        train = self.split_indices["train"]
        if name not in self.collection.labels:
            return np.full(len(train), -1)
        unlabelled = self.subset("train").unlabelled.get(name)
        labels = self.collection.labels[name][train]
        return labels if unlabelled is None else np.where(unlabelled[train], -1, labels)

    @cached_property
    def _expression_unlabelled(self) -> np.ndarray:
        """(N,) bool: the training meshes whose expression label is dropped (``expression_label_fraction``)."""
        labels, train = self.collection.labels, np.sort(self.split_indices["train"])
        keep = np.zeros(len(self.collection), bool)
        sequence = labels.get("identity", np.zeros(len(self.collection), np.int64)) * (labels["expression"].max()
                                                                                      + 1) + labels["expression"]
        if "intensity" in labels:
            priority = -labels["intensity"][train].astype(np.float64)
        else:
            priority = np.random.default_rng(self.split_arguments["split_seed"]).random(len(train))
        order = np.lexsort((priority, sequence[train]))  # per sequence, most intense (or random) first
        ranked = train[order]
        _, start, counts = np.unique(sequence[ranked], return_index=True, return_counts=True)
        rank = np.arange(len(ranked)) - np.repeat(start, counts)
        kept = rank < np.ceil(self.expression_label_fraction * np.repeat(counts, counts))
        keep[ranked[kept]] = True
        return ~keep

    def _loader(self, name: str, sampler: Sampler[int] | None = None) -> DataLoader:
        # A private generator: each DataLoader iterator draws a seed, which must not come from the global RNG (a run
        # resumed mid-epoch would then draw differently from the one it continues).
        return DataLoader(self.subset(name), batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=_already_batched,
                          persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self._shuffle_seed()))

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches in the order of :class:`EpochShuffleSampler`, starting where the attached trainer's
        restored progress says (a resumed run continues its epoch; a new one starts at epoch 0, batch 0)."""
        epoch, batches_done = self._training_position()
        return self._loader("train", EpochShuffleSampler(len(self.split_indices["train"]), self._shuffle_seed(), epoch,
                                                         batches_done * self.batch_size))

    def _training_position(self) -> tuple[int, int]:
        """(epoch, batches already trained in it) of the attached trainer: after a checkpoint is restored, the
        position the checkpoint was saved at (a checkpoint saved after an epoch's last batch resumes at the next)."""
        if self.trainer is None:
            return 0, 0
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:
            return self.trainer.current_epoch + 1, 0
        return self.trainer.current_epoch, progress.current.processed

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
