"""The registry's sub-commands of the ``morphzoo`` console script.

``list [pattern] [--pretrained]``, ``info NAME``, ``download NAME...|--all``, ``verify [NAME...]``,
``export CKPT OUT_DIR``, ``push FOLDER REPO_ID``, ``zoo build NAME...``, ``zoo table [--check]`` and
``bench [NAME...] [--out DIR]``. Every command takes ``--registry`` (default ``$MORPHZOO_REGISTRY`` or the repository's
``checkpoints.yaml`` shipped with morphzoo); the Hub commands take ``--endpoint`` and ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import yaml

from morphzoo.errors import MorphzooError
from morphzoo.zoo import hub
from morphzoo.zoo.bench import run_bench
from morphzoo.zoo.build import build_entry
from morphzoo.zoo.checkpoint import export_lightning_checkpoint
from morphzoo.zoo.registry import (
    Entry,
    RegistryError,
    entry_folder,
    list_models,
    load_registry,
    registry_path,
    sync_readme,
    verify_entries,
)

COMMANDS = ("list", "info", "download", "verify", "export", "push", "zoo", "bench")


def _common(parser: argparse.ArgumentParser, hub_options: bool = False) -> argparse.ArgumentParser:
    parser.add_argument("--registry", help="checkpoints.yaml to use (default: $MORPHZOO_REGISTRY or the repository's)")
    if hub_options:
        parser.add_argument("--endpoint", help="Hub URL (default: $MORPHZOO_HUB_ENDPOINT, $HF_ENDPOINT, the Hub)")
        parser.add_argument("--cache-dir", help="Hub cache (default: $MORPHZOO_HUB_CACHE, $HF_HUB_CACHE, ~/.cache)")
    return parser


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the registry's sub-commands to the ``morphzoo`` parser."""
    listing = _common(commands.add_parser("list", help="list the zoo's checkpoints"))
    listing.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'spiralnet-*'")
    listing.add_argument("--pretrained", action="store_true", help="only checkpoints with weights")
    _common(commands.add_parser("info", help="a checkpoint's registry entry")).add_argument("name")
    download = _common(commands.add_parser("download", help="fetch and verify checkpoints"), hub_options=True)
    download.add_argument("names", nargs="*")
    download.add_argument("--all", action="store_true", help="every checkpoint with weights")
    verify = _common(commands.add_parser("verify", help="re-hash cached and bundled files; remove bad cached ones"),
                     hub_options=True)
    verify.add_argument("names", nargs="*", help="default: every checkpoint with weights")
    export = _common(commands.add_parser("export", help="a Lightning .ckpt -> a checkpoint folder"))
    export.add_argument("ckpt")
    export.add_argument("out_dir")
    export.add_argument("--name", help="registry name, e.g. spiralnet-anny-face")
    export.add_argument("--fp16", action="store_true", help="store floating weights in float16")
    export.add_argument("--dataset", help="dataset name, e.g. coma")
    export.add_argument("--split", default="interpolation", help="split protocol (default: interpolation)")
    export.add_argument("--recipe", help="the recipe that trained it, e.g. recipes/spiralnet-coma.yaml")
    export.add_argument("--class-path", help="model class when the .ckpt does not record one")
    push = _common(commands.add_parser("push", help="upload a checkpoint folder to the Hub"), hub_options=True)
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    zoo = commands.add_parser("zoo", help="maintain the bundled zoo: build entries, regenerate the README table")
    actions = zoo.add_subparsers(dest="zoo_command", required=True)
    build = _common(actions.add_parser("build", help="train, export (fp16), evaluate and register entries"))
    build.add_argument("names", nargs="+")
    build.add_argument("--samples", type=int, default=1000, help="samples for specificity/diversity (default 1000)")
    build.add_argument("--pairs", type=int, default=10_000, help="pairs for diversity (default 10000)")
    build.add_argument("--override", action="append", default=[],
                       help="extra `morphzoo fit` argument, recorded in provenance (repeatable)")
    build.add_argument("--from-checkpoint", help="register this already trained Lightning .ckpt (one NAME) instead "
                       "of training: e.g. a second training stage")
    table = _common(actions.add_parser("table", help="regenerate the README's zoo table"))
    table.add_argument("--check", action="store_true", help="exit 1 if the table is stale, change nothing")
    table.add_argument("--readme", help="default: README.md beside the registry")
    bench = _common(commands.add_parser("bench", help="evaluate checkpoints and write the leaderboard"),
                    hub_options=True)
    bench.add_argument("names", nargs="*", help="default: every checkpoint with weights")
    bench.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")
    bench.add_argument("--samples", type=int, default=1000)
    bench.add_argument("--pairs", type=int, default=10_000)


def _entry_dict(entry: Entry) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(entry), default=list))


def registry_block(folder: Path, name: str, extra: dict) -> str:
    """The YAML block to paste into checkpoints.yaml for an exported folder."""
    config = json.loads((folder / "config.json").read_text())
    files = {path.name: dataclasses.asdict(hub.describe_file(path)) for path in sorted(folder.iterdir())}
    block = {"name": name, "class_path": config["class_path"], "recipe": extra.get("recipe"),
             "dataset": extra.get("dataset"), "status": "available", "weights": {**extra["where"], "files": files},
             "metrics": config.get("metrics", {}), "num_params": config["num_params"]}
    return yaml.safe_dump([block], sort_keys=False, width=110)


def _export(args: argparse.Namespace) -> None:
    name = args.name or Path(args.out_dir).name
    dataset = {"name": args.dataset, "split": args.split} if args.dataset else None
    extra = {"name": name, "dataset": dataset, "recipe": args.recipe}
    folder = export_lightning_checkpoint(args.ckpt, args.out_dir, fp16=args.fp16, class_path=args.class_path,
                                         extra={k: v for k, v in extra.items() if v is not None})
    out = Path(args.out_dir).resolve()
    bundled = out == (registry_path(args.registry).parent / "zoo" / name).resolve()
    where = {"bundled": f"zoo/{name}"} if bundled else {"repo_id": "<org/name>", "revision": "<commit printed by "
                                                                                           "`morphzoo push`>"}
    print(f"wrote {folder}. Registry block (complete licence, paper, provenance; "
          + ("bundled in this repository" if bundled else f"after `morphzoo push {args.out_dir} ORG/NAME`") + "):\n")
    print(registry_block(folder, name, {**extra, "where": where}))


def run(args: argparse.Namespace) -> None:
    """Run one of :data:`COMMANDS` (already parsed)."""
    try:
        _run(args)
    except (MorphzooError, ValueError, FileExistsError) as error:  # MorphzooError: registry, Hub, cache, recipes
        raise SystemExit(f"morphzoo {args.command}: {error}") from None


def _run(args: argparse.Namespace) -> None:
    if args.command == "list":
        registry = load_registry(args.registry)
        for name in list_models(args.pattern, True if args.pretrained else None, registry.path):
            entry = registry.entries[name]
            print(f"{name:32s} {entry.status:14s} {entry.method:20s} {entry.dataset['name']}")
    elif args.command == "info":
        print(yaml.safe_dump(_entry_dict(load_registry(args.registry).get(args.name)), sort_keys=False, width=110))
    elif args.command == "download":
        registry = load_registry(args.registry)
        if not args.names and not args.all:
            raise RegistryError("name checkpoints to download, or pass --all")
        names = [n for n, e in registry.entries.items() if e.available] if args.all else args.names
        for name in names:
            print(f"{name}: {entry_folder(registry.get(name), registry, args.endpoint, args.cache_dir)} (verified)")
    elif args.command == "verify":
        registry = load_registry(args.registry)
        names = args.names or [n for n, e in registry.entries.items() if e.available]
        problems = verify_entries(registry, names, args.endpoint, args.cache_dir)
        print("\n".join(problems) if problems else f"all present files of {len(names)} checkpoint(s) verified")
        if problems:
            raise SystemExit(1)
    elif args.command == "export":
        _export(args)
    elif args.command == "push":
        commit = hub.push_folder(args.folder, args.repo_id, args.endpoint, args.private)
        name = json.loads((Path(args.folder) / "config.json").read_text()).get("name", Path(args.folder).name)
        print(f"pushed {args.folder} to {args.repo_id} at commit {commit}. Registry block:\n")
        print(registry_block(Path(args.folder), name, {"where": {"repo_id": args.repo_id, "revision": commit}}))
    elif args.command == "zoo" and args.zoo_command == "build":
        if args.from_checkpoint and len(args.names) != 1:
            raise SystemExit("morphzoo zoo build: --from-checkpoint registers one checkpoint: give exactly one NAME")
        for name in args.names:
            fields = build_entry(name, args.registry, args.samples, args.pairs, args.override, args.from_checkpoint)
            print(f"built {name}: test error {fields['metrics']['reconstruction/mean_mm']:.3f} mm, "
                  f"{fields['num_params']:,} parameters, {fields['provenance']['epochs']} epochs; registry updated")
    elif args.command == "zoo" and args.zoo_command == "table":
        registry = load_registry(args.registry)
        readme = Path(args.readme) if args.readme else registry.root / "README.md"
        stale = sync_readme(readme, registry, check=args.check)
        if args.check and stale:
            print(f"{readme}: the zoo table is stale; run `morphzoo zoo table`")
            raise SystemExit(1)
        print(f"{readme}: zoo table " + ("updated" if stale else "up to date"))
    elif args.command == "bench":
        results = run_bench(args.names or None, args.out, args.registry, args.samples, args.pairs, args.endpoint,
                            args.cache_dir)
        print(f"evaluated {len(results['models'])} checkpoint(s); leaderboard in {Path(args.out) / 'leaderboard.md'}")

