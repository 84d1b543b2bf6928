"""The checkpoint registry: ``checkpoints.yaml`` as data, its schema check, and ``list_models`` / ``info`` / ``load``.

``checkpoints.yaml`` (repository root; ``$MORPHZOO_REGISTRY`` or a ``registry=`` argument points elsewhere) is the
single source of truth for every named checkpoint: its class, recipe, dataset, where its weights live (a pinned Hub
commit or a ``zoo/<name>/`` folder of this repository, each file with sha256 and size), metrics, parameter count,
licence, paper and provenance. Its header documents the schema; :func:`validate` enforces it and tests run it over
every entry. The shape follows torchvision's ``Weights`` metadata and timm's pretrained configs, plus what both lack:
checksums, pinned revisions and per-entry licences.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from morphzoo.cache import atomic_file
from morphzoo.errors import MorphzooError
from morphzoo.recipes import parse
from morphzoo.resources import REGISTRY_NAME, resource_root
from morphzoo.zoo.checkpoint import CheckpointError, import_model_class, load_checkpoint, read_config
from morphzoo.zoo.hub import (
    COMMIT,
    SHA256,
    ChecksumError,
    FileRecord,
    check_file,
    fetch_unregistered,
    fetch_verified,
    hub_cache_dir,
)

NAME = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)+")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
STATUSES = ("available", "not-built", "not-published")
REQUIRED_FILES = ("model.safetensors", "config.json")
REQUIRED_FIELDS = ("name", "class_path", "recipe", "dataset", "status", "weights", "metrics", "num_params", "licence",
                   "paper", "provenance")
OPTIONAL_FIELDS = ("aliases", "build")
PROVENANCE_FIELDS = ("morphzoo_version", "commit", "seed", "epochs", "wall_time_s", "note")
LICENCE_FIELDS = ("code", "weights", "data")
# libyaml's safe loader when PyYAML was built with it (4x faster on this file), else the pure-Python one
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
TABLE_START, TABLE_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


class RegistryError(MorphzooError, ValueError):
    """``checkpoints.yaml`` breaks the schema, or names an entry that does not exist."""


class NotAvailableError(MorphzooError, RuntimeError):
    """A registry entry whose weights are not published or not built yet."""


@dataclass(frozen=True)
class Weights:
    """Where an entry's files live: ``bundled`` (a folder relative to the registry) or ``repo_id`` + ``revision``."""

    files: dict[str, FileRecord]
    bundled: str | None = None
    repo_id: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class Entry:
    """One checkpoint of the zoo (the fields of ``checkpoints.yaml``; see its header)."""

    name: str
    class_path: str
    recipe: str
    dataset: dict[str, Any]
    status: str
    weights: Weights | None
    metrics: dict[str, float]
    num_params: int | None
    licence: dict[str, str]
    paper: dict[str, str]
    provenance: dict[str, Any] | None
    aliases: tuple[str, ...] = ()
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.weights is not None

    @property
    def method(self) -> str:
        return self.class_path.rpartition(".")[2]

    @property
    def overrides(self) -> list[str]:
        """The recorded ``morphzoo fit`` overrides of the build (LightningCLI syntax; the bench rebuilds the same
        DataModule from them)."""
        return list(self.build.get("overrides", []))


@dataclass(frozen=True)
class Registry:
    path: Path
    entries: dict[str, Entry]
    aliases: dict[str, str]
    raw: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.path.parent

    def get(self, name: str) -> Entry:
        key = self.aliases.get(name, name)
        if key not in self.entries:
            known = [*self.entries, *self.aliases]
            close = fnmatch.filter(known, f"*{name}*") or difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            raise RegistryError(f"no checkpoint named {name!r} in {self.path}"
                                + (f"; did you mean {', '.join(close)}?" if close else
                                   f"; known: {', '.join(self.entries)}"))
        return self.entries[key]


# ------------------------------------------------------------------------------------------------- schema check
def _check_files(files: Any, where: str) -> list[str]:
    if not isinstance(files, Mapping) or not files:
        return [f"{where}: weights.files must map file names to {{sha256, size}}"]
    problems = [f"{where}: weights.files lacks {name}" for name in REQUIRED_FILES if name not in files]
    for filename, record in files.items():
        if not isinstance(record, Mapping) or set(record) != {"sha256", "size"}:
            problems.append(f"{where}: weights.files.{filename} must have exactly sha256 and size")
            continue
        if not (isinstance(record["sha256"], str) and SHA256.fullmatch(record["sha256"])):
            problems.append(f"{where}: weights.files.{filename}.sha256 must be 64 lowercase hex digits, "
                            f"got {record['sha256']!r}")
        if not (type(record["size"]) is int and record["size"] > 0):
            problems.append(f"{where}: weights.files.{filename}.size must be a positive integer, "
                            f"got {record['size']!r}")
    return problems


def _check_weights(entry: Mapping[str, Any], root: Path, where: str) -> list[str]:
    weights, status = entry["weights"], entry["status"]
    if weights is None:
        return [f"{where}: status {status!r} needs weights (status 'available' iff weights are given)"] \
            if status == "available" else []
    if status != "available":
        return [f"{where}: status {status!r} but weights are given; set status: available"]
    if not isinstance(weights, Mapping):
        return [f"{where}: weights must be a mapping or null"]
    problems = _check_files(weights.get("files"), where)
    if "bundled" in weights:
        if set(weights) != {"bundled", "files"}:
            problems.append(f"{where}: bundled weights take exactly 'bundled' and 'files'")
        if weights["bundled"] != f"zoo/{entry['name']}":
            problems.append(f"{where}: weights.bundled must be 'zoo/{entry['name']}', got {weights['bundled']!r}")
        elif not (root / weights["bundled"]).is_dir():
            problems.append(f"{where}: bundled folder {root / weights['bundled']} does not exist")
    elif "repo_id" in weights:
        if set(weights) != {"repo_id", "revision", "files"}:
            problems.append(f"{where}: Hub weights take exactly 'repo_id', 'revision' and 'files'")
        if not (isinstance(weights["repo_id"], str) and REPO_ID.fullmatch(weights["repo_id"])):
            problems.append(f"{where}: weights.repo_id must look like 'org/name', got {weights['repo_id']!r}")
        revision = weights.get("revision")
        if not (isinstance(revision, str) and COMMIT.fullmatch(revision)):
            problems.append(f"{where}: weights.revision must be a pinned 40-hex commit, not a branch or tag; got "
                            f"{revision!r} (`morphzoo push` prints the commit)")
    else:
        problems.append(f"{where}: weights need 'bundled: zoo/{entry['name']}' or 'repo_id' + 'revision'")
    return problems


def _check_entry(entry: Any, root: Path, check_imports: bool) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"an entry is not a mapping: {entry!r}"]
    where = f"entry {entry.get('name', '?')!r}"
    problems = [f"{where}: missing field {name!r}" for name in REQUIRED_FIELDS if name not in entry]
    problems += [f"{where}: unknown field {name!r}" for name in entry
                 if name not in REQUIRED_FIELDS + OPTIONAL_FIELDS]
    if problems:
        return problems
    if not (isinstance(entry["name"], str) and NAME.fullmatch(entry["name"])):
        problems.append(f"{where}: name must be lowercase '<method>-<variant>-<dataset>' (letters, digits, '-', '.')")
    if entry["status"] not in STATUSES:
        problems.append(f"{where}: status must be one of {STATUSES}, got {entry['status']!r}")
    if not (root / str(entry["recipe"])).is_file():
        problems.append(f"{where}: recipe {entry['recipe']!r} does not exist under {root}")
    if not (isinstance(entry["dataset"], Mapping) and {"name", "split"} <= set(entry["dataset"])):
        problems.append(f"{where}: dataset must give at least name and split")
    if not (isinstance(entry["licence"], Mapping) and set(LICENCE_FIELDS) <= set(entry["licence"])
            and all(isinstance(v, str) and v for v in entry["licence"].values())):
        problems.append(f"{where}: licence must give non-empty {', '.join(LICENCE_FIELDS)}")
    if not (isinstance(entry["paper"], Mapping) and {"title", "url"} <= set(entry["paper"])):
        problems.append(f"{where}: paper must give title and url")
    if not (isinstance(entry["metrics"], Mapping)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry["metrics"].values())):
        problems.append(f"{where}: metrics must map metric names to numbers")
    num_params = entry["num_params"]
    if not (num_params is None or (type(num_params) is int and num_params > 0)):
        problems.append(f"{where}: num_params must be a positive integer or null, got {num_params!r}")
    provenance = entry["provenance"]
    if provenance is not None and not (isinstance(provenance, Mapping) and set(PROVENANCE_FIELDS) <= set(provenance)):
        problems.append(f"{where}: provenance must be null or give {', '.join(PROVENANCE_FIELDS)}")
    if entry["status"] == "available" and (num_params is None or provenance is None or not entry["metrics"]):
        problems.append(f"{where}: an available checkpoint needs num_params, metrics and provenance")
    if entry["status"] == "not-built" and not isinstance(entry.get("build"), Mapping):
        problems.append(f"{where}: a not-built entry needs build: {{seed, overrides}} for `morphzoo zoo build`")
    build = entry.get("build")
    if build is not None and not (isinstance(build, Mapping) and type(build.get("seed")) is int
                                  and isinstance(build.get("overrides", []), list)):
        problems.append(f"{where}: build must give an integer seed and a list of overrides")
    aliases = entry.get("aliases", [])
    if not (isinstance(aliases, list) and all(isinstance(a, str) and a for a in aliases)):
        problems.append(f"{where}: aliases must be a list of names")
    if check_imports:
        try:
            import_model_class(entry["class_path"], where)
        except CheckpointError as error:
            problems.append(str(error))
    return problems + _check_weights(entry, root, where)


def validate(raw: Any, root: Path, check_imports: bool = True) -> list[str]:
    """Every schema problem of a parsed ``checkpoints.yaml`` (empty list = valid); ``root`` resolves paths."""
    if not (isinstance(raw, Mapping) and raw.get("schema_version") == 1 and isinstance(raw.get("models"), list)):
        return ["the registry must be a mapping with schema_version: 1 and a list under models"]
    problems, seen = [], {}
    for entry in raw["models"]:
        problems += _check_entry(entry, root, check_imports)
        if isinstance(entry, Mapping):
            names = [entry.get("name")] + list(entry.get("aliases") or [])
            for name in names:
                if name in seen:
                    problems.append(f"name or alias {name!r} is used by both {seen[name]!r} and {entry.get('name')!r}")
                seen[name] = entry.get("name")
    return problems


# ------------------------------------------------------------------------------------------------------ loading
def registry_path(path: str | Path | None = None) -> Path:
    """``path``, else ``$MORPHZOO_REGISTRY``, else the shipped ``checkpoints.yaml`` (:mod:`morphzoo.resources`)."""
    return Path(path or os.environ.get("MORPHZOO_REGISTRY") or resource_root() / REGISTRY_NAME).resolve()


def _entry(raw: Mapping[str, Any]) -> Entry:
    weights = raw["weights"]
    if weights is not None:
        weights = Weights(files={name: FileRecord(**record) for name, record in weights["files"].items()},
                          bundled=weights.get("bundled"), repo_id=weights.get("repo_id"),
                          revision=weights.get("revision"))
    return Entry(**{**raw, "weights": weights, "aliases": tuple(raw.get("aliases", ())),
                    "build": dict(raw.get("build") or {})})


def load_registry(path: str | Path | None = None, check_imports: bool = False) -> Registry:
    """Parse and validate the registry; a :class:`RegistryError` lists every problem at once."""
    path = registry_path(path)
    if not path.is_file():
        raise RegistryError(f"registry {path} does not exist (set MORPHZOO_REGISTRY or pass registry=)")
    try:
        raw = yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RegistryError(f"{path} is not valid YAML ({error}); restore it from the package or version control"
                            ) from error
    problems = validate(raw, path.parent, check_imports)
    if problems:
        raise RegistryError(f"{path} breaks the schema documented at its top:\n  - " + "\n  - ".join(problems))
    entries = {item["name"]: _entry(item) for item in raw["models"]}
    aliases = {alias: entry.name for entry in entries.values() for alias in entry.aliases}
    return Registry(path=path, entries=entries, aliases=aliases, raw=raw)


def list_models(pattern: str | None = None, pretrained: bool | None = None,
                registry: str | Path | None = None) -> list[str]:
    """Sorted checkpoint names matching the fnmatch ``pattern``; ``pretrained=True`` keeps those with weights
    (``False``: those without)."""
    entries = load_registry(registry).entries.values()
    return sorted(e.name for e in entries if (pattern is None or fnmatch.fnmatchcase(e.name, pattern))
                  and (pretrained is None or e.available == pretrained))


def info(name: str, registry: str | Path | None = None) -> Entry:
    """The registry entry of ``name`` (or an alias)."""
    return load_registry(registry).get(name)


def unavailable_message(entry: Entry, registry: Registry) -> str:
    """How to obtain a checkpoint that is not published (licensed data) or not built yet."""
    if entry.status == "not-built":
        return (f"{entry.name} is bundled with morphzoo but not built yet. Build it (trains {entry.recipe}, exports "
                f"into zoo/{entry.name}/ and records its hashes):\n  morphzoo zoo build {entry.name}")
    root = parse(registry.root / entry.recipe).data.init_args.get("root") or "/path/to/data"
    return (f"{entry.name} is not published: {entry.dataset['name']} is licensed data "
            f"({entry.licence['data']}), so no weights are distributed. Obtain the data from its owners, then train "
            f"and register the result locally:\n"
            f"  morphzoo fit -c {entry.recipe} --data.init_args.root={root}\n"
            f"  morphzoo export runs/.../checkpoints/best-epoch=N.ckpt zoo-local/{entry.name} --name {entry.name} "
            f"--dataset {entry.dataset['name']} --recipe {entry.recipe}\n"
            f"  morphzoo.load(\"zoo-local/{entry.name}\")")


def entry_folder(entry: Entry, registry: Registry, endpoint: str | None = None,
                 cache_dir: str | Path | None = None) -> Path:
    """The verified local folder of an entry's files (downloaded at the pinned commit for Hub entries)."""
    if entry.weights is None:
        raise NotAvailableError(unavailable_message(entry, registry))
    weights = entry.weights
    if weights.bundled is not None:
        folder = registry.root / weights.bundled
        for filename, record in weights.files.items():
            problem = check_file(folder / filename, record)
            if problem is not None:
                raise ChecksumError(f"bundled checkpoint {entry.name}: {problem}. The checkout is damaged or the "
                                    f"files were edited: restore them from git or rebuild with "
                                    f"`morphzoo zoo build {entry.name}`.")
        return folder
    paths = [fetch_verified(weights.repo_id, filename, weights.revision, record, endpoint, cache_dir)
             for filename, record in weights.files.items()]
    return paths[0].parent


def verify_entries(registry: Registry, names: Sequence[str], endpoint: str | None = None,
                   cache_dir: str | Path | None = None) -> list[str]:
    """Re-hash (ignoring the verified-results cache) every present file of ``names``; remove bad cached Hub files.

    Returns one line per bad file. Files not downloaded yet are skipped; bundled files are reported, never removed.
    """
    problems = []
    for entry in (registry.get(name) for name in names):
        if entry.weights is None:
            continue
        for filename, record in entry.weights.files.items():
            if entry.weights.bundled:
                path = registry.root / entry.weights.bundled / filename
            else:
                path = (hub_cache_dir(cache_dir) / f"models--{entry.weights.repo_id.replace('/', '--')}"
                        / "snapshots" / entry.weights.revision / filename)
                if not path.exists():
                    continue
            problem = check_file(path, record, use_cache=False)
            if problem is None:
                continue
            if not entry.weights.bundled:
                path.resolve().unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                problem += " (removed; `morphzoo download` fetches it again)"
            problems.append(f"{entry.name}: {problem}")
    return problems


def load(name: str | Path, device: str | torch.device | None = None, *, registry: str | Path | None = None,
         endpoint: str | None = None, cache_dir: str | Path | None = None):
    """A ready :class:`~morphzoo.methods.base.MorphableModel` in inference mode, working on raw meshes in metres.

    Args:
        name: a registry name or alias (``"spiralnet-anny-face"``), a local checkpoint folder, or a Hub repository
            ``"org/name"`` / ``"org/name@revision"`` holding a checkpoint folder (checked against the Hub's content
            hashes, since the registry has none for it).
        device: where to put the model (default: CPU).
        registry, endpoint, cache_dir: override ``checkpoints.yaml``, the Hub endpoint and the Hub cache.
    """
    text = str(name)
    if Path(text).is_dir():
        return load_checkpoint(text, device)
    registry_ = load_registry(registry)
    if text in registry_.entries or text in registry_.aliases:
        entry = registry_.get(text)
        folder = entry_folder(entry, registry_, endpoint, cache_dir)
        config = read_config(folder)
        if config["class_path"] != entry.class_path:
            raise CheckpointError(f"{entry.name}: the registry says {entry.class_path}, its config.json says "
                                  f"{config['class_path']}; fix the registry entry")
        return load_checkpoint(folder, device)
    if REPO_ID.fullmatch(text.partition("@")[0]):
        repo_id, _, revision = text.partition("@")
        return load_checkpoint(fetch_unregistered(repo_id, ("config.json", "model.safetensors"), revision or "main",
                                                  endpoint, cache_dir), device)
    raise RegistryError(f"{text!r} is neither a checkpoint folder, a name in {registry_.path}, nor a Hub repository "
                        f"id 'org/name'; registered names: {', '.join(registry_.entries)}")


# ---------------------------------------------------------------------------------------- writing and the README
def write_registry(raw: Mapping[str, Any], path: str | Path) -> None:
    """Write the registry atomically, keeping the schema comment block at the top of the current file."""
    path = Path(path)
    header = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("#") or not line.strip():
                header.append(line)
            else:
                break
    body = yaml.safe_dump({"schema_version": raw["schema_version"]}, sort_keys=False) + "models:\n"
    for entry in raw["models"]:
        body += "\n" + yaml.safe_dump([entry], sort_keys=False, width=110, allow_unicode=True)
    with atomic_file(path, "w") as file:
        file.write("\n".join(header).rstrip("\n") + "\n\n" + body if header else body)


def update_entry(path: str | Path, name: str, updates: Mapping[str, Any]) -> None:
    """Merge ``updates`` into entry ``name`` of the registry file and write it back atomically (validated)."""
    path = registry_path(path)
    raw = yaml.safe_load(path.read_text())
    matches = [entry for entry in raw["models"] if entry["name"] == name]
    if not matches:
        raise RegistryError(f"no entry {name!r} in {path}")
    matches[0].update(updates)
    problems = validate(raw, path.parent, check_imports=False)
    if problems:
        raise RegistryError(f"refusing to write {path}:\n  - " + "\n  - ".join(problems))
    write_registry(raw, path)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render_table(registry: Registry) -> str:
    """The README's zoo table (markdown), generated from the registry."""
    lines = ["| name | method | dataset (split) | weights | params | test error mean / median (mm) | licence "
             "(weights) | recipe |", "|---|---|---|---|---|---|---|---|"]
    for entry in sorted(registry.entries.values(), key=lambda e: e.name):
        if entry.weights is None:
            status = entry.status
        elif entry.weights.bundled:
            status = "bundled"
        else:
            status = f"[Hub](https://huggingface.co/{entry.weights.repo_id})"
        error = entry.metrics.get("reconstruction/mean_mm"), entry.metrics.get("reconstruction/median_mm")
        params = "—" if entry.num_params is None else f"{entry.num_params:,}"
        lines.append(f"| `{entry.name}` | {entry.method} | {entry.dataset['name']} ({entry.dataset['split']}) | "
                     f"{status} | {params} | {_fmt(error[0])} / {_fmt(error[1])} | {entry.licence['weights']} | "
                     f"`{entry.recipe}` |")
    return "\n".join(lines)


def sync_readme(readme: str | Path, registry: Registry, check: bool = False) -> bool:
    """Regenerate the table between the zoo-table markers; returns True if it was stale (``check``: only report)."""
    readme = Path(readme)
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise RegistryError(f"{readme} has no {TABLE_START} ... {TABLE_END} markers to hold the zoo table")
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    updated = f"{before}{TABLE_START}\n{render_table(registry)}\n{TABLE_END}{after}"
    stale = updated != text
    if stale and not check:
        readme.write_text(updated)
    return stale
