"""Device-agnostic code paths, checked on a CPU-only machine with PyTorch's meta device (shapes without data): a layer
that made a tensor on the CPU instead of its input's device either raises here or carries the result (or a gradient)
off the model's device, which the test sees; and the CPU-only sparse paths must step aside. Meta is more lenient than
CUDA (it accepts CPU index tensors), so this is a net, not a proof.

Not here: CoMA, Deep3DMM and the locally weighted autoencoder (torch's sparse kernels have no meta form), PCA,
region-PCA and IB-VAE (their input checks read values). CUDA itself: ``tests/nn/test_pointcloud.py`` and
``python benchmarks/speed.py --device cuda`` where a GPU is present.
"""

import pytest
import torch

from morphzoo import methods
from morphzoo.nn import SpiralConv, Upsample
from morphzoo.nn.sparse import cpu_sparse_path
from tests.methods.test_method_suite import LATENT_SIZES, TINY
from tests.synthetic import sphere_template


@pytest.mark.parametrize("name", ["SpiralNetPlusPlus", "Neural3DMM", "LAMM", "DecoupledGAN"])
def test_a_training_step_keeps_every_tensor_on_the_models_device(name):
    template = sphere_template(open_cap=name == "DecoupledGAN")  # the GAN's geometry image needs a boundary
    torch.manual_seed(0)
    model = getattr(methods, name)(template=template, **TINY[name]).to("meta")
    if name == "DecoupledGAN":  # a generator: its decoder is the model
        latent = torch.randn(2, LATENT_SIZES[name], device="meta", requires_grad=True)
        output, target = model.decode_normalised(latent), torch.empty(2, template.num_vertices, 3, device="meta")
    else:
        target = torch.empty(2, template.num_vertices, 3, device="meta")
        output = model.decode_normalised(model.encode_normalised(target))
    assert output.device.type == "meta" and output.shape == target.shape
    torch.nn.functional.l1_loss(output, target).backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]  # the GAN's critic, LAMM's stage 2: none
    assert gradients and all(g.device.type == "meta" for g in gradients)


def test_the_cpu_sparse_paths_are_for_float32_cpu_tensors_outside_autocast():
    x = torch.zeros(2, 3)
    assert cpu_sparse_path(x)
    assert not cpu_sparse_path(x.to("meta")) and not cpu_sparse_path(x.double()) and not cpu_sparse_path(x.half())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_sparse_path(x)


def test_under_cpu_autocast_spirals_and_upsampling_run_in_bfloat16_close_to_float32():
    generator = torch.Generator().manual_seed(0)
    conv = SpiralConv(8, 4, torch.randint(0, 30, (30, 5), generator=generator))
    up = Upsample(torch.randint(0, 10, (30, 3), generator=generator), torch.full((30, 3), 1 / 3))
    coarse = torch.randn(2, 10, 8, generator=generator)
    expected = conv(up(coarse))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = conv(up(coarse))
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("name", ["Deep3DMMSpiral", "Deep3DMMSpectral"])
@pytest.mark.parametrize("form", ["training", "materialised"])
def test_under_cpu_autocast_deep3dmm_runs_its_mappings_in_float32(name, form):
    """torch's CPU sparse kernels have no bfloat16: the feature aggregation (trained or materialised) runs in float32
    under autocast, forward and backward, and the model stays close to its float32 outputs and gradients."""
    torch.manual_seed(0)
    model = getattr(methods, name)(template=sphere_template(), **TINY[name])
    if form == "materialised":
        model.prepare_inference()
    vertices = model.mean + 0.01 * torch.randn(2, model.num_vertices, 3)

    def gradients(autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output = model(vertices)
            output.float().square().sum().backward()
        return output.float(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    expected, expected_gradients = gradients(False)
    output, output_gradients = gradients(True)
    torch.testing.assert_close(output, expected, atol=0.01, rtol=0.05)
    assert len(output_gradients) == len(expected_gradients) > 0
    for got, want in zip(output_gradients, expected_gradients, strict=True):
        assert torch.isfinite(got).all()
        assert (got - want).norm() <= 0.1 * want.norm() + 1e-6
