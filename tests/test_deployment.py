"""ONNX export (``morphzoo.deployment``): every bundled model's decoder (and feed-forward encoder) runs in onnxruntime
with a dynamic batch and matches PyTorch to 1e-5 (plus float32 rounding) on inputs the export never saw; the
layers' export form computes what their fast form computes; failures leave nothing behind."""

import json

import numpy as np
import pytest
import torch

import morphzoo
from morphzoo.deployment import ExportError, export_onnx, parity_tolerance
from morphzoo.mesh.graph import scaled_laplacian, sparse_to_torch
from morphzoo.nn.chebconv import ChebConv
from morphzoo.nn.feature_aggregation import SparseMapping
from morphzoo.nn.sparse import export_form, padded_matmul, padded_rows
from morphzoo.zoo.registry import load_registry
from tests.synthetic import sphere_template

onnx = pytest.importorskip("onnx", reason="the [onnx] extra is missing: pip install -e '.[onnx]'")
onnxruntime = pytest.importorskip("onnxruntime", reason="the [onnx] extra is missing: pip install -e '.[onnx]'")
BUNDLED = [entry.name for entry in load_registry().entries.values() if entry.weights and entry.weights.bundled]


def _dynamic_batch(argument) -> bool:
    return isinstance(argument.shape[0], str)  # a named (symbolic) dimension, not a number


@pytest.mark.parametrize("name", BUNDLED)
@torch.no_grad()
def test_every_bundled_model_exports_and_matches_onnxruntime(name, tmp_path):
    model = morphzoo.load(name)
    report = export_onnx(model, tmp_path / "onnx", name=name)
    assert set(report["graphs"]) == ({"decoder", "encoder"} if model.onnx_encoder else {"decoder"})
    assert json.loads((tmp_path / "onnx" / "export.json").read_text()) == report
    generator = torch.Generator().manual_seed(123)  # not the export's seed: fresh inputs
    latent = model.sample_latent(3, generator).view(3, *model.latent_shape)
    decoder = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert _dynamic_batch(decoder.get_inputs()[0]) and _dynamic_batch(decoder.get_outputs()[0])
    (vertices,) = decoder.run(None, {"latent": latent.numpy()})
    expected = model.decode(latent)
    np.testing.assert_allclose(vertices, expected.numpy(), atol=1e-5, rtol=0)
    if model.onnx_encoder:
        encoder = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx"),
                                               providers=["CPUExecutionProvider"])
        meshes = expected + 0.001 * torch.randn(expected.shape, generator=generator)
        (codes,) = encoder.run(None, {"vertices": meshes.numpy()})
        expected_codes = model.encode(meshes).numpy()
        allowed = parity_tolerance(1e-5, float(np.abs(expected_codes).max()), meshes[0].numel())
        np.testing.assert_allclose(codes, expected_codes, atol=allowed, rtol=0)


def test_an_export_that_misses_the_tolerance_or_an_occupied_folder_leaves_nothing(tmp_path):
    model = morphzoo.load("pca-anny-face")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "strict", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_onnx(model, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["file"]


def test_the_padded_product_is_the_sparse_product():
    generator = torch.Generator().manual_seed(0)
    dense = torch.rand(40, 30, generator=generator) * (torch.rand(40, 30, generator=generator) < 0.15)
    dense[7] = 0  # an empty row
    sparse = dense.to_sparse()
    index, weight = padded_rows(*sparse.indices(), sparse.values(), 40)
    x = torch.randn(30, 5, generator=generator)
    torch.testing.assert_close(padded_matmul(index, weight, x), dense @ x)


def test_the_layers_export_form_equals_their_fast_form():
    template = sphere_template()
    conv = ChebConv(3, 4, K=6, laplacian=sparse_to_torch(scaled_laplacian(template)))
    x = torch.randn(2, template.num_vertices, 3)
    mapping = SparseMapping(torch.rand(10, template.num_vertices) * (torch.rand(10, template.num_vertices) < 0.1))
    fast = conv(x), mapping(x)
    with export_form():
        exported = conv(x), mapping(x)
    for a, b in zip(fast, exported, strict=True):
        torch.testing.assert_close(a, b)


def test_the_parity_bound_is_float32_rounding_of_the_output_sums():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(5, 20_670, generator=generator, dtype=torch.float64) * 0.02  # a body's offsets in metres
    components = torch.nn.functional.normalize(torch.randn(8, 20_670, generator=generator, dtype=torch.float64), dim=1)
    exact = inputs @ components.T
    rounded = (inputs.float() @ components.float().T).double()
    bound = parity_tolerance(0.0, float(exact.abs().max()), inputs.shape[1])
    assert float((rounded - exact).abs().max()) <= bound  # PyTorch's own float32 sum keeps within it
    assert parity_tolerance(1e-5, 1.0, 8) - 1e-5 < 1e-6  # a decoder's 8-entry codes: the tolerance is all but exact
