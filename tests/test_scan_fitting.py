"""Fitting raw scans (``fit_scan``, ``model.fit_scan``, ``morphzoo fit-scan``): a known mesh is recovered from a
randomly rotated, rescaled, noisy, cropped point sampling of its surface by the bundled models, and bad scans are
refused with the reason."""

import numpy as np
import pytest
import torch
import trimesh

import morphzoo
from morphzoo.cli import main
from morphzoo.data import AnnyFaceDataModule
from morphzoo.fitting import fit_scan
from morphzoo.mesh.io import write_mesh

NOISE_MM = 0.5
OFFSET_MM = np.array([100.0, -50.0, 30.0])


@pytest.fixture(scope="module")
def truth() -> torch.Tensor:
    """A test-split mesh of the tiny anny-face data (metres, the models' frame)."""
    data = AnnyFaceDataModule(size="tiny")
    return torch.tensor(data.collection.vertices[data.split_indices["test"][0]], dtype=torch.float32)


def posed_scan(truth: torch.Tensor, faces: np.ndarray, seed: int = 1, crop: float = 0.8, points: int = 3000):
    """(scan in mm, the rotation, the truth placed like the scan in mm): surface samples of ``truth`` with the 20 %
    of largest x cut off, rotated at random, in millimetres, shifted, with Gaussian noise."""
    generator = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(generator.normal(size=(3, 3)))
    rotation *= np.sign(np.linalg.det(rotation))
    samples, _ = trimesh.sample.sample_surface(trimesh.Trimesh(truth.double().numpy(), faces, process=False), points,
                                               seed=seed)
    samples = samples[samples[:, 0] < np.quantile(samples[:, 0], crop)]
    scan = 1000 * samples @ rotation.T + OFFSET_MM + generator.normal(scale=NOISE_MM, size=samples.shape)
    placed = 1000 * truth.double().numpy() @ rotation.T + OFFSET_MM
    return scan, placed


def correspondence_error_mm(fit, placed_truth: np.ndarray) -> float:
    """Mean distance of each fitted vertex to the same vertex of the truth, both on the scan (mm). The model's own
    frame is not comparable: a scan in an arbitrary pose fixes the mesh only up to that pose."""
    return float(np.linalg.norm(fit.vertices_in_scan.double().numpy() - placed_truth, axis=-1).mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pca-anny-face", "coma-anny-face", "spiralnet-anny-face", "lamm-anny-face"])
def test_a_bundled_model_recovers_a_mesh_from_a_posed_rescaled_noisy_cropped_scan(name, truth):
    model = morphzoo.load(name)
    with torch.no_grad():  # the floor: the model's error on the registered mesh itself
        reconstruction_mm = float((model(truth) - truth).norm(dim=-1).mean()) * 1000
    scan, placed = posed_scan(truth, model.template.faces)
    fit = model.fit_scan(scan, steps=150)  # units unknown: the scale is estimated
    error = correspondence_error_mm(fit, placed)
    print(f"{name}: scan-fit error {error:.2f} mm, registered reconstruction {reconstruction_mm:.2f} mm, scale "
          f"{float(fit.scale):.1f}, median residual {float(fit.residual_mm[0].median()):.2f} mm")
    assert abs(float(fit.scale) / 1000 - 1) < 0.08, "the scan is in millimetres"
    assert error < 2 * reconstruction_mm + NOISE_MM
    assert float(fit.residual_mm[0].median()) < 3 * NOISE_MM + reconstruction_mm / 2
    assert fit.vertices.shape == truth.shape and fit.residual_mm[0].shape == (len(scan),)
    torch.testing.assert_close(fit.vertices, model.decode(fit.latent[None])[0])  # the fit is the code's decoding


def test_known_units_fix_the_scale_and_the_fit_is_batched_independently(truth):
    model = morphzoo.load("pca-anny-face")
    with torch.no_grad():
        reconstruction_mm = float((model(truth) - truth).norm(dim=-1).mean()) * 1000
    (scan_a, placed_a), (scan_b, _) = posed_scan(truth, model.template.faces, seed=1), posed_scan(
        truth, model.template.faces, seed=2, crop=0.9)
    alone = fit_scan(model, scan_a, units_per_metre=1000, steps=100)
    assert float(alone.scale) == 1000 and correspondence_error_mm(alone, placed_a) < 1.5 * reconstruction_mm + NOISE_MM
    together = fit_scan(model, [scan_a, scan_b], units_per_metre=1000, steps=100)
    assert together.vertices.shape == (2, *truth.shape) and [len(r) for r in together.residual_mm] == [
        len(scan_a), len(scan_b)]
    # scans do not interact: equal up to float32 rounding compounded over the steps (0.05 mm; a coupling is mm)
    torch.testing.assert_close(together.vertices[0], alone.vertices, atol=5e-5, rtol=0)


def test_a_per_vertex_residual_fits_what_the_code_cannot(truth):
    model = morphzoo.load("pca-anny-face")
    bumped = truth.clone()
    bumped[:, 2] += 0.004 * torch.exp(-((truth[:, :2] - truth[:, :2].mean(0)) / 0.02).pow(2).sum(1))  # a 4 mm bump
    scan, _ = posed_scan(bumped, model.template.faces, crop=1.0)
    plain = fit_scan(model, scan, units_per_metre=1000, steps=100)
    refined = fit_scan(model, scan, units_per_metre=1000, steps=100, fit_offsets=True)
    assert refined.offsets.shape == truth.shape and plain.offsets is None
    assert float(refined.residual_mm[0].mean()) < 0.8 * float(plain.residual_mm[0].mean())


def test_bad_scans_are_refused_with_the_reason():
    model = morphzoo.load("pca-anny-face")
    points = np.random.default_rng(0).normal(size=(500, 3))
    with pytest.raises(ValueError, match="scan 0 contains NaN.*1 points"):
        fit_scan(model, np.vstack([points, [[np.nan, 0, 0]]]))
    with pytest.raises(ValueError, match="has 10 points; fitting needs at least 50"):
        fit_scan(model, points[:10])
    with pytest.raises(ValueError, match="lies on a plane"):
        fit_scan(model, points * [1, 1, 0])
    with pytest.raises(ValueError, match="lies on a line"):
        fit_scan(model, points * [1, 0, 0])
    with pytest.raises(ValueError, match="must be \\(N, 3\\) points"):
        fit_scan(model, points[:, :2])
    with pytest.raises(ValueError, match="landmark positions must be \\(2, 3\\)"):
        fit_scan(model, points, landmarks=([0, 1], np.zeros((3, 3))))


def test_the_command_line_writes_the_registered_mesh_code_and_residuals(tmp_path, truth, capsys):
    model = morphzoo.load("pca-anny-face")
    scan, _ = posed_scan(truth, model.template.faces)
    trimesh.PointCloud(scan).export(tmp_path / "scan.ply")
    main(["fit-scan", "pca-anny-face", str(tmp_path / "scan.ply"), "--units", "mm", "--steps", "20"])
    output = capsys.readouterr().out
    assert "scale 1000 scan units per metre" in output and "median" in output
    registered = trimesh.load(tmp_path / "scan-registered.ply", process=False)
    assert registered.vertices.shape == truth.shape and (registered.faces == model.template.faces).all()
    arrays = np.load(tmp_path / "scan-registered.npz")
    assert arrays["residual_mm"].shape == (len(scan),) and arrays["latent"].shape == tuple(model.latent_shape)

    (tmp_path / "broken.ply").write_bytes((tmp_path / "scan.ply").read_bytes()[:40])
    with pytest.raises(SystemExit, match="morphzoo fit-scan: .*broken.ply"):
        main(["fit-scan", "pca-anny-face", str(tmp_path / "broken.ply")])
    write_mesh(tmp_path / "flat.ply", np.c_[np.random.default_rng(0).normal(size=(100, 2)), np.zeros(100)],
               np.array([[0, 1, 2]]))
    with pytest.raises(SystemExit, match="lies on a plane"):
        main(["fit-scan", "pca-anny-face", str(tmp_path / "flat.ply")])
