"""The decoupling metric's embedding networks (morphzoo.zoo.embedding): label subsets, validation pairs, training on
an open height-field grid with identities and expressions, the cache and the decoupling scores."""

import json
import math

import numpy as np
import pytest
import torch

from morphzoo.data import AnnyFaceDataModule
from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection
from morphzoo.mesh.template import Template
from morphzoo.zoo import embedding as embedding_module
from morphzoo.zoo.embedding import (
    EmbeddingCacheError,
    decoupling_scores,
    decoupling_unavailable,
    labelled_meshes,
    load_or_train_embedding,
    read_embedding,
    read_meshes,
    train_embedding,
    training_options,
    verification_pairs,
)
from tests.synthetic import BU3DFELikeDataModule, SphereDataModule, cache_entries

FAST = {"epochs": 30, "validation_pairs": 500, "image_size": 32}  # at most 90 small batches: seconds


def grid_collection(identities: int = 4, expressions: int = 3, frames: int = 8, points: int = 12,
                    seed: int = 0) -> MeshCollection:
    """An open 10 cm square height field (a harmonic UV map needs a boundary): each identity is a sum of three random
    bumps (up to 1 cm), each expression a bump of its own that rises and falls over a sequence of ``frames``, with an
    ``intensity`` label (0 neutral .. 1 peak) as anny-face has."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(-1, 1, points), np.linspace(-1, 1, points))
    plane = np.stack([u.ravel(), v.ravel()], 1)
    corner = (np.arange(points - 1)[:, None] * points + np.arange(points - 1)[None]).ravel()
    faces = np.concatenate([np.stack([corner, corner + 1, corner + points], 1),
                            np.stack([corner + 1, corner + points + 1, corner + points], 1)])

    def bumps(centres: np.ndarray, width: float) -> np.ndarray:  # (K, 2) -> (K, V)
        return np.exp(-((plane[None] - centres[:, None]) ** 2).sum(-1) / width**2)

    centres, amplitudes = rng.uniform(-1, 1, (identities * 3, 2)), rng.uniform(-1, 1, (identities, 3, 1))
    identity = (amplitudes * bumps(centres, 0.6).reshape(identities, 3, -1)).sum(1)
    expression = bumps(rng.uniform(-0.8, 0.8, (expressions, 2)), 0.35)
    envelope = np.sin(np.linspace(0, np.pi, frames))
    i, e, f = (grid.ravel() for grid in np.meshgrid(np.arange(identities), np.arange(expressions),
                                                    np.arange(frames), indexing="ij"))
    height = 0.01 * identity[i] + 0.02 * envelope[f, None] * expression[e]
    vertices = np.concatenate([np.broadcast_to(0.05 * plane, (len(i), *plane.shape)), height[..., None]], -1)
    rest = np.concatenate([0.05 * plane, np.zeros((len(plane), 1))], 1)
    return MeshCollection(
        vertices=vertices.astype(np.float32), template=Template(vertices=rest, faces=faces, name="grid"),
        labels={"identity": i, "expression": e, "frame": f, "intensity": envelope[f].astype(np.float32)},
        vocabularies={"identity": tuple(f"s{k}" for k in range(identities)),
                      "expression": tuple(f"e{k}" for k in range(expressions))},
        attributes={"generator": "test-grid", "seed": seed})


class GridDataModule(MeshDataModule):
    def __init__(self, split: str = "random", test_size: float = 0.25, **kwargs) -> None:
        super().__init__(split=split, test_size=test_size, **kwargs)

    def load_collection(self) -> MeshCollection:
        return grid_collection()


@pytest.fixture(scope="module")
def grid() -> GridDataModule:
    return GridDataModule()


# -- label subsets and validation pairs --------------------------------------------------------------------------------


def test_expression_meshes_are_the_intense_ones_unless_the_data_has_levels(grid):
    train = grid.split_indices["train"]
    assert np.array_equal(labelled_meshes(grid, "identity", "train"), train)
    intense = labelled_meshes(grid, "expression", "train")
    assert np.array_equal(intense, train[grid.collection.labels["intensity"][train] >= 0.5])
    assert 0 < len(intense) < len(train)
    unlabelled = GridDataModule()
    unlabelled.collection.labels["identity"][train[:5]] = -1
    assert np.array_equal(labelled_meshes(unlabelled, "identity", "train"), train[5:])
    bu3dfe = BU3DFELikeDataModule(subjects=3, subdivisions=1)  # level labels, neutral as expression 0: every mesh
    assert np.array_equal(labelled_meshes(bu3dfe, "expression", "test"), bu3dfe.split_indices["test"])
    bu3dfe.collection.labels["intensity"] = bu3dfe.collection.labels["level"] / 4  # as anny-bu3dfe: level wins
    assert np.array_equal(labelled_meshes(bu3dfe, "expression", "test"), bu3dfe.split_indices["test"])


def test_labelled_meshes_names_missing_labels_and_unknown_factors(grid):
    data = SphereDataModule()
    del data.collection.labels["expression"]
    with pytest.raises(ValueError, match="no 'expression' labels"):
        labelled_meshes(data, "expression", "train")
    with pytest.raises(ValueError, match="unknown factor 'pose'"):
        labelled_meshes(grid, "pose", "train")


def test_verification_pairs_are_positive_and_negative_as_labelled():
    labels = np.random.default_rng(0).integers(0, 5, 40)
    labels[labels == 4] = 3
    labels[0] = 4  # a class of one: never an anchor of a positive pair, never its own partner
    positive, negative = verification_pairs(labels, 300, seed=1)
    assert positive.shape == negative.shape == (300, 2)
    assert (labels[positive[:, 0]] == labels[positive[:, 1]]).all() and (positive[:, 0] != positive[:, 1]).all()
    assert (labels[negative[:, 0]] != labels[negative[:, 1]]).all()
    assert len(np.unique(negative)) == 40  # every mesh takes part
    assert np.array_equal(verification_pairs(labels, 300, seed=1)[0], positive)  # seeded
    with pytest.raises(ValueError, match="1 class"):
        verification_pairs(np.zeros(5, dtype=np.int64), 10, seed=0)


def test_decoupling_is_unavailable_without_labels_or_validation_pairs(grid):
    assert decoupling_unavailable(grid) is None
    held_out = GridDataModule(split="extrapolation", held_out_expression="e1")  # one test expression: no negatives
    assert decoupling_unavailable(held_out).startswith("expression: the test meshes fall in 1 class(es)")
    with pytest.raises(ValueError, match="decoupling_scores: expression: the test meshes fall in 1 class"):
        decoupling_scores(refuse_training, held_out)
    unlabelled = GridDataModule()
    del unlabelled.collection.labels["identity"]
    assert "no 'identity' labels" in decoupling_unavailable(unlabelled)
    assert "has no boundary" in decoupling_unavailable(SphereDataModule())  # closed, without UVs: no geometry image


def test_read_meshes_keeps_the_requested_order_and_repeats(grid):
    indices = np.array([5, 2, 5, 0])
    assert torch.equal(read_meshes(grid.collection, indices), torch.from_numpy(grid.collection.vertices[indices]))


# -- training ----------------------------------------------------------------------------------------------------------


def test_identity_embedding_separates_held_out_identities(grid):
    trained = train_embedding(grid, "identity", **FAST)
    assert trained.num_classes == 4 and trained.num_train_meshes == len(grid.split_indices["train"])
    assert trained.accuracy > 0.8 and trained.far < 0.1
    # fresh pairs of the held-out (test) meshes, judged at the chosen threshold
    test = grid.split_indices["test"]
    positive, negative = verification_pairs(grid.collection.labels["identity"][test], 1000, seed=7)
    embeddings = trained.embed(read_meshes(grid.collection, test))
    same = [(embeddings[p[:, 0]] - embeddings[p[:, 1]]).norm(dim=-1) < trained.threshold for p in (positive, negative)]
    accuracy = (float(same[0].double().mean()) + 1 - float(same[1].double().mean())) / 2
    assert accuracy > 0.8, accuracy


def test_training_is_seeded_works_under_no_grad_and_leaves_the_global_rng_alone(grid):
    state = torch.random.get_rng_state()
    first = train_embedding(grid, "identity", epochs=1, validation_pairs=50)
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.no_grad():  # as inside evaluate_model: training switches gradients back on
        second = train_embedding(grid, "identity", epochs=1, validation_pairs=50)
    assert all(torch.equal(a, b) for a, b in zip(first.network.state_dict().values(),
                                                   second.network.state_dict().values(), strict=True))
    assert first.threshold == second.threshold


# -- cache -------------------------------------------------------------------------------------------------------------


def counting_trainer(monkeypatch) -> list:
    """Replace train_embedding by a wrapper that records its calls."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return train_embedding(*args, **kwargs)

    monkeypatch.setattr(embedding_module, "train_embedding", wrapper)
    return calls


def refuse_training(*args, **kwargs):
    raise AssertionError("the cached embedding should have been used")


def test_the_cache_returns_the_same_embedding_without_retraining(grid, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    calls = counting_trainer(monkeypatch)
    first = load_or_train_embedding(grid, "identity", epochs=1, validation_pairs=50)
    assert len(calls) == 1
    folders = cache_entries(tmp_path / "embeddings")
    assert len(folders) == 1 and {p.name for p in folders[0].iterdir()} == {"model.safetensors", "config.json"}
    config = json.loads((folders[0] / "config.json").read_text())
    assert config["threshold"] == first.threshold and config["options"]["epochs"] == 1

    monkeypatch.setattr(embedding_module, "train_embedding", refuse_training)
    second = load_or_train_embedding(grid, "identity", epochs=1, validation_pairs=50)
    assert (second.threshold, second.accuracy, second.far) == (first.threshold, first.accuracy, first.far)
    assert (second.num_train_meshes, second.num_classes) == (first.num_train_meshes, first.num_classes)
    assert all(torch.equal(a, b) for a, b in zip(first.network.state_dict().values(),
                                                   second.network.state_dict().values(), strict=True))
    meshes = read_meshes(grid.collection, np.arange(6))
    assert torch.equal(first.embed(meshes), second.embed(meshes))


def test_other_options_or_factors_are_other_cache_entries(grid, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    calls = counting_trainer(monkeypatch)
    load_or_train_embedding(grid, "identity", epochs=1, validation_pairs=50)
    load_or_train_embedding(grid, "identity", epochs=1, validation_pairs=50, margin=0.3)
    load_or_train_embedding(grid, "expression", epochs=1, validation_pairs=50)
    assert len(calls) == 3 and len(cache_entries(tmp_path / "embeddings")) == 3
    with pytest.raises(TypeError):
        training_options(epoch=3)  # a misspelt option is an error, not a new cache entry


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_config", "bad_json"])
def test_a_corrupt_cache_entry_is_reported_and_retrained(grid, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    calls = counting_trainer(monkeypatch)
    first = load_or_train_embedding(grid, "identity", epochs=1, validation_pairs=50)
    (folder,) = cache_entries(tmp_path / "embeddings")
    weights, config = folder / "model.safetensors", folder / "config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete_config":
        config.unlink()
    else:
        config.write_text("{not json")
    named = weights if damage in ("truncate", "flip") else folder
    with pytest.raises(EmbeddingCacheError, match=str(named).replace(".", r"\.")):
        read_embedding(folder, grid, "identity", training_options(epochs=1, validation_pairs=50))
    with pytest.warns(UserWarning, match=f"retraining the cached embedding: {folder}"):
        again = load_or_train_embedding(grid, "identity", epochs=1, validation_pairs=50)
    assert len(calls) == 2 and again.threshold == first.threshold
    monkeypatch.setattr(embedding_module, "train_embedding", refuse_training)
    assert load_or_train_embedding(grid, "identity", epochs=1, validation_pairs=50).threshold == first.threshold


# -- decoupling scores -------------------------------------------------------------------------------------------------


def fake_sample_sharing(data: MeshDataModule, copies: bool):
    """A stand-in for ``MorphableModel.sample_sharing`` drawing dataset meshes: each group either one mesh repeated
    (perfect decoupling) or a reference with meshes of *other* classes of the shared factor (none shares it)."""
    vertices = torch.from_numpy(np.asarray(data.collection.vertices))

    def sample_sharing(factor: str, groups: int, per_group: int, generator: torch.Generator) -> torch.Tensor:
        pool = labelled_meshes(data, factor, "test")
        labels = data.collection.labels[factor]
        rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
        reference = rng.choice(pool, groups)
        if copies:
            return vertices[reference][:, None].expand(groups, per_group, *vertices.shape[1:])
        others = [rng.choice(pool[labels[pool] != labels[r]], per_group - 1) for r in reference]
        return vertices[np.concatenate([reference[:, None], np.stack(others)], 1)]

    return sample_sharing


def test_decoupling_scores_are_perfect_for_copies_and_low_for_unrelated_meshes(grid):
    perfect = decoupling_scores(fake_sample_sharing(grid, copies=True), grid, n=10, m=10, groups_per_call=4, **FAST)
    assert set(perfect) == {f"decoupling/{factor}_{name}" for factor in ("identity", "expression")
                            for name in ("percent", "embedding_accuracy", "embedding_far", "threshold")}
    assert perfect["decoupling/identity_percent"] == perfect["decoupling/expression_percent"] == 100.0
    for factor in ("identity", "expression"):
        assert perfect[f"decoupling/{factor}_embedding_accuracy"] > 0.8
        assert perfect[f"decoupling/{factor}_embedding_far"] < 0.1
        assert math.isfinite(perfect[f"decoupling/{factor}_threshold"])
    unrelated = decoupling_scores(fake_sample_sharing(grid, copies=False), grid, n=10, m=10, **FAST)
    assert unrelated["decoupling/identity_percent"] < 25.0, unrelated
    assert unrelated["decoupling/expression_percent"] < 25.0, unrelated
    assert {key: value for key, value in unrelated.items() if "percent" not in key} == \
        {key: value for key, value in perfect.items() if "percent" not in key}  # the same cached embeddings


def test_decoupling_scores_check_what_sample_sharing_returns(grid):
    def wrong_shape(factor, groups, per_group, generator):
        return torch.zeros(groups, per_group - 1, grid.template.num_vertices, 3)

    with pytest.raises(ValueError, match=r"returned \(2, 3, 144, 3\) meshes, expected \(2, 4, 144, 3\)"):
        decoupling_scores(wrong_shape, grid, n=2, m=3, **FAST)
    with pytest.raises(ValueError, match="must be positive"):
        decoupling_scores(wrong_shape, grid, n=0, **FAST)


@pytest.mark.slow
def test_anny_face_embeddings_verify_identities_and_expressions():
    data = AnnyFaceDataModule(size="tiny")  # 3 subjects: ~10 s for identity, ~20 s for expression on 2 cores
    for factor, floor in (("identity", 0.95), ("expression", 0.85)):
        trained = load_or_train_embedding(data, factor)
        assert trained.accuracy > floor and trained.far < 0.1, (factor, trained.accuracy, trained.far)
