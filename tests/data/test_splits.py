import numpy as np
import pytest
import torch

from morphzoo.data.collection import MeshCollection
from morphzoo.data.splits import VALIDATION_BLOCK, split_indices
from morphzoo.mesh.template import Template
from tests.synthetic import SphereDataModule, sphere_collection


@pytest.fixture(scope="module")
def collection():
    return sphere_collection(identities=3, expressions=4, frames=30)


def test_interpolation_split_follows_comas_protocol(collection):
    splits = split_indices(collection, "interpolation")
    index = np.arange(len(collection))
    np.testing.assert_array_equal(splits["test"], index[index % 100 < 10])
    assert set(splits["val"]).isdisjoint(splits["test"]) and set(splits["val"]).isdisjoint(splits["train"])
    assert np.all((splits["val"] % 100 >= VALIDATION_BLOCK[0]) & (splits["val"] % 100 < VALIDATION_BLOCK[1]))
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == len(collection)


def test_extrapolation_split_holds_out_one_expression(collection):
    splits = split_indices(collection, "extrapolation", held_out_expression="e2")
    expression = collection.labels["expression"]
    assert set(expression[splits["test"]]) == {2}
    assert 2 not in set(expression[splits["train"]]) | set(expression[splits["val"]])
    assert len(splits["test"]) == np.sum(expression == 2)


def test_identity_split_holds_out_subjects(collection):
    splits = split_indices(collection, "identity", test_identities=["s0"])
    identity = collection.labels["identity"]
    assert set(identity[splits["test"]]) == {0}
    assert 0 not in set(identity[splits["train"]])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"protocol": "nope"}, "unknown split protocol"),
     ({"protocol": "extrapolation", "held_out_expression": "smile"}, "unknown expression 'smile'"),
     ({"protocol": "identity"}, "needs test_identities")],
)
def test_bad_split_arguments_are_named(collection, kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_indices(collection, **kwargs)


def test_datamodule_statistics_and_batches():
    data = SphereDataModule(identities=2, expressions=2, frames=50, batch_size=7)
    train = data.collection.vertices[data.split_indices["train"]]
    torch.testing.assert_close(data.mean, torch.from_numpy(train.mean(0)), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(data.std, torch.from_numpy(train.std(0)).clamp_min(1e-5), atol=1e-7, rtol=1e-4)

    batch = next(iter(data.train_dataloader()))
    assert batch["vertices"].shape == (7, data.template.num_vertices, 3) and batch["vertices"].dtype == torch.float32
    # every field belongs to the same mesh
    index = batch["index"].numpy()
    np.testing.assert_array_equal(batch["vertices"].numpy(), data.collection.vertices[index])
    np.testing.assert_array_equal(batch["identity"].numpy(), data.collection.labels["identity"][index])
    np.testing.assert_array_equal(batch["neutral"].numpy(), data.collection.neutral[batch["identity"].numpy()])
    assert set(index) <= set(data.split_indices["train"])
    assert data.vocabularies["expression"][int(batch["expression"][0])].startswith("e")


def test_collection_round_trip_and_incomplete_folder(tmp_path, collection):
    collection.save(tmp_path / "c")
    loaded = MeshCollection.load(tmp_path / "c")
    np.testing.assert_array_equal(loaded.vertices, collection.vertices)
    assert loaded.vocabularies == collection.vocabularies
    for name in collection.labels:
        np.testing.assert_array_equal(loaded.labels[name], collection.labels[name])
    (tmp_path / "c" / "meta.npz").unlink()
    with pytest.raises(FileNotFoundError, match="meta.npz"):
        MeshCollection.load(tmp_path / "c")


def test_wrong_vertex_count_and_nan_are_rejected(collection):
    template = collection.template
    with pytest.raises(ValueError, match=f"expected {template.num_vertices} vertices"):
        MeshCollection(vertices=np.zeros((2, template.num_vertices - 1, 3), np.float32), template=template)
    bad = collection.vertices[:2].copy()
    bad[1, 5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        template.check_vertices(bad, "mesh 7")
    with pytest.raises(ValueError, match="face indices"):
        Template(vertices=np.zeros((3, 3)), faces=np.array([[0, 1, 3]]))


def test_expression_label_fraction_keeps_the_most_intense_frames_of_each_training_sequence():
    data = SphereDataModule(frames=20, expression_label_fraction=0.25)
    served = data.training_labels("expression")
    train = data.split_indices["train"]
    labels = data.collection.labels
    assert (served[served >= 0] == labels["expression"][train][served >= 0]).all()
    for identity in range(3):
        for expression in range(3):
            members = (labels["identity"][train] == identity) & (labels["expression"][train] == expression)
            kept = members & (served >= 0)
            assert kept.sum() == np.ceil(0.25 * members.sum())
            # every kept frame is at least as intense as every dropped one
            assert labels["intensity"][train][kept].min() >= labels["intensity"][train][members & ~kept].max()
    batch = next(iter(data.train_dataloader()))
    assert (batch["expression"] == -1).any() and (batch["identity"] >= 0).all()
    test_batch = next(iter(data.test_dataloader()))
    assert (test_batch["expression"] >= 0).all()  # evaluation keeps every label
    with pytest.raises(ValueError, match=r"expression_label_fraction must lie in \[0, 1\]"):
        SphereDataModule(expression_label_fraction=1.5)
