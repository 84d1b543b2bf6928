"""Command line: ``morphzoo fit|validate|test|predict -c recipes/NAME.yaml`` (LightningCLI), ``morphzoo main-job``,
``morphzoo export-dataset`` and the zoo's ``list|info|download|verify|export|push|zoo|bench`` (morphzoo/zoo_cli.py).

morphzoo also installs a ``lightning`` console script with the same Lightning sub-commands, because the mission promises
``lightning fit -c recipes/NAME.yaml`` and Lightning >= 2.5.1 ships no such command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from morphzoo.data.base import MeshDataModule
from morphzoo.methods.base import MorphableModel

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class MorphzooCLI(LightningCLI):
    """LightningCLI in subclass mode: ``model`` is any :class:`MorphableModel`, ``data`` any :class:`MeshDataModule`.

    The values the data determines (template with its vertex count, and the training split's mean/std) are linked
    from the instantiated DataModule into the model, so recipes never repeat them.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs) -> None:
        super().__init__(
            MorphableModel,
            MeshDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("template", "mean", "std"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


def lightning_main(argv: Sequence[str] | None = None) -> None:
    """The ``lightning`` console script: ``lightning fit|validate|test|predict -c recipe.yaml ...``."""
    MorphzooCLI(args=list(sys.argv[1:] if argv is None else argv))


def main(argv: Sequence[str] | None = None) -> None:
    """The ``morphzoo`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        MorphzooCLI(args=argv)
        return
    parser = argparse.ArgumentParser(prog="morphzoo", description=__doc__.splitlines()[0])
    from morphzoo import zoo_cli

    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(
        (*LIGHTNING_SUBCOMMANDS, "main-job", "export-dataset", *zoo_cli.COMMANDS)) + "}")
    for name in LIGHTNING_SUBCOMMANDS:
        commands.add_parser(name, help=f"Lightning {name} from a recipe (morphzoo {name} -c recipes/NAME.yaml)")
    job = commands.add_parser("main-job", help="generate anny-face, train, evaluate and write a report")
    from morphzoo.main_job import add_arguments, run_main_job

    add_arguments(job)
    export = commands.add_parser("export-dataset", help="write an embedded anny dataset in a real dataset's format")
    _add_export_arguments(export)
    zoo_cli.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "main-job":
        run_main_job(args)
    elif args.command == "export-dataset":
        _export_dataset(args)
    elif args.command in zoo_cli.COMMANDS:
        zoo_cli.run(args)
    else:
        parser.print_help()


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from morphzoo.data.anny import ANNY_DATASETS
    from morphzoo.data.export import FORMATS

    parser.add_argument("dataset", choices=list(ANNY_DATASETS), help="the embedded dataset")
    parser.add_argument("format", choices=FORMATS, help="the on-disk format to write")
    parser.add_argument("root", help="a new (or empty) folder to write into")
    parser.add_argument("--size", default="tiny", help="dataset preset: tiny, small or full (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument("--suffix", default=".ply", choices=[".ply", ".obj"], help="mesh file type where it is free")


def _export_dataset(args: argparse.Namespace) -> None:
    from morphzoo.data.anny import load_anny_dataset
    from morphzoo.data.export import export_collection

    collection = load_anny_dataset(args.dataset, args.size, args.seed)
    try:
        root = export_collection(collection, args.format, args.root, args.suffix)
    except (ValueError, FileExistsError) as error:
        raise SystemExit(f"morphzoo export-dataset: {error}") from None
    print(f"wrote {len(collection)} meshes of {args.dataset} ({args.size}) as {args.format} to {root}")
