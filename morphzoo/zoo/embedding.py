"""The embedding networks of the decoupling metric (Abrevaya et al. 2019, §5.3 "Decoupling", and the supplement's
"Decoupling Evaluation - Implementation Details"), trained once per dataset and cached, and the decoupling scores
of a model.

Protocol, as in the paper (after Donahue et al. 2018):

1. one network per factor (``identity``, ``expression``) maps a mesh to a 128-d unit vector
   (:class:`~morphzoo.nn.mesh_embedding.MeshEmbeddingNet`), trained with the triplet loss
   (:func:`~morphzoo.nn.mesh_embedding.semi_hard_triplet_loss`) on the dataset's labels of the training split;
2. two meshes are the "same" when their embedding distance is below τ, chosen on a validation set of equally many
   positive and negative pairs drawn from the *test* split, for the highest accuracy with a false acceptance rate
   below 10 % (:func:`~morphzoo.metrics.decoupling.choose_threshold`); that accuracy and FAR are the embedding's
   own, reported with the scores;
3. Dec-Id: for ``n`` random faces, ``m`` faces that keep each one's identity code with new expression (and noise)
   codes; the percentage of (face, new face) pairs judged the same identity (:class:`Decoupling`). Dec-Exp likewise.
   ``n = m = 100`` as in the paper.

Choices where the paper is silent or our hardware differs:

- the networks are small CNNs on 64 × 64 geometry images of normals and offsets, not a ResNet-18 on 224 × 224
  renders of normals (a 2-core CPU must train them in minutes; see :class:`MeshEmbeddingNet`);
- which meshes carry a factor's label: the collection's own labels (a negative label, -1, is unlabelled), not
  those a DataModule serves with ``expression_label_fraction`` < 1: the judge is then the same for every model
  evaluated on a dataset, however few labels the model was trained with. For ``identity`` every labelled mesh. For
  ``expression``, on data with an ``intensity`` label and no ``level`` label (anny-face, CoMA: sequences neutral ->
  peak -> neutral whose every frame carries the sequence's expression), only the meshes with intensity >= 0.5
  (:data:`EXPRESSION_MIN_INTENSITY`), so that the label describes the shape; on data with a ``level`` label
  (anny-bu3dfe, BU-3DFE: static scans, level 0 = neutral, which the labels name as an expression of its own) every
  labelled mesh;
- training: class-balanced batches (8 classes × 8 meshes, drawn with replacement within a class), semi-hard negative
  mining with margin 0.2 (FaceNet's; batch-hard mining collapsed anny-face's expression embedding), Adam (1e-3,
  cosine decay), 30 epochs of at most 50 batches each;
- validation pairs: 2000 positive and 2000 negative, drawn with replacement (seeded): an anchor uniformly among the
  eligible test meshes, its partner uniformly among the other meshes of its class (positive) or of other classes
  (negative).

Trained networks are cached in ``<cache>/embeddings/<key>/`` (``model.safetensors`` + ``config.json``), keyed by the
collection's content, the split, the factor, the hyperparameters and :data:`EMBEDDING_VERSION`. ``config.json``
records the weights' sha256: a truncated or modified entry is detected, reported and retrained, never trusted.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from morphzoo.cache import atomic_directory, cache_dir, content_hash
from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection
from morphzoo.errors import MorphzooError
from morphzoo.mesh.geometry_image import geometry_image_gather
from morphzoo.mesh.template import Template
from morphzoo.metrics.decoupling import Decoupling, choose_threshold
from morphzoo.nn.mesh_embedding import MeshEmbeddingNet, semi_hard_triplet_loss

EMBEDDING_VERSION = 1
"""Bump when training or the network changes: cached embeddings of older versions are then retrained."""
FACTORS = ("identity", "expression")
EXPRESSION_MIN_INTENSITY = 0.5
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "morphzoo-mesh-embedding"
FINGERPRINT_MESHES = 8  # evenly spaced meshes whose vertices enter the collection's fingerprint
EMBED_BATCH = 128  # meshes per forward pass when embedding without gradients

SampleSharing = Callable[[str, int, int, torch.Generator], Tensor]
"""``sample_sharing(factor, groups, per_group, generator)`` -> (groups, per_group, V, 3) meshes in metres: each group
shares its ``factor`` code, every other code is drawn per mesh (``MorphableModel.sample_sharing``)."""


class EmbeddingCacheError(MorphzooError, ValueError):
    """A cached embedding folder that is incomplete, corrupt or does not match the request."""


@dataclass
class TrainedEmbedding:
    """A trained embedding network with its verification threshold.

    Attributes:
        network: the :class:`MeshEmbeddingNet`, in eval mode.
        factor: ``identity`` or ``expression``.
        threshold: τ: two meshes are the same when their embedding distance is below it.
        accuracy, far: the verification accuracy and false acceptance rate at τ on the test split's validation
            pairs, fractions in [0, 1].
        num_train_meshes, num_classes: the training meshes and the classes (labels) among them.
        options: :func:`train_embedding`'s keyword arguments (hyperparameters and seed).
    """

    network: MeshEmbeddingNet
    factor: str
    threshold: float
    accuracy: float
    far: float
    num_train_meshes: int
    num_classes: int
    options: dict

    def embed(self, vertices: Tensor) -> Tensor:
        """(K, V, 3) meshes in metres -> (K, D) embeddings (:func:`embed`)."""
        return embed(self.network, vertices)


@torch.no_grad()
def embed(network: MeshEmbeddingNet, vertices: Tensor) -> Tensor:
    """(K, V, 3) meshes in metres -> (K, D) embeddings, without gradients, ``EMBED_BATCH`` meshes at a time."""
    device = network.reference.device
    return torch.cat([network(chunk.to(device)) for chunk in vertices.split(EMBED_BATCH)])


def labelled_meshes(data: MeshDataModule, factor: str, split: str) -> np.ndarray:
    """Indices of the meshes of ``split`` whose ``factor`` label describes their shape (module docstring)."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; choose one of {', '.join(FACTORS)}")
    labels = data.collection.labels
    if factor not in labels:
        raise ValueError(f"the dataset has no '{factor}' labels (it has {', '.join(sorted(labels)) or 'none'}): the "
                         f"{factor} embedding of the decoupling metric needs them")
    indices = np.asarray(data.split_indices[split])
    indices = indices[np.asarray(labels[factor])[indices] >= 0]  # -1: unlabelled
    if factor == "expression" and "intensity" in labels and "level" not in labels:
        indices = indices[np.asarray(labels["intensity"])[indices] >= EXPRESSION_MIN_INTENSITY]
    return indices


def read_meshes(collection: MeshCollection, indices: np.ndarray) -> Tensor:
    """(K, V, 3) float32 vertices of ``indices`` (repeats allowed), read in ascending order from the (memory-mapped)
    array."""
    unique, inverse = np.unique(indices, return_inverse=True)
    meshes = torch.from_numpy(np.asarray(collection.vertices[unique], dtype=np.float32))
    return meshes[torch.from_numpy(inverse.reshape(-1))]


def class_blocks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``labels`` grouped: (order, the class of each sorted position, each class's start and size in the order)."""
    order = np.argsort(labels, kind="stable")
    _, start, size = np.unique(labels[order], return_index=True, return_counts=True)
    return order, np.repeat(np.arange(len(size)), size), start, size


def class_balanced_batch(labels: np.ndarray, classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Positions into ``labels`` of a batch of ``per_class`` meshes (with replacement) from each of ``classes``
    distinct random classes (all of them if there are fewer), so that every batch holds positives and negatives for
    the triplet loss's online mining."""
    order, _, start, size = class_blocks(labels)
    chosen = rng.choice(len(size), min(classes, len(size)), replace=False)
    offsets = rng.integers(0, size[chosen, None], (len(chosen), per_class))
    return order[(start[chosen, None] + offsets).reshape(-1)]


def check_pairs(labels: np.ndarray) -> None:
    """Raise a ValueError unless ``labels`` allow positive and negative pairs (two classes, one of two meshes)."""
    sizes = np.unique(labels, return_counts=True)[1]
    if len(sizes) < 2 or sizes.max() < 2:
        raise ValueError(f"the test meshes fall in {len(sizes)} class(es) with at most {sizes.max(initial=0)} "
                         "meshes each: validation pairs need two classes and a class of two meshes. The decoupling "
                         "protocol draws them from the test split: use a split whose test set holds several "
                         "identities and expressions (e.g. interpolation)")


def verification_pairs(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` positive and ``count`` negative pairs, (count, 2) positions into ``labels`` each, drawn with
    replacement: an anchor uniformly among the eligible meshes, its partner uniformly among the other meshes of its
    class (positive: anchors from classes of at least two) or among the meshes of other classes (negative)."""
    check_pairs(labels)
    order, position_class, start, size = class_blocks(labels)
    eligible = np.flatnonzero(size[position_class] >= 2)
    rng = np.random.default_rng(seed)
    anchor = rng.choice(eligible, count)
    group = position_class[anchor]
    offset = rng.integers(0, size[group] - 1)
    partner = start[group] + offset + (offset >= anchor - start[group])  # skip the anchor itself
    positive = order[np.stack([anchor, partner], 1)]
    anchor = rng.integers(0, len(labels), count)
    group = position_class[anchor]
    offset = rng.integers(0, len(labels) - size[group])
    partner = offset + size[group] * (offset >= start[group])  # skip the anchor's class block
    return positive, order[np.stack([anchor, partner], 1)]


def check_factor(data: MeshDataModule, factor: str) -> None:
    """Raise a ValueError naming the problem when ``data`` cannot train or validate the ``factor`` embedding: no such
    labels, fewer than two classes among the training meshes, or test meshes without positive and negative pairs."""
    train = labelled_meshes(data, factor, "train")
    labels = np.asarray(data.collection.labels[factor])
    classes = len(np.unique(labels[train]))
    if classes < 2:
        raise ValueError(f"the training split has {classes} {factor} class(es): the triplet loss needs two")
    try:
        check_pairs(labels[labelled_meshes(data, factor, "test")])
    except ValueError as error:
        raise ValueError(f"{factor}: {error}") from None


def geometry_image(template: Template, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The template's geometry image (gather form): its own UVs where it has them, else a harmonic map, which needs a
    boundary (:func:`~morphzoo.mesh.geometry_image.geometry_image_gather`; ValueError otherwise)."""
    return geometry_image_gather(template, size, "auto")


def decoupling_unavailable(data: MeshDataModule) -> str | None:
    """Why :func:`decoupling_scores` cannot run on ``data``, or None: the template has neither UVs nor a boundary
    (no geometry image), or :func:`check_factor` fails for a factor. Cheap (labels and the cached geometry image),
    for callers that report decoupling only where it applies."""
    try:
        geometry_image(data.template, TRAINING_SIGNATURE.parameters["image_size"].default)
        for factor in FACTORS:
            check_factor(data, factor)
    except ValueError as error:
        return str(error)
    return None


def embedding_network(data: MeshDataModule, image_size: int, embedding_dim: int) -> MeshEmbeddingNet:
    """An untrained :class:`MeshEmbeddingNet` for ``data``'s template (:func:`geometry_image`); reference = the
    training mean, scale = the mean per-vertex standard deviation of the training split."""
    index, weight = geometry_image(data.template, image_size)
    return MeshEmbeddingNet(data.template.faces, index, weight, data.mean, float(data.std.mean()), embedding_dim)


def validate(network: MeshEmbeddingNet, data: MeshDataModule, factor: str, pairs: int, seed: int,
             max_far: float) -> tuple[float, float, float]:
    """(threshold, accuracy, far) of ``network`` on ``pairs`` positive and ``pairs`` negative pairs of the test
    split's ``factor`` (:func:`verification_pairs`, :func:`~morphzoo.metrics.decoupling.choose_threshold`)."""
    test = labelled_meshes(data, factor, "test")
    positive, negative = verification_pairs(np.asarray(data.collection.labels[factor])[test], pairs, seed)
    embeddings = embed(network, read_meshes(data.collection, test))

    def distances(pair: np.ndarray) -> Tensor:
        return torch.linalg.vector_norm(embeddings[pair[:, 0]] - embeddings[pair[:, 1]], dim=-1)

    return choose_threshold(distances(positive), distances(negative), max_far)


def train_embedding(data: MeshDataModule, factor: str, *, epochs: int = 30, seed: int = 0, margin: float = 0.2,
                    learning_rate: float = 1e-3, classes_per_batch: int = 8, meshes_per_class: int = 8,
                    max_steps_per_epoch: int = 50, image_size: int = 64, embedding_dim: int = 128,
                    validation_pairs: int = 2000, max_far: float = 0.10) -> TrainedEmbedding:
    """Train the ``factor`` embedding on ``data``'s training split and choose its threshold on the test split (module
    docstring for the protocol and choices).

    Args:
        data: the dataset; its split protocol decides the training and test meshes.
        factor: ``identity`` or ``expression``.
        epochs: passes over the training meshes; an epoch is ``ceil(meshes / batch)`` batches, at most
            ``max_steps_per_epoch`` (large datasets are subsampled).
        seed: seeds the initialisation, the batches and the validation pairs (the global RNG is left untouched).
        margin: the triplet loss's margin α.
        learning_rate: Adam's initial learning rate (cosine decay to 0).
        classes_per_batch, meshes_per_class: each batch's classes and meshes per class.
        max_steps_per_epoch: the cap on batches per epoch.
        image_size: the geometry image's side (pixels).
        embedding_dim: the embedding's dimension (the paper's 128).
        validation_pairs: positive pairs, and as many negative pairs, for the threshold.
        max_far: the bound on the false acceptance rate (the paper's 10 %).
    """
    options = {name: value for name, value in locals().items() if name not in ("data", "factor")}  # the arguments
    check_factor(data, factor)
    train = labelled_meshes(data, factor, "train")
    labels = np.asarray(data.collection.labels[factor])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = embedding_network(data, image_size, embedding_dim)
    rng = np.random.default_rng(seed)
    steps = epochs * min(max_steps_per_epoch, math.ceil(len(train) / (classes_per_batch * meshes_per_class)))
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
    network.train()
    with torch.enable_grad():  # also when called from an evaluation under torch.no_grad()
        for _ in range(steps):
            batch = train[class_balanced_batch(labels[train], classes_per_batch, meshes_per_class, rng)]
            embeddings = network(read_meshes(data.collection, batch))
            loss = semi_hard_triplet_loss(embeddings, torch.from_numpy(labels[batch]), margin)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    network.eval()
    threshold, accuracy, far = validate(network, data, factor, validation_pairs, seed, max_far)
    return TrainedEmbedding(network, factor, threshold, accuracy, far, len(train), len(np.unique(labels[train])),
                            options)


TRAINING_SIGNATURE = inspect.signature(train_embedding)


def training_options(**options) -> dict:
    """:func:`train_embedding`'s keyword arguments with the defaults filled in (unknown names: TypeError)."""
    bound = TRAINING_SIGNATURE.bind(None, FACTORS[0], **options)
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name not in ("data", "factor")}


def collection_fingerprint(collection: MeshCollection) -> str:
    """A hash of what identifies a collection's content without reading it all: its size, attributes (generator,
    seed, preset), template, every label array and the vertices of ``FINGERPRINT_MESHES`` evenly spaced meshes."""
    picks = np.unique(np.linspace(0, max(len(collection) - 1, 0), FINGERPRINT_MESHES).round().astype(np.int64))
    labels = [part for name in sorted(collection.labels) for part in (name, np.asarray(collection.labels[name]))]
    return content_hash(len(collection), collection.attributes, collection.template.geometry_hash(), *labels,
                        np.asarray(collection.vertices[picks[: len(collection)]], dtype=np.float32))


def embedding_folder(data: MeshDataModule, factor: str, options: dict) -> Path:
    """``<cache>/embeddings/<key>``: the key hashes the collection, the split, the factor, ``options`` (complete,
    from :func:`training_options`) and :data:`EMBEDDING_VERSION`."""
    key = content_hash("mesh-embedding", EMBEDDING_VERSION, factor, options, collection_fingerprint(data.collection),
                       np.asarray(data.split_indices["train"]), np.asarray(data.split_indices["test"]))
    return cache_dir() / "embeddings" / key


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_embedding(embedding: TrainedEmbedding, folder: Path) -> None:
    """Write ``model.safetensors`` (the network's state) and ``config.json`` (threshold, accuracy, FAR, sizes,
    options and the weights' sha256) into the existing ``folder``."""
    weights = folder / WEIGHTS_NAME
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in embedding.network.state_dict().items()}
    save_file(state, str(weights), metadata={"format": FORMAT})
    config = {"format": FORMAT, "version": EMBEDDING_VERSION, "factor": embedding.factor,
              "threshold": embedding.threshold, "accuracy": embedding.accuracy, "far": embedding.far,
              "num_train_meshes": embedding.num_train_meshes, "num_classes": embedding.num_classes,
              "options": embedding.options, "weights_sha256": _sha256(weights)}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def read_embedding(folder: Path, data: MeshDataModule, factor: str, options: dict) -> TrainedEmbedding:
    """The embedding cached in ``folder``; :class:`EmbeddingCacheError` (naming the file) when a file is missing,
    unreadable, truncated, modified or does not match ``factor`` and ``options``."""
    config_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    try:
        config = json.loads(config_path.read_text())
        expected = {"format": FORMAT, "version": EMBEDDING_VERSION, "factor": factor, "options": options}
        mismatched = [name for name, value in expected.items() if config.get(name) != value]
        summary = [float(config[name]) for name in ("threshold", "accuracy", "far")]
        sizes = [int(config[name]) for name in ("num_train_meshes", "num_classes")]
        digest = _sha256(weights)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise EmbeddingCacheError(f"{folder}: incomplete or unreadable cached embedding ({error!r})") from error
    if mismatched:
        raise EmbeddingCacheError(f"{config_path}: {', '.join(mismatched)} do not match the requested embedding")
    if digest != config.get("weights_sha256"):
        raise EmbeddingCacheError(f"{weights}: its sha256 does not match {CONFIG_NAME} (truncated or modified)")
    network = embedding_network(data, options["image_size"], options["embedding_dim"])
    try:
        network.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError) as error:
        raise EmbeddingCacheError(f"{weights}: does not hold this embedding network's weights ({error})") from error
    network.eval()
    return TrainedEmbedding(network, factor, *summary, *sizes, options)


def load_or_train_embedding(data: MeshDataModule, factor: str, **options) -> TrainedEmbedding:
    """The ``factor`` embedding of ``data``: from the cache, or trained with :func:`train_embedding` (``options``
    are its keyword arguments) and cached atomically. A corrupt cached entry is reported (a warning naming it),
    removed and retrained."""
    options = training_options(**options)
    folder = embedding_folder(data, factor, options)
    if folder.exists():
        try:
            return read_embedding(folder, data, factor, options)
        except EmbeddingCacheError as error:
            warnings.warn(f"retraining the cached embedding: {error}", stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
    trained: list[TrainedEmbedding] = []

    def build(tmp: Path) -> None:
        trained.append(train_embedding(data, factor, **options))
        write_embedding(trained[0], tmp)

    atomic_directory(folder, build)
    return trained[0] if trained else read_embedding(folder, data, factor, options)


def decoupling_scores(sample_sharing: SampleSharing, data: MeshDataModule, n: int = 100, m: int = 100,
                      seed: int = 0, groups_per_call: int = 10, **options) -> dict[str, float]:
    """Dec-Id and Dec-Exp of a generative model (Abrevaya et al. 2019, §5.3; Table 1), with the embeddings of
    ``data`` (:func:`load_or_train_embedding`, ``options`` its training options).

    For each factor, ``sample_sharing(factor, groups, m + 1, generator)`` (:data:`SampleSharing`) is called for
    ``n`` groups in total, ``groups_per_call`` at a time (to bound memory) with one generator seeded with ``seed``
    (the same seed for both factors), without gradients; mesh 0 of each group is the reference :math:`x_i`, meshes
    1..m are :math:`\\mathcal Y(x_i)`. The embeddings are trained first where the cache has none.

    Returns:
        ``decoupling/<factor>_percent`` (% of pairs judged the same), ``decoupling/<factor>_embedding_accuracy``
        and ``decoupling/<factor>_embedding_far`` (fractions in [0, 1], on the test split's validation pairs) and
        ``decoupling/<factor>_threshold`` (τ, an embedding distance), for ``identity`` and ``expression``.
    """
    if n < 1 or m < 1 or groups_per_call < 1:
        raise ValueError(f"decoupling_scores: n, m and groups_per_call must be positive, got {n}, {m}, "
                         f"{groups_per_call}")
    problem = decoupling_unavailable(data)
    if problem is not None:
        raise ValueError(f"decoupling_scores: {problem}")
    results = {}
    for factor in FACTORS:
        embedding = load_or_train_embedding(data, factor, **options)
        metric = Decoupling(embedding.embed, embedding.threshold)
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, n, groups_per_call):
            groups = min(groups_per_call, n - start)
            with torch.no_grad():
                meshes = torch.as_tensor(sample_sharing(factor, groups, m + 1, generator)).to("cpu", torch.float32)
            expected = (groups, m + 1, data.template.num_vertices, 3)
            if tuple(meshes.shape) != expected:
                raise ValueError(f"decoupling_scores: sample_sharing({factor!r}, {groups}, {m + 1}, generator) "
                                 f"returned {tuple(meshes.shape)} meshes, expected {expected}")
            metric.update(meshes[:, 0], meshes[:, 1:])
        prefix = f"decoupling/{factor}"
        results.update({f"{prefix}_percent": float(metric.compute()["percent_same"]),
                        f"{prefix}_embedding_accuracy": embedding.accuracy,
                        f"{prefix}_embedding_far": embedding.far, f"{prefix}_threshold": embedding.threshold})
    return results
