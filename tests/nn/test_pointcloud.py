import pytest
import torch

from morphzoo.nn import OffsetAttention, PointCloudTransformer, SampleAndGroup, farthest_point_sampling, knn


def brute_force_fps(cloud: list[list[float]], count: int, start: int) -> list[int]:
    """Textbook FPS: scan every point, keep the one whose nearest selected point is farthest (first one on ties)."""
    selected = [start]
    while len(selected) < count:
        best, best_distance = -1, -1.0
        for i, point in enumerate(cloud):
            distance = min(sum((a - b) ** 2 for a, b in zip(point, cloud[s], strict=True)) for s in selected)
            if distance > best_distance:
                best, best_distance = i, distance
        selected.append(best)
    return selected


def randomise_batch_norm(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BatchNorm is not close to the identity."""
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm1d):
            size = norm.num_features
            norm.running_mean.normal_(0, 0.5, generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)
            with torch.no_grad():
                norm.weight.uniform_(0.5, 1.5, generator=generator)
                norm.bias.copy_(0.3 * torch.randn(size, generator=generator))


@pytest.mark.parametrize("start", [None, 7, "per-cloud"])
def test_fps_equals_brute_force(start):
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(3, 50, 3, generator=generator, dtype=torch.float64)
    if start == "per-cloud":
        start = torch.tensor([4, 0, 49])
    indices = farthest_point_sampling(points, 12, start=start)
    starts = torch.as_tensor(0 if start is None else start).expand(3)
    for cloud, cloud_start, cloud_indices in zip(points, starts, indices, strict=True):
        assert cloud_indices.tolist() == brute_force_fps(cloud.tolist(), 12, int(cloud_start))


def test_fps_each_pick_is_farthest_from_the_selected_set():
    points = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(1))
    indices = farthest_point_sampling(points, 40)
    for cloud, cloud_indices in zip(points, indices, strict=True):
        assert len(set(cloud_indices.tolist())) == 40
        distances = torch.cdist(cloud, cloud, compute_mode="donot_use_mm_for_euclid_dist")
        for step in range(1, 40):
            to_selected = distances[:, cloud_indices[:step]].min(dim=1).values
            assert to_selected[cloud_indices[step]] == pytest.approx(to_selected.max().item(), rel=1e-6)


def test_fps_generator_start_is_seeded():
    points = torch.randn(8, 1000, 3, generator=torch.Generator().manual_seed(2))
    first = farthest_point_sampling(points, 16, generator=torch.Generator().manual_seed(5))
    again = farthest_point_sampling(points, 16, generator=torch.Generator().manual_seed(5))
    other = farthest_point_sampling(points, 16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first[:, 0], other[:, 0])
    assert len(set(first[:, 0].tolist())) > 1, "each cloud draws its own start"


def test_fps_rejects_bad_arguments():
    points = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match="cannot select 11 of 10"):
        farthest_point_sampling(points, 11)
    with pytest.raises(ValueError, match="start must lie"):
        farthest_point_sampling(points, 3, start=10)
    with pytest.raises(ValueError, match="either start or generator"):
        farthest_point_sampling(points, 3, start=1, generator=torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fps_same_seed_same_indices_on_cuda():
    points = torch.randn(4, 2000, 3, generator=torch.Generator().manual_seed(3))
    cpu = farthest_point_sampling(points, 64, generator=torch.Generator().manual_seed(9))
    cuda = farthest_point_sampling(points.cuda(), 64, generator=torch.Generator().manual_seed(9))
    assert torch.equal(cpu, cuda.cpu())


def test_knn_equals_brute_force():
    generator = torch.Generator().manual_seed(4)
    points = torch.rand(2, 40, 3, generator=generator, dtype=torch.float64)
    query = torch.rand(2, 7, 3, generator=generator, dtype=torch.float64)
    indices = knn(query, points, 5)
    assert indices.shape == (2, 7, 5)
    for batch in range(2):
        for m in range(7):
            distances = [sum((a - b) ** 2 for a, b in zip(query[batch, m].tolist(), point, strict=True))
                         for point in points[batch].tolist()]
            assert indices[batch, m].tolist() == sorted(range(40), key=distances.__getitem__)[:5]


def test_knn_of_a_cloud_point_starts_with_itself():
    points = torch.randn(3, 100, 3, generator=torch.Generator().manual_seed(5))
    centres = torch.tensor([[0, 50, 99], [1, 2, 3], [97, 13, 40]])
    query = torch.stack([cloud[index] for cloud, index in zip(points, centres, strict=True)])
    assert torch.equal(knn(query, points, 4)[..., 0], centres)
    with pytest.raises(ValueError, match="101 neighbours among 100"):
        knn(query, points, 101)


def test_sample_and_group_equals_the_concatenated_form():
    generator = torch.Generator().manual_seed(6)
    xyz, features = torch.randn(2, 60, 3, generator=generator), torch.randn(2, 60, 5, generator=generator)
    layer = SampleAndGroup(5, 8, sample_count=10, neighbours=4)
    centres, out = layer(xyz, features, start=3)
    assert out.shape == (2, 10, 8)

    index = farthest_point_sampling(xyz, 10, start=3)
    rows = torch.arange(2)[:, None]
    assert torch.equal(centres, xyz[rows, index])
    neighbours = features[rows[..., None], knn(centres, xyz, 4)]  # (B, 10, 4, 5)
    centre_features = features[rows, index][:, :, None].expand(-1, -1, 4, -1)
    grouped = torch.cat([neighbours - centre_features, centre_features], dim=-1)  # (B, 10, 4, 10)
    expected = layer.lbr2(layer.lbr1(grouped)).amax(dim=2)
    torch.testing.assert_close(out, expected)


def test_offset_attention_columns_sum_to_one_after_the_row_softmax():
    generator = torch.Generator().manual_seed(7)
    layer = OffsetAttention(16)
    x = torch.randn(3, 20, 16, generator=generator)
    attention = layer.attention(x)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3, 20))
    query = torch.einsum("bnc,dc->bnd", x, layer.query_key.weight)
    energy = torch.einsum("bid,bjd->bij", query, query)
    row_softmax = energy.exp() / energy.exp().sum(dim=2, keepdim=True)
    torch.testing.assert_close(attention, row_softmax / row_softmax.sum(dim=1, keepdim=True))


def test_offset_attention_forward_follows_the_formula():
    generator = torch.Generator().manual_seed(8)
    layer = OffsetAttention(16)
    randomise_batch_norm(layer, generator)
    layer.eval()
    x = torch.randn(2, 12, 16, generator=generator)
    attention = layer.attention(x)
    value = x @ layer.value.weight.T
    # x_r[j] = sum_i A[i, j] v[i], written as an explicit sum over the attending points i.
    attended = sum(attention[:, i, :, None] * value[:, i, None, :] for i in range(12))
    norm = layer.offset.norm
    offset = (x - attended) @ layer.offset.linear.weight.T
    offset = (offset - norm.running_mean) / (norm.running_var + norm.eps).sqrt() * norm.weight + norm.bias
    torch.testing.assert_close(layer(x), x + offset.clamp(min=0))


def test_offset_attention_shape_and_gradients():
    layer = OffsetAttention(32)
    x = torch.randn(2, 25, 32, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 25, 32)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="divisible by 4"):
        OffsetAttention(30)


def test_point_cloud_transformer_shapes_and_gradients():
    torch.manual_seed(0)
    net = PointCloudTransformer(sample_counts=(64, 32), neighbours=8)
    points = torch.randn(3, 200, 3, requires_grad=True)
    out = net(points)
    assert out.shape == (3, 1024)
    out.sum().backward()
    assert points.grad is not None and points.grad.abs().sum() > 0
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_point_cloud_transformer_is_invariant_to_point_order():
    """Permute each cloud and pass, as the FPS start, the new index of the point that started the unpermuted run.

    Every later step (FPS picks, kNN groups, max over groups and points, attention over centres, BatchNorm over all
    points) depends on the points' positions only, so the output must match. Eval-mode BatchNorm with non-trivial
    statistics keeps the comparison free of batch-statistic reductions summed in another order.
    """
    generator = torch.Generator().manual_seed(9)
    net = PointCloudTransformer(sample_counts=(64, 32), neighbours=8)
    randomise_batch_norm(net, generator)
    net.eval()
    points = torch.randn(2, 200, 3, generator=generator)
    permutation = torch.stack([torch.randperm(200, generator=generator) for _ in range(2)])
    permuted = points[torch.arange(2)[:, None], permutation]
    new_position_of_start = permutation.argsort(dim=1)[:, 0]
    with torch.no_grad():
        reference = net(points)  # starts at point 0
        torch.testing.assert_close(net(permuted, start=new_position_of_start), reference, rtol=1e-4, atol=1e-5)
        # The control: starting the permuted clouds at their own index 0 is a different start point.
        assert not torch.allclose(net(permuted), reference, rtol=1e-4, atol=1e-5)


def test_point_cloud_transformer_seeded_start_is_reproducible():
    torch.manual_seed(1)
    net = PointCloudTransformer(sample_counts=(64, 32), neighbours=8).eval()
    points = torch.randn(2, 150, 3)
    with torch.no_grad():
        first = net(points, generator=torch.Generator().manual_seed(3))
        again = net(points, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_point_cloud_transformer_small_clouds_need_smaller_sample_counts():
    with pytest.raises(ValueError, match="pass smaller sample_counts"):
        PointCloudTransformer()(torch.randn(2, 200, 3))
    with pytest.raises(ValueError, match="must not increase"):
        PointCloudTransformer(sample_counts=(32, 64))
