"""Command line: ``morphzoo fit|validate|test|predict -c NAME`` (LightningCLI), ``morphzoo main-job``,
``morphzoo export-dataset``, ``morphzoo fit-scan`` (:mod:`.fit_scan`), ``morphzoo view`` (:mod:`.view`),
``morphzoo export-onnx`` (:mod:`.export_onnx`) and the zoo's
``list|info|download|verify|export|push|zoo|bench`` (:mod:`.registry`).

morphzoo also installs a ``lightning`` console script with the same Lightning sub-commands, because the mission promises
``lightning fit -c recipes/NAME.yaml`` and Lightning >= 2.5.1 ships no such command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from morphzoo.cli import export_onnx, fit_scan, main_job, view
from morphzoo.cli import registry as registry_cli
from morphzoo.data.anny import ANNY_DATASETS, load_anny_dataset
from morphzoo.data.export import FORMATS, export_collection
from morphzoo.errors import MorphzooError
from morphzoo.recipes import MorphzooCLI
from morphzoo.resources import ResourceError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def lightning_main(argv: Sequence[str] | None = None) -> None:
    """The ``lightning`` console script: ``lightning fit|validate|test|predict -c recipe.yaml ...``."""
    _lightning(list(sys.argv[1:] if argv is None else argv))


def _lightning(argv: list[str]) -> None:
    try:
        MorphzooCLI(args=argv)
    except ResourceError as error:  # an unknown recipe name: the message suggests the closest ones
        raise SystemExit(f"morphzoo {argv[0]}: {error}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """The ``morphzoo`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        _lightning(argv)
        return
    parser = argparse.ArgumentParser(prog="morphzoo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(
        (*LIGHTNING_SUBCOMMANDS, "main-job", "export-dataset", "fit-scan", "view", "export-onnx",
         *registry_cli.COMMANDS)) + "}")
    for name in LIGHTNING_SUBCOMMANDS:
        commands.add_parser(name, help=f"Lightning {name} from a recipe (morphzoo {name} -c recipes/NAME.yaml)")
    job = commands.add_parser("main-job", help="generate anny-face, train, evaluate and write a report")
    main_job.add_arguments(job)
    export = commands.add_parser("export-dataset", help="write an embedded anny dataset in a real dataset's format")
    _add_export_arguments(export)
    fit_scan.add_arguments(commands.add_parser("fit-scan", help="register a raw scan or point cloud to a model"))
    view.add_arguments(commands.add_parser("view", help="explore a model on a local web page"))
    export_onnx.add_arguments(commands.add_parser("export-onnx", help="export a model's decoder and encoder to ONNX"))
    registry_cli.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "main-job":
        main_job.run_main_job(args)
    elif args.command == "export-dataset":
        _export_dataset(args)
    elif args.command == "fit-scan":
        try:
            fit_scan.run(args)
        except (MorphzooError, ValueError, FileNotFoundError) as error:
            raise SystemExit(f"morphzoo fit-scan: {error}") from None
    elif args.command == "view":
        try:
            view.run(args)
        except (MorphzooError, ValueError, FileNotFoundError, OSError) as error:
            raise SystemExit(f"morphzoo view: {error}") from None
    elif args.command == "export-onnx":
        try:
            export_onnx.run(args)
        except (MorphzooError, ValueError, FileNotFoundError, FileExistsError) as error:
            raise SystemExit(f"morphzoo export-onnx: {error}") from None
    elif args.command in registry_cli.COMMANDS:
        registry_cli.run(args)
    else:
        parser.print_help()


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=list(ANNY_DATASETS), help="the embedded dataset")
    parser.add_argument("format", choices=FORMATS, help="the on-disk format to write")
    parser.add_argument("root", help="a new (or empty) folder to write into")
    parser.add_argument("--size", default="tiny", help="dataset preset: tiny, small or full (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument("--suffix", default=".ply", choices=[".ply", ".obj"], help="mesh file type where it is free")


def _export_dataset(args: argparse.Namespace) -> None:
    collection = load_anny_dataset(args.dataset, args.size, args.seed)
    try:
        root = export_collection(collection, args.format, args.root, args.suffix)
    except (ValueError, FileExistsError) as error:
        raise SystemExit(f"morphzoo export-dataset: {error}") from None
    print(f"wrote {len(collection)} meshes of {args.dataset} ({args.size}) as {args.format} to {root}")
