"""A ``morphzoo fit`` SIGKILLed mid-epoch and resumed with ``--ckpt_path last`` ends where the uninterrupted run ends.

For each recipe: one uninterrupted run on the tiny data (four batches an epoch) gives the reference; a second run, in
a fresh folder, is killed once its first mid-epoch checkpoint of epoch 1 is on disk (the interval checkpoint written
after a batch that follows the epoch-0 ``last.ckpt``), then resumed; a copy of the killed run's folder without the
interval checkpoint resumes from the epoch-end ``last.ckpt`` instead. Each resumed run must restore the checkpoint
meant (not start over: a fresh run with the same seed would also match), and its final checkpoint must equal the
reference bit for bit: weights and buffers, optimiser and LR-scheduler states, loop progress, the best-checkpoint
choice and the RNG states. One thread per process, as bitwise equality on CPU needs the same summation order.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from morphzoo.callbacks import INTERVAL_CHECKPOINT
from tests.reliability.processes import ROOT

EPOCHS = 3
# SpiralNet++: Adam with a per-epoch LR decay; IB-VAE: random draws in every training step (reparameterisation).
RECIPES = ("spiralnet", "ibvae")


def fit(recipe: str, folder: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "morphzoo", "fit", "-c", recipe, "--data.init_args.size=tiny",
               "--data.init_args.batch_size=8", f"--trainer.max_epochs={EPOCHS}", "--trainer.limit_train_batches=4",
               "--trainer.limit_val_batches=2", "--trainer.logger.init_args.save_dir=runs",
               "--trainer.enable_progress_bar=false", "--resume.every_minutes=0", *extra]
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def checkpoints(folder: Path) -> Path:
    (run,) = (folder / "runs").glob("*/version_*")  # one run folder: the resumed run continues the killed one's
    return run / "checkpoints"


def final_state(folder: Path) -> dict:
    """What must match: the final ``last.ckpt`` without what differs by construction (paths, the RNG-state record
    is compared too)."""
    checkpoint = torch.load(checkpoints(folder) / "last.ckpt", map_location="cpu", weights_only=False)
    best = next(state for key, state in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint"))
    return {"state_dict": checkpoint["state_dict"], "optimizer_states": checkpoint["optimizer_states"],
            "lr_schedulers": checkpoint["lr_schedulers"], "loops": checkpoint["loops"],
            "global_step": checkpoint["global_step"], "best": (Path(best["best_model_path"]).name,
                                                              best["best_model_score"]),
            "rng": checkpoint["callbacks"]["ResumeCheckpoint"]["rng"]}


def equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if hasattr(a, "shape"):  # numpy arrays in the RNG states
        return bool((a == b).all())
    return a == b


def kill_mid_epoch_one(folder: Path, process: subprocess.Popen) -> None:
    """SIGKILL the run once a checkpoint saved after a batch of epoch 1 is on disk."""
    directory, epoch_end = None, None
    while process.poll() is None:
        found = list((folder / "runs").glob("*/version_*/checkpoints"))
        directory = found[0] if found else None
        if directory is not None and epoch_end is None and (directory / "last.ckpt").exists():
            epoch_end = (directory / "last.ckpt").stat().st_mtime_ns
        interval = directory / INTERVAL_CHECKPOINT if directory is not None else None
        if epoch_end is not None and interval.exists() and interval.stat().st_mtime_ns > epoch_end:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before the kill: " + process.communicate()[0]
    process.send_signal(signal.SIGKILL)
    process.communicate()


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_fit_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, recipe):
    finish(fit(recipe, tmp_path / "uninterrupted"))
    reference = final_state(tmp_path / "uninterrupted")

    killed = tmp_path / "killed"
    kill_mid_epoch_one(killed, fit(recipe, killed))
    resumed_from = torch.load(checkpoints(killed) / INTERVAL_CHECKPOINT, map_location="cpu", weights_only=False)
    progress = resumed_from["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    assert resumed_from["epoch"] == 1 and progress >= 1, "the kill did not land after a batch of epoch 1"

    epoch_end = tmp_path / "epoch-end"
    shutil.copytree(killed, epoch_end)
    (checkpoints(epoch_end) / INTERVAL_CHECKPOINT).unlink()

    for folder, checkpoint in ((killed, INTERVAL_CHECKPOINT), (epoch_end, "last.ckpt")):
        output = finish(fit(recipe, folder, "--ckpt_path=last"))
        restored = [line for line in output.splitlines() if "Restored all states from the checkpoint" in line]
        assert restored and restored[0].endswith(f"/{checkpoint}"), output
        resumed = final_state(folder)
        different = [key for key in reference if not equal(reference[key], resumed[key])]
        assert not different, f"resumed from {checkpoint}, the run differs from the uninterrupted one in {different}"
    print(f"{recipe}: killed after batch {progress} of epoch 1; resumed from there and from the end of epoch 0: "
          "final checkpoints bit-identical")


def test_the_training_order_depends_on_seed_and_epoch_only_and_resumes_part_way():
    from morphzoo.data.base import EpochShuffleSampler

    torch.manual_seed(123)  # the global RNG must not matter
    first = list(EpochShuffleSampler(50, seed=7, epoch=2))
    torch.manual_seed(456)
    assert list(EpochShuffleSampler(50, seed=7, epoch=2)) == first and sorted(first) == list(range(50))
    assert list(EpochShuffleSampler(50, seed=7, epoch=3)) != first
    assert list(EpochShuffleSampler(50, seed=8, epoch=2)) != first
    resumed = EpochShuffleSampler(50, seed=7, epoch=2, skip=16)
    assert list(resumed) == first[16:] and len(resumed) == 50  # Lightning counts a resumed epoch's batches itself
    assert list(resumed) == first  # the skip applies to the resumed epoch only


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from morphzoo.callbacks import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def interrupted(source, target):  # the process dies between writing the new file and renaming it into place
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
