"""Device-agnostic code paths, checked on a CPU-only machine with PyTorch's meta device (shapes without data): a layer
that made a tensor on the CPU instead of its input's device either raises here or carries the result (or a gradient)
off the model's device, which the test sees; and the CPU-only sparse paths must step aside. Meta is more lenient than
CUDA (it accepts CPU index tensors), so this is a net, not a proof.

Not here: CoMA, Deep3DMM and the locally weighted autoencoder (torch's sparse kernels have no meta form), PCA,
region-PCA and IB-VAE (their input checks read values). For those, the autocast tests below record the dtypes every
sparse kernel receives (a dispatch mode sees them after autocast's casts): CUDA's have no half precision. CUDA itself:
``tests/nn/test_pointcloud.py`` and ``python benchmarks/speed.py --device cuda`` where a GPU is present.
"""

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from morphzoo import methods
from morphzoo.nn import SpiralConv, Upsample
from morphzoo.nn.sparse import cpu_sparse_path
from tests.methods.test_method_suite import LATENT_SIZES, TINY
from tests.synthetic import sphere_template

HALF = (torch.float16, torch.bfloat16)


class SparseKernelDtypes(TorchDispatchMode):
    """Records every kernel call: whether it has a sparse operand, and the dtypes of all its tensor operands."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, set[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in pytree.tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        self.calls.append((any(t.layout != torch.strided for t in tensors), {t.dtype for t in tensors}))
        return func(*args, **(kwargs or {}))

    def sparse_calls(self, half: bool) -> int:
        return sum(sparse and bool(dtypes & set(HALF)) == half for sparse, dtypes in self.calls)

    def dense_half_calls(self) -> int:
        return sum(not sparse and bool(dtypes & set(HALF)) for sparse, dtypes in self.calls)


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


@pytest.mark.parametrize("name", ["CoMA", "Deep3DMMSpectral", "Deep3DMMSpiral", "LocallyWeightedAutoencoder"])
def test_under_autocast_no_sparse_kernel_receives_half_precision(name):
    """Forward and backward inside the autocast block (as under Lightning's manual optimisation): the Chebyshev
    Laplacians, QEM and learned mappings get float32 operands, though the dense layers around them run in bfloat16."""
    torch.manual_seed(0)
    model = getattr(methods, name)(template=sphere_template(), **TINY[name])
    if name == "LocallyWeightedAutoencoder":  # its weights come from the data's NMF when fitted
        model.set_local_weights(torch.rand(model.local_weights.shape))
    vertices = model.mean + 0.01 * torch.randn(2, model.num_vertices, 3)
    recorder = SparseKernelDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
        output = model(vertices)
        output.float().square().sum().backward()
    assert recorder.dense_half_calls() > 0  # autocast reached the dense layers
    assert recorder.sparse_calls(half=False) > 0 and recorder.sparse_calls(half=True) == 0


def test_the_gans_geometry_image_and_laplacian_take_half_precision_inputs_in_float32():
    torch.manual_seed(0)
    model = methods.DecoupledGAN(template=sphere_template(open_cap=True), **TINY["DecoupledGAN"])
    latent = torch.randn(2, LATENT_SIZES["DecoupledGAN"])
    recorder = SparseKernelDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
        meshes = model.decode_normalised(latent)
        assert meshes.dtype in HALF
        loss = model.critic_input(meshes).float().mean() + model.laplacian_energy(meshes).float()
        loss.backward()
    assert recorder.sparse_calls(half=False) >= 2 and recorder.sparse_calls(half=True) == 0
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_latent_gaussian_is_fitted_and_loaded_on_the_models_device():
    template = sphere_template()
    model = methods.SpiralNetPlusPlus(template=template, **TINY["SpiralNetPlusPlus"])
    model.fit_latent_distribution(model.mean + 0.01 * torch.randn(40, template.num_vertices, 3))
    on_meta = methods.SpiralNetPlusPlus(template=template, **TINY["SpiralNetPlusPlus"]).to("meta")
    on_meta.load_state_dict(model.state_dict())  # a CPU checkpoint into a model already moved
    assert on_meta.latent_mean.device.type == on_meta.latent_cholesky.device.type == "meta"
    fitted_on_meta = methods.SpiralNetPlusPlus(template=template, **TINY["SpiralNetPlusPlus"]).to("meta")
    fitted_on_meta.encode = fitted_on_meta.encode_normalised  # meta has no values for encode's input checks
    fitted_on_meta.fit_latent_distribution(torch.empty(40, template.num_vertices, 3, device="meta"))
    assert fitted_on_meta.latent_cholesky.device.type == "meta"
    assert fitted_on_meta.latent_cholesky.shape == model.latent_cholesky.shape


def test_lamms_manipulation_pairs_without_labels_stay_on_the_models_device():
    model = methods.LAMM(template=sphere_template(), **TINY["LAMM"]).to("meta")
    targets, displacements = model.manipulation_batch(torch.empty(4, model.num_vertices, 3, device="meta"), 1.0)
    assert targets.device.type == displacements.device.type == "meta"


def test_the_float32_sparse_product_under_autocast_differentiates_as_the_dense_one():
    from morphzoo.nn.sparse import float32_sparse_mm

    generator = torch.Generator().manual_seed(0)
    pattern = torch.rand(6, 5, generator=generator) < 0.4
    dense_matrix = torch.randn(6, 5, generator=generator, dtype=torch.float64) * pattern
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast on: the product takes its autograd Function
        assert torch.autograd.gradcheck(lambda x: float32_sparse_mm(dense_matrix.to_sparse(), x), (x,))
        assert torch.autograd.gradgradcheck(lambda x: float32_sparse_mm(dense_matrix.to_sparse(), x), (x,))
        half = float32_sparse_mm(dense_matrix.float().to_sparse(), x.detach().bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), dense_matrix @ x.detach(), atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="constant"):
        float32_sparse_mm(dense_matrix.to_sparse().requires_grad_(), x)
