"""Recipes: a LightningCLI config plus overrides, turned into (model, datamodule, trainer). The one path that
``morphzoo fit``, the main job, ``morphzoo zoo build`` and ``morphzoo bench`` all take.

A recipe is a LightningCLI YAML config (``recipes/NAME.yaml``); overrides use LightningCLI's own syntax
(``--data.init_args.size=tiny``, ``--trainer.max_epochs=4``, further ``-c overlay.yaml``). :class:`MorphzooCLI` is
LightningCLI in subclass mode (``model`` is any :class:`MorphableModel`, ``data`` any :class:`MeshDataModule`) that
links what the data determines into the model and finds recipes by name (:func:`morphzoo.resources.find_recipe`), so
``-c spiralnet`` works from any working directory and from an installed wheel.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, instantiate_class

from morphzoo.callbacks import AtomicCheckpointIO, ResumeCheckpoint
from morphzoo.data.base import MeshDataModule
from morphzoo.errors import MorphzooError
from morphzoo.methods.base import MorphableModel
from morphzoo.resources import find_recipe

CONFIG_FLAGS = ("-c", "--config")


class _DropTips(logging.Filter):
    """Lightning's advertising tips (``💡 Tip: ... try installing litlogger``) are not something a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_third_party_output() -> None:
    """Silence what a morphzoo user cannot act on: Lightning's tips, and warnings about how Lightning calls its own
    dependencies or how morphzoo drives LightningCLI from Python."""
    lightning_logger = logging.getLogger("lightning.pytorch")
    for target in (lightning_logger, *lightning_logger.handlers):
        if not any(isinstance(f, _DropTips) for f in target.filters):
            target.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message="Starting from v1.9.0, `tensorboardX` has been removed")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")  # Lightning calling torch, a FutureWarning


def resolve_config_paths(args: Sequence[str]) -> list[str]:
    """``args`` with every ``-c`` / ``--config`` value replaced by the recipe file it names (see ``find_recipe``)."""
    resolved, args = [], list(args)
    for i, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if equals and flag in CONFIG_FLAGS:
            resolved.append(f"{flag}={find_recipe(value)}")
        elif i > 0 and args[i - 1] in CONFIG_FLAGS:
            resolved.append(str(find_recipe(arg)))
        else:
            resolved.append(arg)
    return resolved


class MorphzooCLI(LightningCLI):
    """LightningCLI in subclass mode: ``model`` is any :class:`MorphableModel`, ``data`` any :class:`MeshDataModule`.

    The values the data determines (template with its vertex count, and the training split's mean/std) are linked
    from the instantiated DataModule into the model, so recipes never repeat them. ``-c`` takes a recipe file or the
    name of a shipped recipe. Every trainer gets a :class:`~morphzoo.callbacks.ResumeCheckpoint` (the ``resume``
    section) and writes checkpoints atomically; ``--ckpt_path last`` continues the newest run
    (:func:`continue_last_run`).
    """

    def __init__(self, args: Sequence[str], run: bool = True, **kwargs) -> None:
        quiet_third_party_output()
        super().__init__(
            MorphableModel,
            MeshDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=resolve_config_paths(args),
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("template", "mean", "std"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(ResumeCheckpoint, "resume")  # every trainer gets one (``resume:`` in a recipe)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config.get("ckpt_path") == "last":
            continue_last_run(config.trainer)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        if self._get(self.config_init, "trainer", default={}).get("plugins") is None:
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)


def continue_last_run(trainer: Namespace) -> None:
    """Point a file logger without a fixed version (CSV, TensorBoard) at the newest of its runs that saved a
    ``last*.ckpt``, so that ``--ckpt_path last`` finds that checkpoint and the resumed run logs and checkpoints into
    the same folder. Lightning would otherwise open a new version folder and look for ``last`` there, find none and
    start from scratch."""
    logger = trainer.get("logger")
    arguments = logger.get("init_args") if isinstance(logger, Namespace) else None
    if arguments is None or arguments.get("version") is not None or arguments.get("save_dir") is None:
        return
    runs = Path(arguments.save_dir) / str(arguments.get("name") or "lightning_logs")
    resumable = [folder for folder in runs.glob("version_*") if any((folder / "checkpoints").glob("last*.ckpt"))]
    if resumable:
        newest = max(resumable, key=lambda folder: max(p.stat().st_mtime for p in
                                                        (folder / "checkpoints").glob("last*.ckpt")))
        arguments.version = newest.name


class _ParsedRecipe(MorphzooCLI):
    """A recipe parsed and validated, nothing instantiated (:func:`parse`)."""

    def instantiate_classes(self) -> None:
        pass


def recipe_arguments(recipes: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> list[str]:
    """LightningCLI arguments for ``recipes`` (a name or file, or several, later ones overlaying) plus overrides."""
    recipes = [recipes] if isinstance(recipes, (str, Path)) else list(recipes)
    return [*(arg for recipe in recipes for arg in ("-c", str(find_recipe(recipe)))), *overrides]


class RecipeError(MorphzooError, ValueError):
    """A recipe file (or an override) is not valid YAML or does not fit the configuration's schema."""


def _cli(cli_class: type[MorphzooCLI], recipes: str | Path | Sequence[str | Path], overrides: Sequence[str],
         extra: Sequence[str] = ()) -> MorphzooCLI:
    """``cli_class`` on the recipes; a parse error raises :class:`RecipeError` (the command line tools exit)."""
    args = [*recipe_arguments(recipes, overrides), *extra]
    try:
        return cli_class(args=args, run=False, parser_kwargs={"exit_on_error": False})
    except (ArgumentError, UnicodeDecodeError) as error:  # a garbled file fails to decode before it is parsed
        files = [arg for previous, arg in zip(args, args[1:], strict=False) if previous == "-c"]
        raise RecipeError(f"{', '.join(files)}{' with ' + ' '.join(overrides) if overrides else ''}: {error}"
                          ) from error


def instantiate(recipes: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> MorphzooCLI:
    """Build a recipe's ``model``, ``datamodule`` and ``trainer`` (attributes of the returned CLI), not run yet."""
    return _cli(MorphzooCLI, recipes, overrides)


def parse(recipes: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> Namespace:
    """The merged, validated config of a recipe plus overrides (``config.trainer.max_epochs``, ...); builds nothing
    and seeds nothing (its ``seed_everything`` reads false)."""
    return _cli(_ParsedRecipe, recipes, overrides, ["--seed_everything=false"]).config


def build_datamodule(recipes: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> MeshDataModule:
    """Only the DataModule of a recipe plus overrides (what evaluating a checkpoint needs)."""
    return instantiate_class((), parse(recipes, overrides).data.as_dict())


def fit_best(cli: MorphzooCLI) -> tuple[str, float]:
    """Train ``cli.model`` on ``cli.datamodule``, then load its best-validation checkpoint back into the model.

    Returns the checkpoint's path and the training wall time in seconds. The recipe's trainer must keep one (a
    ``ModelCheckpoint`` monitoring ``val/error_mm``, and a validation split).
    """
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    best = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    if not best:
        raise ValueError("the run kept no best-validation checkpoint: its trainer needs a ModelCheckpoint monitoring "
                         "val/error_mm (every shipped recipe has one) and a validation split")
    cli.model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    return best, seconds
