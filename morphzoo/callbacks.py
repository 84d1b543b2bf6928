"""Trainer pieces that make ``morphzoo fit ... --ckpt_path last`` continue a killed run exactly where it stopped.

Lightning's checkpoint already holds the weights and buffers, the optimisers, the LR schedulers, the loops' progress
and every callback's state (the ``ModelCheckpoint``'s best-checkpoint record). A run resumed from it still differs
from the uninterrupted one in three ways, each closed here or in the DataModule:

- **the training order**: a ``RandomSampler`` draws each epoch's order from the global RNG. :class:`~morphzoo.data.
  base.MeshDataModule` shuffles with an order that depends only on (seed, epoch), saves its seed in the checkpoint
  and starts a resumed epoch at the batch the checkpoint was saved after;
- **the random draws of training** (IB-VAE's reparameterisation, the GAN's noise, dropout): :class:`ResumeCheckpoint`
  saves the global RNG states with every checkpoint and puts them back when training restarts;
- **how much is lost**: the recipes' ``ModelCheckpoint`` writes ``last.ckpt`` at validation epochs only;
  :class:`ResumeCheckpoint` also writes ``last-interval.ckpt`` every ``every_minutes`` of training, mid-epoch.

:class:`AtomicCheckpointIO` writes every checkpoint under a temporary sibling name and renames it into place, so a
kill during a save never leaves a truncated file for ``--ckpt_path last`` to pick.
"""

from __future__ import annotations

import io
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from morphzoo.cache import atomic_write_bytes

INTERVAL_CHECKPOINT = "last-interval.ckpt"  # "last*": Lightning's ``ckpt_path="last"`` takes the newest of these


def rng_states() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (CPU and every CUDA device), as tensors and plain Python
    values only: Lightning restores checkpoints with ``torch.load(weights_only=True)``."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCheckpoint(L.Callback):
    """Saves the RNG states with every checkpoint and restores them on resume; writes ``last-interval.ckpt`` every
    ``every_minutes`` of training (module docstring).

    ``morphzoo fit`` adds it to every recipe's trainer; set the interval in a recipe (``resume: {every_minutes: 5}``)
    or on the command line (``--resume.every_minutes=5``). The interval checkpoint goes beside the
    ``ModelCheckpoint``'s files (there is none without one) and is written at the end of a training batch but an
    epoch's last (a checkpoint there would resume past the epoch's validation), so it costs one save per interval.

    A checkpoint holds the RNG states of the process that wrote it (rank 0): resumed DDP ranks all restore those, so
    exact resume is promised for single-process runs.

    Args:
        every_minutes: the most training time a kill can lose, in minutes (0: a checkpoint after every batch).
    """

    def __init__(self, every_minutes: float = 10.0) -> None:
        if every_minutes < 0:
            raise ValueError(f"ResumeCheckpoint: every_minutes must be >= 0, got {every_minutes}")
        self.every_minutes = every_minutes
        self._restored_rng: dict[str, Any] | None = None
        self._last_save = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied when training starts: between here and then Lightning still sets up (and draws from the RNG in
        # ways an uninterrupted run does not at this point).
        self._restored_rng = state_dict["rng"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored_rng is not None:
            set_rng_states(self._restored_rng)
            self._restored_rng = None
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or checkpoint.dirpath is None or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # after an epoch's last batch, its validation and epoch-end checkpoint follow
        due = time.monotonic() - self._last_save >= 60 * self.every_minutes
        if trainer.strategy.broadcast(due):  # one decision for every rank: saving is collective
            trainer.save_checkpoint(Path(checkpoint.dirpath) / INTERVAL_CHECKPOINT, weights_only=False)
            self._last_save = time.monotonic()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written through :func:`morphzoo.cache.atomic_write_bytes` (a temporary
    sibling renamed into place). Lightning's own writer stages the file in the system's temporary folder and moves
    it, which is a copy, not a rename, when that folder is on another file system (a tmpfs ``/tmp``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
