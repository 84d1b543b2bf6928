"""The explorer's model side and its JSON API: every page interaction equals the model's own method, the coordinates
whiten the latent Gaussian, factor sliders move one factor, bad requests are named; the vendored three.js is intact."""

import base64
import hashlib
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import morphzoo
from morphzoo.explorer import ExplorerError, ExplorerServer, ExplorerSession
from morphzoo.explorer.server import STATIC


@pytest.fixture(scope="module")
def pca():
    return morphzoo.load("pca-anny-face")


@pytest.fixture(scope="module")
def meshes(pca):
    return pca.sample(3, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def session(pca, meshes):
    return ExplorerSession(pca, meshes, ["a", "b", "c"], sliders=4)


def test_the_mean_coordinates_decode_the_latent_mean_and_coordinates_round_trip(session, pca):
    zeros = [0.0] * session.dimension
    torch.testing.assert_close(session.decode(zeros), pca.decode(pca.latent_mean[None])[0])
    c = torch.randn(session.dimension, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(session.coordinates_of(session.latent(c.tolist())), c)


def test_sampled_coordinates_are_whitened_and_decode_to_the_sample(session, pca):
    coordinates = torch.stack([session.sample(seed)[0] for seed in range(600)])
    covariance = torch.cov(coordinates.T)
    assert (covariance - torch.eye(session.dimension)).abs().max() < 0.25  # 600 draws: sampling error ~0.06
    coords, mesh = session.sample(7)
    torch.testing.assert_close(session.decode(coords.tolist()), mesh, atol=1e-6, rtol=0)
    torch.testing.assert_close(mesh, pca.sample(1, torch.Generator().manual_seed(7))[0])


def test_the_error_map_and_interpolation_are_the_models(session, pca, meshes):
    result = session.encode(1)
    expected = (pca(meshes[1]) - meshes[1]).norm(dim=-1) * 1000
    torch.testing.assert_close(result["error_mm"], expected)
    torch.testing.assert_close(session.decode(result["coordinates"].tolist()), pca(meshes[1]), atol=1e-6, rtol=0)
    _, halfway = session.interpolate(0, 2, 0.5)
    torch.testing.assert_close(halfway, pca.interpolate(meshes[0], meshes[2], 0.5), atol=1e-6, rtol=0)


def test_a_factor_slider_moves_only_its_factor():
    model = morphzoo.load("ibvae-anny-face")
    session = ExplorerSession(model, sliders=3)
    factors = model.latent_factors()
    assert [f["name"] for f in session.factors] == list(factors)
    for factor in session.factors:
        for column in factor["columns"]:
            coordinates = [0.0] * session.dimension
            coordinates[column] = 1.0
            moved = (session.latent(coordinates) - session.latent_mean).abs() > 1e-9
            inside = torch.zeros(session.dimension, dtype=torch.bool)
            inside[factors[factor["name"]]] = True
            assert moved.any() and not (moved & ~inside).any()


def test_lamm_drags_and_region_samples_are_the_models():
    model = morphzoo.load("lamm-manipulation-anny-face")
    session = ExplorerSession(model)
    zeros = [0.0] * session.dimension
    base = session.decode(zeros)
    displacements = torch.zeros(*model.control_index.shape, 3)
    displacements[2, 1] = torch.tensor([0.0, -0.01, 0.005])
    edited = session.edit_regions(zeros, [[2, 1, 0.0, -0.01, 0.005]])
    torch.testing.assert_close(edited, model.edit(base, displacements))
    with pytest.raises(ExplorerError, match="control move"):
        session.edit_regions(zeros, [[model.num_regions, 0, 0, 0, 0]])
    assert session.features()["regions"]["names"] == list(model.region_names)


def test_part_swaps_are_the_nmf_autoencoders():
    model = morphzoo.load("locally-weighted-anny-heads")
    donors = model.sample(2, generator=torch.Generator().manual_seed(1))
    session = ExplorerSession(model, donors)
    zeros = [0.0] * session.dimension
    current = session.decode(zeros)
    sources = [0] + [-1] * (model.parts - 1)
    expected = model.combine_parts(torch.stack([current, donors[0]]), [1] + [0] * (model.parts - 1))
    torch.testing.assert_close(session.swap_parts(zeros, sources), expected)
    assert session.features()["parts"]["count"] == model.parts
    with pytest.raises(ExplorerError, match="no parts"):
        ExplorerSession(morphzoo.load("pca-anny-face")).swap_parts(zeros[:8], [0])


def test_bad_requests_and_inputs_are_named(session, pca):
    with pytest.raises(ExplorerError, match=f"{session.dimension} finite numbers"):
        session.decode([0.0] * (session.dimension + 1))
    with pytest.raises(ExplorerError, match="no mesh 3"):
        session.encode(3)
    with pytest.raises(ExplorerError, match="register them to the template"):
        ExplorerSession(pca, torch.zeros(2, 10, 3))
    unfitted = morphzoo.load("pca-anny-face")
    unfitted.latent_mean = torch.empty(0)
    with pytest.raises(ExplorerError, match="fit_latent_distribution"):
        ExplorerSession(unfitted)


@pytest.fixture(scope="module")
def server(session):
    server = ExplorerServer(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _post(server, name, body):
    request = urllib.request.Request(server.url + f"api/{name}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_the_api_returns_the_sessions_meshes(server, session):
    coordinates = [0.5] + [0.0] * (session.dimension - 1)
    vertices = np.frombuffer(base64.b64decode(_post(server, "decode", {"coordinates": coordinates})["vertices"]),
                             "<f4").reshape(-1, 3)
    np.testing.assert_array_equal(vertices, session.decode(coordinates).numpy())
    described = _post(server, "model", {})
    faces = np.frombuffer(base64.b64decode(described["faces"]), "<u4").reshape(-1, 3)
    np.testing.assert_array_equal(faces, session.model.template.faces)
    assert described["meshes"] == ["a", "b", "c"] and described["dimension"] == session.dimension


def test_the_api_refuses_bad_requests_with_the_reason(server):
    with pytest.raises(urllib.error.HTTPError) as error:
        _post(server, "encode", {"mesh": 9})
    assert error.value.code == 400 and "no mesh 9" in json.loads(error.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as error:
        _post(server, "decode", {})
    assert error.value.code == 400 and "coordinates" in json.loads(error.value.read())["error"]
    for path in ("static/../server.py", "static/%2e%2e/server.py", "nothing"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server.url + path, timeout=30)
        assert error.value.code == 404


def test_the_page_and_vendored_three_js_are_served_intact(server):
    with urllib.request.urlopen(server.url, timeout=30) as reply:
        assert b'src="/static/explorer.js"' in reply.read()
    source = (STATIC / "vendor" / "three" / "SOURCE").read_text().splitlines()
    hashes = dict(reversed(line.split()) for line in source if len(line.split()) == 2)
    assert set(hashes) == {"three.module.min.js", "three.core.min.js", "OrbitControls.js", "LICENSE"}
    for name, digest in hashes.items():
        with urllib.request.urlopen(server.url + f"static/vendor/three/{name}", timeout=30) as reply:
            assert hashlib.sha256(reply.read()).hexdigest() == digest, name
