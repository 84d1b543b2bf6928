"""Verified downloads from the Hugging Face Hub (or any Hub-compatible endpoint) and verified local files.

huggingface_hub caches downloads (``models--org--name/{blobs,snapshots,refs}``) but verifies no checksum: a corrupted
or truncated cached blob keeps breaking every later load, and a proxy error can hide a perfectly good cached copy.
Here every load checks size and sha256 of every file against the registry:

- ``hf_hub_download`` runs with the registry's pinned 40-hex commit, so a cached snapshot is used with no request;
- the sha256 of a file is cached in ``$MORPHZOO_CACHE/verified-files.json`` keyed by (real path, size, mtime_ns,
  inode) and written atomically: repeated loads stat the file instead of re-hashing it, and any change to the file
  (rewrite, truncation, replacement) changes the key so the file is hashed again;
- a cached file with the wrong size or hash is removed (blob and snapshot link) and fetched again once; if the fresh
  copy is wrong too, :class:`ChecksumError` names the expected and actual hashes;
- offline (``HF_HUB_OFFLINE`` or ``MORPHZOO_OFFLINE``, read at call time) only the cache is used, with no request;
- a network, proxy or server failure falls back to a cached copy of the same revision, with a warning.

Endpoint and cache directory come from the arguments, else ``MORPHZOO_HUB_ENDPOINT`` / ``HF_ENDPOINT`` and
``MORPHZOO_HUB_CACHE`` / ``HF_HUB_CACHE`` / ``$HF_HOME/hub``, read at call time (huggingface_hub reads its own
environment once, at import, so both are always passed explicitly).

Repositories outside the registry (``morphzoo.load("org/name")``) have no registry hashes; their files are checked
against the Hub's content addresses instead: the blob name of an LFS file is its sha256, that of a regular git file
its git blob sha1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import FileMetadataError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from morphzoo.cache import CacheWriteError, atomic_file, entry_lock
from morphzoo.cache import cache_dir as morphzoo_cache_dir
from morphzoo.errors import MorphzooError

try:  # huggingface_hub 2.x speaks HTTP through httpx2, 1.x through httpx, 0.x through requests (OSError subclasses)
    from httpx2 import HTTPError as TransportError
except ImportError:
    try:
        from httpx import HTTPError as TransportError
    except ImportError:
        TransportError = OSError

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")
VERIFIED_CACHE_NAME = "verified-files.json"
# Failures to reach the Hub after which a cached copy of the same revision is still trustworthy.
NETWORK_ERRORS = (TransportError, HfHubHTTPError, FileMetadataError, OfflineModeIsEnabled, OSError)


class ChecksumError(MorphzooError, RuntimeError):
    """A file whose size or sha256 differs from the registry's, even after fetching it again."""


class HubUnavailableError(MorphzooError, RuntimeError):
    """The Hub cannot be reached (offline or failing) and no verified cached copy exists."""


class HubWarning(UserWarning):
    """A load that went on with a cached copy because the Hub could not be reached."""


@dataclass(frozen=True)
class FileRecord:
    """What a file must be: its sha256 (64 hex) and size in bytes."""

    sha256: str
    size: int


# --------------------------------------------------------------------------------------------------- configuration
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """``MORPHZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true/yes/on, read now (not at import)."""
    return _truthy(os.environ.get("MORPHZOO_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL: ``endpoint``, else ``$MORPHZOO_HUB_ENDPOINT``, else ``$HF_ENDPOINT``, else huggingface.co."""
    value = endpoint or os.environ.get("MORPHZOO_HUB_ENDPOINT") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return value.rstrip("/")


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """huggingface_hub's cache: ``cache_dir``, else ``$MORPHZOO_HUB_CACHE``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``."""
    if cache_dir is None:
        cache_dir = os.environ.get("MORPHZOO_HUB_CACHE") or os.environ.get("HF_HUB_CACHE")
    if cache_dir is None:
        cache_dir = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    return Path(cache_dir).expanduser()


# ------------------------------------------------------------------------------------------ verified-results cache
def _verified_cache_path() -> Path:
    return morphzoo_cache_dir() / VERIFIED_CACHE_NAME


def _file_key(path: Path) -> tuple[str, str]:
    real = path.resolve()
    stat = real.stat()
    return str(real), f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


def _read_verified() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_verified_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: files are simply hashed again


def _write_verified(data: dict[str, dict[str, str]]) -> None:
    try:
        with atomic_file(_verified_cache_path(), "w") as file:
            json.dump(data, file)
    except CacheWriteError:
        pass  # a read-only or full cache only costs hashing the file again next time; the load itself goes on


def hash_file(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path, use_cache: bool = True) -> str:
    """sha256 of a file, remembered per (real path, size, mtime_ns, inode); ``use_cache=False`` always re-hashes."""
    real, stamp = _file_key(Path(path))
    data = _read_verified()
    entry = data.get(real)
    if use_cache and entry and entry.get("stamp") == stamp:
        return entry["sha256"]
    digest = hash_file(real)
    data[real] = {"stamp": stamp, "sha256": digest}
    _write_verified(data)
    return digest


def git_blob_sha1(path: str | Path) -> str:
    """The git object id of a file (``sha1("blob <size>\\0" + content)``): the Hub's ETag of a non-LFS file."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def check_file(path: str | Path, record: FileRecord, use_cache: bool = True) -> str | None:
    """``None`` if ``path`` has the record's size and sha256, else a sentence saying what differs."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != record.size:
        return f"{path} has {size} bytes, expected {record.size}"
    actual = file_digest(path, use_cache=use_cache)
    if actual != record.sha256:
        return f"{path}: sha256 {actual}, expected {record.sha256}"
    return None


def describe_file(path: str | Path) -> FileRecord:
    """The record of an existing file (for registry blocks)."""
    return FileRecord(sha256=file_digest(path), size=Path(path).stat().st_size)


# ------------------------------------------------------------------------------------------------------- downloads
def _remove_cached(path: Path) -> None:
    """Remove a cached snapshot file and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _snapshot_path(cache: Path, repo_id: str, revision: str, filename: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision / filename


def _download(repo_id: str, filename: str, revision: str, endpoint: str, cache: Path) -> Path:
    """``hf_hub_download`` with explicit endpoint/cache, under the repository's lock; offline and network failures
    fall back to the cache.

    huggingface_hub downloads into a process-unique ``blobs/<etag>.<random>.incomplete`` and never resumes it, so a
    killed download leaves one behind for good. Every morphzoo download of a repository holds that repository's
    lock, so any ``.incomplete`` found while holding it is a dead process's and is removed.
    """
    if _snapshot_path(cache, repo_id, revision, filename).exists():
        return _download_unlocked(repo_id, filename, revision, endpoint, cache)  # cached: a read-only cache serves it
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    with entry_lock(repository):
        for stale in (repository / "blobs").glob("*.incomplete"):
            stale.unlink(missing_ok=True)
        return _download_unlocked(repo_id, filename, revision, endpoint, cache)


def _download_unlocked(repo_id: str, filename: str, revision: str, endpoint: str, cache: Path) -> Path:
    offline = is_offline()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache, endpoint=endpoint,
                                    local_files_only=offline))
    except LocalEntryNotFoundError:
        if offline:
            raise HubUnavailableError(
                f"{repo_id}/{filename}@{revision} is not in the cache {cache} and offline mode is on "
                "(HF_HUB_OFFLINE / MORPHZOO_OFFLINE): download it once online with `morphzoo download NAME`") from None
        raise HubUnavailableError(f"cannot reach {endpoint} for {repo_id}/{filename}@{revision} and it is not "
                                  f"cached in {cache}") from None
    except NETWORK_ERRORS as error:
        cached = _snapshot_path(cache, repo_id, revision, filename)
        if not cached.exists():
            raise HubUnavailableError(f"cannot fetch {repo_id}/{filename}@{revision} from {endpoint}: "
                                      f"{type(error).__name__}: {error}") from None
        warnings.warn(f"could not reach {endpoint} ({type(error).__name__}: {error}); using the cached "
                      f"{repo_id}/{filename}@{revision[:12]}", HubWarning, stacklevel=3)
        return cached


def fetch_verified(repo_id: str, filename: str, revision: str, record: FileRecord, endpoint: str | None = None,
                   cache_dir: str | Path | None = None) -> Path:
    """Download (or find in the cache) one file at a pinned commit and verify it.

    A bad *cached* copy is removed and fetched again once; a bad *fresh* download means the server (or the registry)
    is wrong: it is removed and reported at once, naming the expected and actual sha256.
    """
    if not COMMIT.fullmatch(revision):
        raise ValueError(f"{repo_id}: revision must be a 40-hex commit, got {revision!r}")
    endpoint, cache = hub_endpoint(endpoint), hub_cache_dir(cache_dir)
    was_cached = _snapshot_path(cache, repo_id, revision, filename).exists()
    path = _download(repo_id, filename, revision, endpoint, cache)
    problem = check_file(path, record)
    if problem is not None and was_cached:
        _remove_cached(path)
        if is_offline():
            raise ChecksumError(f"{problem}. The corrupted cached copy was removed; go online (unset HF_HUB_OFFLINE "
                                "/ MORPHZOO_OFFLINE) to fetch it again.")
        warnings.warn(f"{problem}: removed the corrupted cached copy, fetching it again", HubWarning, stacklevel=2)
        path = _download(repo_id, filename, revision, endpoint, cache)
        problem = check_file(path, record)
    if problem is not None:
        size, actual = path.stat().st_size, file_digest(path)
        _remove_cached(path)
        raise ChecksumError(f"{repo_id}/{filename}@{revision} from {endpoint}: got sha256 {actual} ({size} bytes), "
                            f"expected sha256 {record.sha256} ({record.size} bytes). The upload or the registry entry "
                            "is wrong; the file was not kept.")
    return path


def _write_ref(ref: Path, commit: str) -> None:
    """Record ``revision -> commit`` in huggingface_hub's cache layout (``refs/<revision>``), atomically."""
    with atomic_file(ref, "w") as file:
        file.write(commit)


def resolve_revision(repo_id: str, revision: str, probe_file: str, endpoint: str | None = None,
                     cache_dir: str | Path | None = None) -> str:
    """The commit of ``revision`` (a branch or tag) on the Hub, remembered in the cache's ``refs/``; offline, or
    with a warning when the Hub fails, the remembered one."""
    if COMMIT.fullmatch(revision):
        return revision
    endpoint, cache = hub_endpoint(endpoint), hub_cache_dir(cache_dir)
    ref = cache / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if not is_offline():
        try:
            url = hf_hub_url(repo_id, probe_file, revision=revision, endpoint=endpoint)
            commit = get_hf_file_metadata(url, endpoint=endpoint).commit_hash
            if commit and COMMIT.fullmatch(commit):
                _write_ref(ref, commit)
                return commit
            error: Exception = FileMetadataError(f"no X-Repo-Commit header from {url}")
        except NETWORK_ERRORS as caught:
            error = caught
        if not ref.is_file():
            raise HubUnavailableError(f"cannot resolve {repo_id}@{revision} on {endpoint} "
                                      f"({type(error).__name__}: {error}) and it is not cached in {cache}")
        warnings.warn(f"could not reach {endpoint} ({type(error).__name__}: {error}); using the cached "
                      f"{repo_id}@{revision}", HubWarning, stacklevel=2)
    elif not ref.is_file():
        raise HubUnavailableError(f"{repo_id}@{revision} is not in the cache {cache} and offline mode is on")
    return ref.read_text().strip()


def fetch_unregistered(repo_id: str, filenames: Iterable[str], revision: str = "main", endpoint: str | None = None,
                       cache_dir: str | Path | None = None) -> Path:
    """Download a repository outside the registry; check every file against the Hub's content address.

    The revision is resolved to one commit first, so all files come from the same snapshot.
    """
    filenames = list(filenames)
    endpoint, cache = hub_endpoint(endpoint), hub_cache_dir(cache_dir)
    commit = resolve_revision(repo_id, revision, filenames[0], endpoint, cache)
    for filename in filenames:
        path = _download(repo_id, filename, commit, endpoint, cache)
        address = path.resolve().name
        if SHA256.fullmatch(address):
            actual = file_digest(path)
        elif COMMIT.fullmatch(address):
            actual = git_blob_sha1(path)
        else:
            raise ChecksumError(f"{path}: the cached blob name {address!r} is not a content hash; cannot verify it")
        if actual != address:
            _remove_cached(path)
            raise ChecksumError(f"{repo_id}/{filename}@{commit}: content hash {actual}, expected {address} (the "
                                "Hub's ETag). The corrupted cached copy was removed; load again to fetch it anew.")
    return path.parent


def push_folder(folder: str | Path, repo_id: str, endpoint: str | None = None, private: bool = False) -> str:
    """Upload a checkpoint folder to the Hub; returns the commit to pin in the registry."""
    if is_offline():
        raise HubUnavailableError("offline mode is on (HF_HUB_OFFLINE / MORPHZOO_OFFLINE): unset it to push")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint(endpoint))
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                   commit_message="Upload a morphzoo checkpoint")
    except NETWORK_ERRORS as error:
        raise HubUnavailableError(f"cannot push to {hub_endpoint(endpoint)}/{repo_id}: {type(error).__name__}: "
                                  f"{error}. Check your connection and `hf auth login`.") from None
    return commit.oid
