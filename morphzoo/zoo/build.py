"""``morphzoo zoo build NAME``: train a bundled registry entry reproducibly and write it back into the zoo.

Steps, all recorded in the entry so anyone can rebuild it:

1. train the entry's ``recipe`` with its ``build.seed`` and ``build.overrides`` (``morphzoo fit`` arguments: data
   preset, epochs), checkpoints selected on the validation split (the recipe's ``ModelCheckpoint``);
2. reload the best-validation checkpoint and fit the Gaussian of its training latents (a GAN keeps its prior), so
   ``sample`` works out of the box (as :meth:`~morphzoo.methods.base.MorphableModel.fit_latent_distribution` describes);
3. export it in float16 and load that export back: the evaluated model is exactly the shipped one (loading
   switches it to its inference form, e.g. Deep3DMM's materialised sampling);
4. evaluate it once on the test split with :func:`morphzoo.zoo.evaluate.evaluate_model`;
5. move the folder into ``zoo/<NAME>/`` atomically (a complete old copy stays until the new one is in place) and write
   sha256, size, metrics, parameter count and provenance (morphzoo version, git commit, seed, epochs, wall time) into
   the entry of ``checkpoints.yaml``, atomically.

A build holds the entry's lock (:func:`morphzoo.cache.entry_lock`): a second build of the same entry waits, and a
build killed at any point leaves the previous folder (or, killed between the two renames of step 5, its ``.old``
copy, which the next build puts back first) and a stale work folder that the next build removes. Killed after step 5
but before the registry write, the folder is new and the entry still describes the old one: loading reports the
sha256 mismatch until the next build finishes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

import morphzoo
from morphzoo.cache import entry_lock, temporary_directory_for
from morphzoo.recipes import fit_best, instantiate, parse
from morphzoo.zoo.checkpoint import count_parameters, load_checkpoint, update_config, write_checkpoint
from morphzoo.zoo.evaluate import evaluate_model
from morphzoo.zoo.hub import describe_file
from morphzoo.zoo.registry import RegistryError, load_registry, update_entry


def git_commit(root: Path) -> str:
    """The checked-out commit of ``root`` (``unknown`` outside a git checkout)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _previous_copy(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _restore_interrupted_swap(final: Path) -> None:
    """A build killed between the two renames of :func:`_replace_directory` left only the old copy: put it back."""
    old = _previous_copy(final)
    if old.exists() and not final.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)


def _replace_directory(new: Path, final: Path) -> None:
    """Put ``new`` at ``final``; an existing ``final`` is swapped out first and removed only after the move."""
    old = _previous_copy(final)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def build_entry(name: str, registry: str | Path | None = None, samples: int = 1000, pairs: int = 10_000,
                extra_overrides: Sequence[str] = (), from_checkpoint: str | Path | None = None) -> dict:
    """Build one bundled entry (see the module docstring); returns the registry fields it wrote.

    ``from_checkpoint`` skips step 1: it registers a Lightning ``.ckpt`` already trained from the entry's recipe and
    overrides (e.g. the second stage of a two-stage method, whose recipe starts from the first stage's checkpoint).
    The provenance names it.
    """
    registry_ = load_registry(registry, check_imports=True)
    entry = registry_.get(name)
    if not entry.build:
        raise RegistryError(f"{entry.name} has no build section (seed, overrides): it is not a bundled checkpoint")
    if entry.weights is not None and entry.weights.repo_id is not None:
        raise RegistryError(f"{entry.name} lives on the Hub: train it with `morphzoo fit`, then `morphzoo export` "
                            "and `morphzoo push`")
    final = registry_.root / "zoo" / entry.name
    with entry_lock(final), temporary_directory_for(final) as work:
        _restore_interrupted_swap(final)
        try:
            seed = entry.build["seed"]
            recipe = registry_.root / entry.recipe
            recipe_epochs = parse(recipe).trainer.max_epochs
            overrides = [*entry.build.get("overrides", []), *extra_overrides]
            cli = instantiate(recipe, [f"--seed_everything={seed}", *overrides,
                                       f"--trainer.default_root_dir={work / 'run'}", "--trainer.logger=false",
                                       "--trainer.enable_progress_bar=false"])
            if from_checkpoint is None:
                best, seconds = fit_best(cli)
                wall_time, source = round(seconds, 1), "a run"
            else:
                best, wall_time = str(from_checkpoint), None
                source = f"{Path(best).name} (registered with --from-checkpoint) of a run"
                cli.datamodule.setup("fit")
            checkpoint = torch.load(best, map_location="cpu", weights_only=True)
            epochs = int(cli.trainer.current_epoch) if from_checkpoint is None else int(checkpoint["epoch"]) + 1
            model = cli.model.cpu()
            model.load_state_dict(checkpoint["state_dict"])
            if not model.samples_from_prior:  # a GAN samples from its own prior
                model.fit_latent_distribution(cli.datamodule.train_dataloader())
            # The shipped folder holds the trained form; the evaluated model is that folder loaded back (inference).
            folder = write_checkpoint(model, work / entry.name, fp16=True,
                                      extra={"name": entry.name, "recipe": entry.recipe, "dataset": entry.dataset})
            shipped = load_checkpoint(folder)
            metrics = {key: round(value, 4) for key, value in
                       evaluate_model(shipped, cli.datamodule, samples=samples, pairs=pairs).items()}
            provenance = {
                "morphzoo_version": morphzoo.__version__, "commit": git_commit(registry_.root), "seed": seed,
                "epochs": epochs, "wall_time_s": wall_time,
                "note": (f"best-validation checkpoint (epoch {checkpoint['epoch']}): {source} with "
                         f"{' '.join(overrides) or 'the recipe as is'}; the recipe's (paper's) schedule is "
                         f"{recipe_epochs} epochs. Metrics: {samples} samples, {pairs} pairs."),
            }
            update_config(folder, {"metrics": metrics, "provenance": provenance})
            files = {path.name: vars(describe_file(path)) for path in sorted(folder.iterdir())}
            _replace_directory(folder, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the run's files; the folder itself was moved
        fields = {"status": "available", "weights": {"bundled": f"zoo/{entry.name}", "files": files},
                  "metrics": metrics, "num_params": count_parameters(shipped), "provenance": provenance}
        update_entry(registry_.path, entry.name, fields)
    return fields
