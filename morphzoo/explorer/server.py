"""The explorer's web server: the static page (three.js vendored in ``static/vendor``, no CDN) and a JSON API over an
:class:`~morphzoo.explorer.session.ExplorerSession`, on the standard library's threaded HTTP server.

Every API call is ``POST /api/<name>`` with a JSON object; meshes travel as base64 little-endian float32 (vertices,
errors) and uint32 (faces), which the page wraps in typed arrays without parsing numbers. A request the model cannot
answer gets ``400 {"error": message}``, shown on the page.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import sys
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from torch import Tensor

from morphzoo.explorer.session import ExplorerError, ExplorerSession

STATIC = Path(__file__).resolve().parent / "static"
MAX_REQUEST_BYTES = 1 << 20


def _array(values: Tensor | np.ndarray, dtype: str = "<f4") -> str:
    return base64.b64encode(np.ascontiguousarray(np.asarray(values), dtype=dtype).tobytes()).decode("ascii")


def _mesh_reply(vertices: Tensor, coordinates: Tensor | None = None, **extra) -> dict:
    reply = {"vertices": _array(vertices), **extra}
    if coordinates is not None:
        reply["coordinates"] = coordinates.tolist()
    return reply


def api(session: ExplorerSession) -> dict[str, Callable[[dict], dict]]:
    """The API: name -> handler of the request's JSON object."""
    def model(_: dict) -> dict:
        template = session.model.template
        return {"name": session.name, "method": type(session.model).__name__, "up": session.up,
                "faces": _array(template.faces, "<u4"), "num_vertices": session.model.num_vertices,
                "dimension": session.dimension, "factors": session.factors, "meshes": session.mesh_names,
                "features": session.features(), **_mesh_reply(session.decode([0.0] * session.dimension))}

    def encode(request: dict) -> dict:
        result = session.encode(request["mesh"])
        return _mesh_reply(result["vertices"], result["coordinates"], error_mm=_array(result["error_mm"]),
                           max_error_mm=float(result["error_mm"].max()), mean_error_mm=float(result["error_mm"].mean()))

    return {
        "model": model,
        "decode": lambda r: _mesh_reply(session.decode(r["coordinates"])),
        "sample": lambda r: _mesh_reply(*reversed(session.sample(r.get("seed", 0)))),
        "encode": encode,
        "interpolate": lambda r: _mesh_reply(*reversed(session.interpolate(r["source"], r["target"], r["weight"]))),
        "edit_regions": lambda r: _mesh_reply(session.edit_regions(r["coordinates"], r["moves"])),
        "sample_region": lambda r: _mesh_reply(session.sample_region(r["coordinates"], r["region"], r.get("seed", 0))),
        "swap_parts": lambda r: _mesh_reply(session.swap_parts(r["coordinates"], r["sources"])),
    }


class ExplorerServer(ThreadingHTTPServer):
    """Serves the page and the API of one session; ``port=0`` picks a free port (see :attr:`url`)."""

    daemon_threads = True

    def __init__(self, session: ExplorerSession, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True):
        self.handlers = api(session)
        self.quiet = quiet
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0', '') else host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        path = self.path.split("?", 1)[0]
        relative = "index.html" if path == "/" else path.removeprefix("/static/")
        file = (STATIC / relative).resolve()
        if path != "/" and not path.startswith("/static/") or not file.is_relative_to(STATIC) or not file.is_file():
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        content_type = "text/javascript" if file.suffix == ".js" else mimetypes.guess_type(file.name)[0]
        self._send(HTTPStatus.OK, file.read_bytes(), content_type or "application/octet-stream")

    def do_POST(self) -> None:  # noqa: N802
        name = self.path.removeprefix("/api/")
        handler = self.server.handlers.get(name) if self.path.startswith("/api/") else None
        if handler is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no API call {self.path}"})
            return
        length = int(self.headers.get("Content-Length", 0))
        if length > MAX_REQUEST_BYTES:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"requests are at most {MAX_REQUEST_BYTES} bytes"})
            return
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
            self._json(HTTPStatus.OK, handler(request))
        except (ExplorerError, KeyError, TypeError, ValueError) as error:
            message = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"{name}: {message}"})

    def _json(self, status: HTTPStatus, body: dict) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the standard library's signature)
        if not self.server.quiet:
            sys.stderr.write(f"[view] {format % args}\n")


def serve(session: ExplorerSession, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True) -> None:
    """Serve until Ctrl-C (or SIGTERM), then close the socket and return."""
    with ExplorerServer(session, host, port, quiet) as server:
        print(f"morphzoo view: {session.name} at {server.url} (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    print("morphzoo view: stopped", flush=True)
