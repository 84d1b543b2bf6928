import copy

import numpy as np
import pytest
import torch
import trimesh

from morphzoo.mesh.graph import edge_index, scaled_laplacian, sparse_to_torch
from morphzoo.mesh.sampling import mesh_hierarchy
from morphzoo.mesh.template import Template
from morphzoo.methods import CoMA, SpiralNetPlusPlus
from morphzoo.methods.coma import SETTINGS
from morphzoo.nn import ChebConv, Downsample, SpiralConv, Upsample
from tests.synthetic import sphere_collection, sphere_template


def grid_template(side: int) -> Template:
    """A flat side×side grid (an open mesh), z given a gentle bump so QEM has geometry to work with."""
    u, v = np.meshgrid(np.linspace(0, 0.2, side), np.linspace(0, 0.2, side), indexing="ij")
    vertices = np.stack([u, v, 0.02 * np.sin(8 * u) * np.cos(6 * v)], -1).reshape(-1, 3)
    idx = np.arange(side * side).reshape(side, side)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return Template(vertices=vertices, faces=faces, name=f"grid{side}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_chebconv_equals_pytorch_geometric():
    from torch_geometric.nn import ChebConv as PygChebConv

    template = sphere_template(3)
    ours = ChebConv(4, 5, K=6, laplacian=sparse_to_torch(scaled_laplacian(template)))
    reference = PygChebConv(4, 5, K=6, normalization="sym")
    with torch.no_grad():
        for k, linear in enumerate(reference.lins):
            linear.weight.copy_(ours.weight[k].T)
        reference.bias.copy_(torch.randn(5))
        ours.bias.copy_(reference.bias)
    x = torch.randn(3, template.num_vertices, 4)
    edges = torch.from_numpy(edge_index(template))
    expected = torch.stack([reference(x_i, edges, lambda_max=torch.tensor(2.0)) for x_i in x])
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)
    assert count_parameters(ours) == count_parameters(reference)


def spiral_formula(conv: SpiralConv, x: torch.Tensor) -> torch.Tensor:
    """x'_i = W ‖_{j∈S(i)} x_j + b, written per vertex (the dummy vertex, where used, is zero)."""
    padded = torch.cat([x, x.new_zeros(len(x), 1, x.shape[2])], 1) if conv.pad_with_dummy else x
    gathered = torch.stack([torch.cat([padded[:, j] for j in spiral], -1) for spiral in conv.spirals], 1)
    return conv.linear(gathered)


@pytest.mark.parametrize("pad_with_dummy", [False, True])
@pytest.mark.parametrize("in_channels, out_channels, bias", [(4, 6, True), (6, 4, True), (5, 5, False)])
def test_spiralconv_is_the_spiral_formula_in_every_form(pad_with_dummy, in_channels, out_channels, bias, monkeypatch):
    """The per-vertex formula, on the CPU's sparse path (gather first for C_out > C_in, multiply first otherwise) in
    cache-sized blocks (forced to one mesh here), in one pass and without autograd, on the plain path (float64, as on
    CUDA) and in the export form, with the same gradients for x, W and b."""
    from morphzoo.nn import spiralconv
    from morphzoo.nn.sparse import export_form

    generator = torch.Generator().manual_seed(0)
    vertices, length, batch = 30, 5, 7
    spirals = torch.randint(0, vertices + pad_with_dummy, (vertices, length), generator=generator)
    conv = SpiralConv(in_channels, out_channels, spirals, pad_with_dummy=pad_with_dummy, bias=bias)
    assert conv.patterns().multiply_first == (out_channels <= in_channels)
    # a transposed view: the layer must not rely on its input's layout
    x = torch.randn(vertices, batch, in_channels, generator=generator).transpose(0, 1).requires_grad_(True)
    parameters = [x, *conv.parameters()]
    expected = spiral_formula(conv, x)
    expected_grads = torch.autograd.grad(expected.square().sum(), parameters)

    def check(form: str, output: torch.Tensor, inputs: list[torch.Tensor] | None = None) -> None:
        torch.testing.assert_close(output.float(), expected, atol=1e-5, rtol=1e-5, msg=form)
        if inputs is not None:  # the backward runs here, under the same block size as the forward
            grads = torch.autograd.grad(output.square().sum(), inputs)
            for name, grad, expected_grad in zip(("x", "W", "b"), grads, expected_grads, strict=False):
                torch.testing.assert_close(grad.float(), expected_grad, atol=1e-4, rtol=1e-5, msg=f"{form}: d{name}")

    monkeypatch.setattr(spiralconv, "CPU_BLOCK_BYTES", 1)  # one mesh per block
    check("blocks", conv(x), parameters)
    monkeypatch.setattr(spiralconv, "CPU_BLOCK_BYTES", 2**30)
    check("one pass", conv(x), parameters)
    with torch.no_grad():
        check("one pass, no autograd", conv(x))
    with export_form():
        check("export", conv(x), parameters)
    double = copy.deepcopy(conv).double()
    x_double = x.detach().double().requires_grad_(True)
    check("plain path", double(x_double), [x_double, *double.parameters()])


@pytest.mark.parametrize("in_channels, out_channels", [(4, 6), (6, 4)])
def test_spiralconv_gradients_when_only_some_inputs_need_them(in_channels, out_channels):
    """A first layer (its input needs no gradient) and a frozen layer (fitting a code through a fixed decoder)."""
    generator = torch.Generator().manual_seed(0)
    conv = SpiralConv(in_channels, out_channels, torch.randint(0, 30, (30, 5), generator=generator))
    data = torch.randn(3, 30, in_channels, generator=generator)
    (weight_grad,) = torch.autograd.grad(conv(data).square().sum(), conv.linear.weight)
    (expected,) = torch.autograd.grad(spiral_formula(conv, data).square().sum(), conv.linear.weight)
    torch.testing.assert_close(weight_grad, expected, atol=1e-4, rtol=1e-5)
    conv.requires_grad_(False)
    x = data.clone().requires_grad_(True)
    (x_grad,) = torch.autograd.grad(conv(x).square().sum(), x)
    (expected,) = torch.autograd.grad(spiral_formula(conv, x).square().sum(), x)
    torch.testing.assert_close(x_grad, expected, atol=1e-4, rtol=1e-5)


def test_spiralconv_inference_follows_weight_updates():
    """Inference keeps a rearranged weight between calls: optimiser steps, load_state_dict, a move to another dtype
    and back, and a reparametrised weight (a new tensor at every access) must all reach it; so must a layer built in
    inference mode (its tensors have no version counter)."""
    generator = torch.Generator().manual_seed(0)
    conv = SpiralConv(6, 4, torch.randint(0, 30, (30, 5), generator=generator))  # multiply first: C_out <= C_in
    x = torch.randn(3, 30, 6, generator=generator)

    def check() -> None:
        with torch.inference_mode():
            torch.testing.assert_close(conv(x), spiral_formula(conv, x), atol=1e-5, rtol=1e-5)

    check()
    optimiser = torch.optim.SGD(conv.parameters(), lr=0.1)
    conv(x).square().sum().backward()
    optimiser.step()
    check()
    conv.load_state_dict({name: torch.randn_like(value) if name == "linear.weight" else value
                          for name, value in conv.state_dict().items()})
    check()
    conv.double()
    with torch.no_grad():
        conv.linear.weight.mul_(-1)
    conv.float()
    check()
    torch.nn.utils.parametrizations.weight_norm(conv.linear)
    check()
    with torch.no_grad():
        conv.linear.parametrizations.weight.original1.mul_(-1.5)
    check()
    with torch.inference_mode():
        built_in_inference = SpiralConv(6, 4, conv.spirals)
        torch.testing.assert_close(built_in_inference(x), spiral_formula(built_in_inference, x), atol=1e-5, rtol=1e-5)


def test_spiral_and_sampling_layers_refuse_inputs_they_were_not_built_for():
    spirals = torch.randint(0, 10, (10, 4), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"indices in \[0, 10\)"):
        SpiralConv(3, 4, torch.cat([spirals[:-1], torch.full((1, 4), 10)]))  # the dummy index without its padding
    with pytest.raises(ValueError, match="indices in"):
        SpiralConv(3, 4, spirals - 1)
    conv = SpiralConv(3, 4, spirals)
    for bad in (torch.randn(2, 12, 3), torch.randn(2, 10, 5)):
        with pytest.raises(ValueError, match=r"expected x of shape \(batch, 10, 3\)"):
            conv(bad)
    up = Upsample(torch.tensor([[0, 1, 5]] * 8), torch.full((8, 3), 1 / 3))
    with pytest.raises(ValueError, match="at least 6"):
        up(torch.randn(2, 4, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # CPU sparse path / gather path (as on CUDA)
def test_pooling_layers_apply_the_sampling_matrices(dtype):
    template = sphere_template(3)
    level = mesh_hierarchy(template, [4]).levels[0]
    x = torch.randn(2, template.num_vertices, 3, dtype=dtype)
    coarse = Downsample(level.down_index)(x)
    expected = np.stack([level.down_matrix() @ x_i.numpy() for x_i in x])
    np.testing.assert_allclose(coarse.numpy(), expected, atol=1e-6)
    fine = Upsample(level.up_index, level.up_weight)(coarse)
    expected = np.stack([level.up_matrix() @ c.numpy() for c in coarse])
    np.testing.assert_allclose(fine.numpy(), expected, atol=1e-5)
    # training's gradients (Upsample's sparse backward, Downsample's index_select) are Uᵀ g and Dᵀ g
    x.requires_grad_(True)
    g = torch.randn(2, template.num_vertices, 3, dtype=dtype)
    (grad,) = torch.autograd.grad((Upsample(level.up_index, level.up_weight)(Downsample(level.down_index)(x)) * g)
                                  .sum(), x)
    up, down = level.up_matrix(), level.down_matrix()
    expected = np.stack([down.T @ (up.T @ g_i.numpy()) for g_i in g])
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("setting, expected", [("simple", 30_056), ("wider", 179_656)])
def test_coma_parameter_counts_match_deep3dmm_table_2(setting, expected):
    template = grid_template(71)  # 5041 vertices -> 1261 -> 316 -> 79 -> 20, the CoMA template's coarsest size
    model = CoMA(template=template, latent_dim=8, **SETTINGS[setting])
    assert model.level_sizes[-1] == 20
    assert count_parameters(model) == expected


def test_spiralnet_parameter_count_matches_the_reference_port():
    # The MIT SpiralNet++ port has 154,899 parameters on the CoMA template (performance-anchors.md); only the
    # coarsest level's size (20 vertices) enters the count.
    model = SpiralNetPlusPlus(template=grid_template(71))
    assert model.level_sizes[-1] == 20
    assert count_parameters(model) == 154_899


@pytest.mark.parametrize(
    "model_class, channels",
    [(CoMA, {"encoder_channels": (16, 16, 32), "decoder_channels": (32, 16, 16, 16)}),
     (SpiralNetPlusPlus, {"encoder_channels": (32, 32, 64), "spiral_dilation": (1, 1, 1)})],
)
def test_models_overfit_a_handful_of_meshes(model_class, channels):
    collection = sphere_collection(identities=2, expressions=2, frames=4)
    vertices = torch.from_numpy(collection.vertices)
    mean, std = vertices.mean(0), vertices.std(0).clamp_min(1e-5)
    torch.manual_seed(0)
    # three levels: the 642-vertex sphere's fourth level would have only 3 vertices
    model = model_class(template=collection.template, mean=mean, std=std, sampling_factors=(4, 4, 4), **channels)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(500):
        optimiser.zero_grad()
        x = model.normalise(vertices)
        torch.nn.functional.l1_loss(model.decode_normalised(model.encode_normalised(x)), x).backward()
        optimiser.step()
    with torch.no_grad():
        error = (model(vertices) - vertices).norm(dim=-1).mean()
    mean_shape_error = (mean - vertices).norm(dim=-1).mean()
    assert error < 0.2 * mean_shape_error, (error, mean_shape_error)


def test_trimesh_icosphere_is_closed():
    # The synthetic test data relies on a closed, consistently oriented sphere.
    assert trimesh.creation.icosphere(subdivisions=2).is_watertight


def _linear_maps(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def test_initialisation_follows_each_reference_implementation():
    """SpiralNet++'s code: Xavier-uniform on every weight, fully connected layers included, zero biases. Neural3DMM's:
    PyTorch's Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases. The two differ in spread, so
    each weight's standard deviation tells them apart (a uniform on [-a, a] has std a / sqrt(3))."""
    from morphzoo.methods import Neural3DMM

    template = sphere_template(3)
    torch.manual_seed(0)
    spiralnet = SpiralNetPlusPlus(template=template, latent_dim=8, encoder_channels=(16, 16, 32),
                                  spiral_dilation=(1, 1, 1), sampling_factors=(4, 4, 4))
    neural3dmm = Neural3DMM(template=template, latent_dim=8, encoder_channels=(16, 16, 32),
                            decoder_channels=(32, 16, 16, 16), spiral_rings=(1, 1, 1), spiral_dilation=(1, 1, 1),
                            sampling_factors=(4, 4, 4))
    for name, linear in _linear_maps(spiralnet):
        fan_out, fan_in = linear.weight.shape
        xavier = (6 / (fan_in + fan_out)) ** 0.5
        assert linear.weight.abs().max() <= xavier and abs(linear.weight.std() / (xavier / 3**0.5) - 1) < 0.15, name
        assert linear.bias is None or not linear.bias.any(), name
    for name, linear in _linear_maps(neural3dmm):
        bound = linear.weight.shape[1] ** -0.5
        assert abs(linear.weight.std() / (bound / 3**0.5) - 1) < 0.15, name
        assert linear.bias is None or (linear.bias.abs().max() <= bound and linear.bias.any()), name
