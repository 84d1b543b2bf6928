"""Verified Hub downloads through the real huggingface_hub code path, against a loopback Hub.

The fake Hub answers ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` with the headers huggingface_hub needs
(``X-Repo-Commit``, ``ETag``, ``Content-Length``) and counts every request.
"""

import hashlib
import os
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from morphzoo.zoo import hub
from morphzoo.zoo import registry as zoo
from morphzoo.zoo.checkpoint import write_checkpoint
from tests.zoo.test_checkpoint import tiny_spiralnet
from tests.zoo.test_registry import registry_entry, write_registry_file

REPO = "morphzoo-test/spiralnet-tiny-spheres"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NAME = "spiralnet-tiny-spheres"


class FakeHub:
    """A loopback Hub serving one repository at one commit (``main`` points to it)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests, self.status, self.served = dict(files), [], 200, dict(files)
        self.chunk_delay = 0.0  # seconds between 64 KiB chunks of a body (a slow link)
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                hub_.requests.append((self.command, self.path))
                prefix = f"/{REPO}/resolve/"
                revision, _, filename = self.path.removeprefix(prefix).partition("/")
                if hub_.status != 200:
                    self.send_response(hub_.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not self.path.startswith(prefix) or revision not in (COMMIT, "main") or filename not in hub_.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub_.served[filename]
                # as on the Hub: LFS files are addressed by their sha256, git files by their blob sha1
                etag = (hashlib.sha256(data).hexdigest() if filename.endswith(".safetensors") else
                        hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest())
                start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")[0] or 0)
                self.send_response(206 if start else 200)  # as the Hub: a Range request resumes a download
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    for offset in range(start, len(data), 1 << 16):
                        self.wfile.write(data[offset:offset + (1 << 16)])
                        time.sleep(hub_.chunk_delay)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop answering: connections are refused from now on."""
        self.server.shutdown()
        self.server.server_close()

    def gets(self) -> int:
        return sum(method == "GET" for method, _ in self.requests)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_spiralnet()
    folder = write_checkpoint(model, tmp_path_factory.mktemp("ckpt") / NAME)
    return model, {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.fixture
def fake_hub(checkpoint):
    server = FakeHub(checkpoint[1])
    yield server
    server.stop()


@pytest.fixture
def registry(tmp_path, checkpoint):
    files = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
             for name, data in checkpoint[1].items()}
    entry = registry_entry(NAME, status="available",
                           weights={"repo_id": REPO, "revision": COMMIT, "files": files})
    return write_registry_file(tmp_path / "registry", [entry])


@pytest.fixture(autouse=True)
def online(monkeypatch, tmp_path):
    for name in ("HF_HUB_OFFLINE", "MORPHZOO_OFFLINE", "MORPHZOO_HUB_ENDPOINT", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MORPHZOO_HUB_CACHE", str(tmp_path / "hub-cache"))


def load(registry, fake_hub, name=NAME):
    return zoo.load(name, registry=registry, endpoint=fake_hub.url)


def cached_blob(tmp_path, filename="model.safetensors") -> Path:
    snapshot = tmp_path / "hub-cache" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / filename
    return snapshot.resolve()


def same_outputs(model, reference):
    meshes = torch.from_numpy(reference.template.vertices).float()[None]
    with torch.no_grad():
        return torch.equal(model(meshes), reference(meshes))


def test_download_then_load_with_the_network_gone(registry, fake_hub, checkpoint, tmp_path):
    model = load(registry, fake_hub)
    assert same_outputs(model, checkpoint[0]) and not model.training
    assert fake_hub.gets() == 2  # config.json and model.safetensors, each fetched once
    assert cached_blob(tmp_path).name == hashlib.sha256(checkpoint[1]["model.safetensors"]).hexdigest()
    fake_hub.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either: the pinned snapshot needs no request
        assert same_outputs(load(registry, fake_hub), checkpoint[0])


def test_endpoint_and_cache_come_from_the_environment_at_call_time(registry, fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("MORPHZOO_HUB_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("MORPHZOO_HUB_CACHE", str(tmp_path / "elsewhere"))
    zoo.load(NAME, registry=registry)
    assert fake_hub.gets() == 2
    assert (tmp_path / "elsewhere" / f"models--{REPO.replace('/', '--')}").is_dir()


def test_offline_mode_makes_zero_requests(registry, fake_hub, monkeypatch, checkpoint):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailableError, match="offline mode is on"):
        load(registry, fake_hub)
    assert fake_hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    load(registry, fake_hub)
    before = len(fake_hub.requests)
    monkeypatch.setenv("MORPHZOO_OFFLINE", "true")
    assert same_outputs(load(registry, fake_hub), checkpoint[0])
    assert len(fake_hub.requests) == before


def _corrupt_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [_corrupt_one_byte, _truncate])
def test_a_damaged_cached_blob_is_detected_removed_and_fetched_again(registry, fake_hub, checkpoint, tmp_path,
                                                                     damage):
    load(registry, fake_hub)
    damage(cached_blob(tmp_path))
    with pytest.warns(hub.HubWarning, match="removed the corrupted cached copy"):
        model = load(registry, fake_hub)
    assert same_outputs(model, checkpoint[0])
    assert fake_hub.gets() == 3  # the damaged file was fetched again, exactly once
    assert cached_blob(tmp_path).read_bytes() == checkpoint[1]["model.safetensors"]


def test_a_server_sending_wrong_bytes_is_a_checksum_error(registry, fake_hub, checkpoint, tmp_path):
    good = checkpoint[1]["model.safetensors"]
    bad = good[:-1] + bytes([good[-1] ^ 1])
    fake_hub.served["model.safetensors"] = bad
    with pytest.raises(hub.ChecksumError) as error:
        load(registry, fake_hub)
    message = str(error.value)
    assert hashlib.sha256(good).hexdigest() in message and hashlib.sha256(bad).hexdigest() in message
    assert not cached_blob(tmp_path).exists()  # never kept
    # a fresh download that is wrong is not fetched again: the server (or the registry) is wrong
    assert fake_hub.requests.count(("GET", f"/{REPO}/resolve/{COMMIT}/model.safetensors")) == 1


@pytest.mark.parametrize("failure", ["500", "connection refused"])
def test_a_failing_hub_with_a_warm_cache_still_loads(registry, fake_hub, checkpoint, failure):
    load(registry, fake_hub)
    load(registry, fake_hub, REPO)  # the same repository by Hub id: resolves `main` online, caches refs/main
    before = len(fake_hub.requests)
    if failure == "500":
        fake_hub.status = 500
    else:
        fake_hub.stop()
    assert same_outputs(load(registry, fake_hub), checkpoint[0])  # pinned: no request at all
    assert len(fake_hub.requests) == before
    with pytest.warns(hub.HubWarning, match="could not reach"):
        model = load(registry, fake_hub, REPO)  # unpinned: the Hub is asked, fails, the verified cache answers
    assert same_outputs(model, checkpoint[0])


def test_a_file_missing_on_the_hub_without_a_cache_is_a_clear_error(registry, fake_hub):
    del fake_hub.files["model.safetensors"]  # the server answers 404 EntryNotFound
    with pytest.raises(hub.HubUnavailableError, match="cannot fetch .*model.safetensors.*NotFound"):
        load(registry, fake_hub)


def test_repeated_loads_do_not_rehash(registry, fake_hub, monkeypatch, tmp_path):
    load(registry, fake_hub)
    calls = []
    original = hub.hash_file
    monkeypatch.setattr(hub, "hash_file", lambda path: calls.append(path) or original(path))
    load(registry, fake_hub)
    assert calls == []
    blob = cached_blob(tmp_path)
    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 1))  # a changed file is hashed anew
    load(registry, fake_hub)
    assert [Path(p).name for p in calls] == [blob.name]


def test_unregistered_repositories_are_checked_against_content_hashes(fake_hub, checkpoint, tmp_path, registry):
    assert same_outputs(load(registry, fake_hub, REPO + "@" + COMMIT), checkpoint[0])
    _corrupt_one_byte(cached_blob(tmp_path))
    with pytest.raises(hub.ChecksumError, match="content hash"):
        load(registry, fake_hub, REPO + "@" + COMMIT)
    assert same_outputs(load(registry, fake_hub, REPO + "@" + COMMIT), checkpoint[0])  # the bad copy was removed


def test_verify_rehashes_the_cache_and_removes_bad_files(registry, fake_hub, tmp_path):
    from morphzoo.zoo.registry import verify_entries

    load(registry, fake_hub)
    blob = cached_blob(tmp_path)
    stat = blob.stat()
    _corrupt_one_byte(blob)
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot that keeps the timestamp
    problems = verify_entries(zoo.load_registry(registry), [NAME], endpoint=fake_hub.url)
    assert len(problems) == 1 and "sha256" in problems[0]
    assert not blob.exists()


def test_push_refuses_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailableError, match="offline"):
        hub.push_folder(tmp_path, "org/name")


def test_registry_yaml_of_the_fixture_is_valid(registry):
    raw = yaml.safe_load(Path(registry).read_text())
    assert zoo.validate(raw, Path(registry).parent) == []
