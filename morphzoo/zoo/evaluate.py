"""Every metric of the shared package that applies to a model, on its dataset's splits: one leaderboard row.

- **reconstruction** (all models): :class:`VertexError` on the test split, plain and similarity-Procrustes aligned;
- **generation** (models that sample; plain autoencoders through the Gaussian of their training latents, fitted here
  if the model has none): :class:`Specificity` of ``samples`` samples against the training split and
  :class:`Diversity` over ``pairs`` random pairs of them;
- **disentanglement** (models with ``predict_neutral``, and datasets with ``identity`` labels):
  :class:`DisentanglementError` (IB-VAE Eq. 14) and :class:`JiangDisentanglementError` of the test split's predicted
  neutral faces, the latter under Jiang et al.'s own protocol (no refinement iterations; each subject's predictions
  aligned onto the prediction from its neutral face, which is added for that, where the dataset has neutral faces);
  and the **neutral face error** (IB-VAE Table 2, "ne"): :class:`VertexError` of the predicted neutral faces against
  the true ones;
- **decoupling** (models whose code has identity and expression parts, the decoupled GAN and IB-VAE; datasets with
  both labels whose test split has pairs): Dec-Id / Dec-Exp of the decoupled GAN's §5.3 (Table 1), n = m = 100
  (:func:`~morphzoo.zoo.embedding.decoupling_scores`; the embedding networks are trained once per dataset and
  cached, a few minutes on anny-face small), and the identity / expression diversity of samples sharing a code;
- **manipulation** (LAMM after its manipulation stage): :func:`manipulation_metrics`, the control / non-control
  errors of LAMM's Table 2 on test pairs that change the identity and, separately, the expression;
- **mesh quality** (all models): the :class:`Roughness` (mean umbrella-Laplacian length, mm) of the test
  reconstructions, of the samples and of the true test meshes, which shows the high-frequency noise that specificity
  and diversity do not; self-intersecting faces per mesh (:class:`SelfIntersections`, IB-VAE §4.4) of the
  reconstructions and of the true meshes, on a seeded subset of at most ``intersection_meshes`` test meshes (a count of
  faces, not mm);
- **data reference values** (from the labels): the diversity of the training meshes, overall and within the same
  identity / expression, which a generator's diversity is compared with.

:func:`landmark_fitting_errors` is the decoupled GAN's Table 2 (sparse-landmark fitting), for any model with a decoder.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from morphzoo.data.base import MeshDataModule, MeshSubset
from morphzoo.fitting import fit_landmarks
from morphzoo.methods.base import MorphableModel
from morphzoo.methods.lamm import LAMM
from morphzoo.metrics.disentanglement import DisentanglementError, JiangDisentanglementError
from morphzoo.metrics.diversity import Diversity
from morphzoo.metrics.manipulation import MANIPULATION_CHANGES, ManipulationError, manipulation_partners
from morphzoo.metrics.roughness import Roughness
from morphzoo.metrics.self_intersection import SelfIntersections
from morphzoo.metrics.specificity import Specificity
from morphzoo.metrics.vertex_error import VertexError
from morphzoo.zoo.embedding import decoupling_scores, decoupling_unavailable


def _batches(subset: MeshSubset, batch_size: int) -> DataLoader:
    return DataLoader(subset, batch_size=batch_size, collate_fn=lambda batch: batch)


@torch.no_grad()
def evaluate_model(model: MorphableModel, data: MeshDataModule, samples: int = 1000, pairs: int = 10_000,
                   seed: int = 0, batch_size: int = 64, intersection_meshes: int = 200,
                   decoupling_samples: int = 100) -> dict[str, float]:
    """Compute every applicable metric (see the module docstring); returns ``{"group/metric": value}`` in mm.

    Args:
        model: a trained model (set to eval mode here).
        data: its DataModule; the split protocol is the DataModule's.
        samples: generated meshes for specificity and diversity (the GAN paper's 1000).
        pairs: random pairs for diversity (the GAN paper's 10,000).
        seed: seeds sampling, pair drawing and the self-intersection subset.
        batch_size: meshes per forward pass.
        intersection_meshes: test meshes (a seeded subset) whose self-intersections are counted; 0 skips it.
        decoupling_samples: n = m of the decoupling protocol (the paper's 100); 0 skips it.
    """
    model.eval()
    results: dict[str, float] = {}
    test, train = data.subset("test"), data.subset("train")
    plain, aligned = VertexError(), VertexError(align="procrustes")
    roughness = {name: Roughness(data.template.faces) for name in ("reconstruction", "samples", "data")}
    for batch in _batches(test, batch_size):
        vertices = batch["vertices"].to(model.mean)
        prediction = model(vertices)
        plain.update(prediction, vertices)
        aligned.update(prediction, vertices)
        roughness["reconstruction"].update(prediction.cpu())
        roughness["data"].update(vertices.cpu())
    for name, metric in (("reconstruction", plain), ("reconstruction_aligned", aligned)):
        values = metric.compute()
        results.update({f"{name}/{key}_mm": float(values[key]) for key in ("mean", "std", "median")})
    if hasattr(model, "predict_neutral") and "identity" in data.collection.labels:
        results.update(neutral_face_metrics(model, data, batch_size))
    if isinstance(model, LAMM) and model.hparams.stage == "manipulation":
        results.update(manipulation_metrics(model, data, seed=seed, batch_size=batch_size))
    if intersection_meshes > 0:
        results.update(self_intersections(model, data, intersection_meshes, seed))

    training_meshes = np.asarray(data.collection.vertices[np.sort(data.split_indices["train"])])
    if samples > 0:
        generated = _generate(model, train, samples, seed, batch_size)
        specificity, diversity = Specificity(training_meshes), Diversity(pairs=pairs, seed=seed)
        for chunk in generated.split(batch_size):
            specificity.update(chunk)
            diversity.update(chunk)
            roughness["samples"].update(chunk)
        results["generation/specificity_mm"] = float(specificity.compute()["mean"])
        results["generation/diversity_mm"] = float(diversity.compute()["mean"])
        if {"identity", "expression"} <= set(model.latent_factors()):
            results.update(factorised_diversity(model, pairs, seed))
            if decoupling_samples > 0 and decoupling_unavailable(data) is None:
                results.update(decoupling_scores(model.sample_sharing, data, n=decoupling_samples,
                                                 m=decoupling_samples, seed=seed))
    results.update({f"mesh_quality/roughness_{name}_mm": float(metric.compute())
                    for name, metric in roughness.items() if metric.count > 0})
    results.update(data_diversity(data, pairs, seed))
    return results


FACTOR_GROUPS, FACTOR_GROUP_SIZE = 100, 101  # the GAN paper's n = 100 codes, each with m = 100 more samples


@torch.no_grad()
def factorised_diversity(model: MorphableModel, pairs: int = 10_000, seed: int = 0) -> dict[str, float]:
    """The decoupled GAN's identity and expression diversity (§5.3): the diversity of samples that share an identity
    code (their expressions vary) and of samples that share an expression code, for a model whose code has
    ``identity`` and ``expression`` parts (:meth:`~morphzoo.methods.base.MorphableModel.sample_sharing`, 100 groups
    of 101 samples, ``pairs`` random pairs within groups)."""
    results = {}
    for factor in ("identity", "expression"):
        generator = torch.Generator().manual_seed(seed)
        meshes = model.sample_sharing(factor, FACTOR_GROUPS, FACTOR_GROUP_SIZE, generator).cpu()
        metric = Diversity(pairs=pairs, seed=seed)
        metric.update(meshes.flatten(0, 1), torch.arange(FACTOR_GROUPS).repeat_interleave(FACTOR_GROUP_SIZE))
        results[f"generation/diversity_same_{factor}_code_mm"] = float(metric.compute()["mean"])
    return results


@torch.no_grad()
def neutral_face_metrics(model: MorphableModel, data: MeshDataModule, batch_size: int = 64) -> dict[str, float]:
    """The disentanglement errors and the neutral face error of a model's predicted neutral faces (module
    docstring); needs ``identity`` labels, and the dataset's neutral faces for the neutral face error."""
    equation_14, jiang, neutral_error = DisentanglementError(), JiangDisentanglementError(iterations=0), VertexError()
    for batch in _batches(data.subset("test"), batch_size):
        predicted = model.predict_neutral(batch["vertices"].to(model.mean))
        equation_14.update(predicted, batch["identity"])
        jiang.update(predicted, batch["identity"])
        if "neutral" in batch:
            neutral_error.update(predicted, batch["neutral"].to(predicted))
    results = {}
    if data.collection.neutral is not None:  # Jiang's reference: the prediction from each subject's neutral face
        subjects = np.unique(data.collection.labels["identity"][data.split_indices["test"]])
        faces = torch.from_numpy(np.array(data.collection.neutral[subjects])).to(model.mean)
        jiang.update(model.predict_neutral(faces), torch.from_numpy(subjects),
                     reference=torch.ones(len(subjects), dtype=torch.bool))
        values = neutral_error.compute()
        results.update({f"neutral/{key}_mm": float(values[key]) for key in ("mean", "std", "median")})
    for name, metric in (("disentanglement", equation_14), ("disentanglement_jiang", jiang)):
        values = metric.compute()
        results.update({f"{name}/{key}_mm": float(values[key]) for key in ("mean", "median")})
    return results


def manipulation_pairs(data: MeshDataModule, change: str, split: str = "test", seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(sources, targets): collection indices of the ``split``'s manipulation pairs, each source with a target of the
    same split that changes ``change`` (:func:`~morphzoo.metrics.manipulation.manipulation_partners`, seeded);
    sources without a qualifying target are left out."""
    indices = np.sort(data.split_indices[split])
    labels = {name: torch.as_tensor(data.collection.labels[name][indices])
              for name in ("identity", "expression") if name in data.collection.labels}
    partners = manipulation_partners(change, len(indices), labels.get("identity"), labels.get("expression"),
                                     torch.Generator().manual_seed(seed)).numpy()
    return indices[partners >= 0], indices[partners[partners >= 0]]


@torch.no_grad()
def manipulation_metrics(model: LAMM, data: MeshDataModule, split: str = "test", seed: int = 0,
                         batch_size: int = 64) -> dict[str, float]:
    """LAMM's manipulation errors (main paper Table 2) on pairs that change the shape, with two references.

    For each pairing of :func:`manipulation_pairs` (``identity``: a target of another person; ``expression``: the
    same person with another expression), every source is driven to its target through its control vertices alone
    (α = 1: the control vertices' full displacement, :meth:`LAMM.edit`) and compared with the target:
    ``manipulation_<change>/control_mm``, ``non_control_mm`` and ``all_mm`` (:class:`ManipulationError`). The
    references put the numbers on a scale: ``unedited_mm``, the source's reconstruction against the target (no edit),
    and ``target_reconstruction_mm``, the autoencoder encoding the whole target; ``gap_closed`` is the fraction of
    the distance between them that the edit covers (1: as good as seeing the whole target). ``pairs``: how many.
    Pairings the labels do not allow (no expression labels) are left out.
    """
    model.eval()
    mask = torch.zeros(model.num_vertices, dtype=torch.bool)
    mask[model.control_index.flatten().cpu()] = True
    vertices = data.collection.vertices
    results = {}
    for change in MANIPULATION_CHANGES:
        sources, targets = manipulation_pairs(data, change, split, seed)
        if len(sources) == 0:
            continue
        edited, unedited, reconstructed = (ManipulationError(mask) for _ in range(3))
        for start in range(0, len(sources), batch_size):
            source = torch.from_numpy(np.asarray(vertices[sources[start:start + batch_size]])).to(model.mean)
            target = torch.from_numpy(np.asarray(vertices[targets[start:start + batch_size]])).to(model.mean)
            edited.update(model.edit(source, model.control_displacements(source, target)), target)
            unedited.update(model(source), target)
            reconstructed.update(model(target), target)
        values = {key: float(value) for key, value in edited.compute().items()}
        no_edit, full = float(unedited.compute()["all"]), float(reconstructed.compute()["all"])
        group = f"manipulation_{change}"
        results.update({f"{group}/control_mm": values["control"], f"{group}/non_control_mm": values["non_control"],
                        f"{group}/all_mm": values["all"], f"{group}/unedited_mm": no_edit,
                        f"{group}/target_reconstruction_mm": full,
                        f"{group}/gap_closed": (no_edit - values["all"]) / (no_edit - full),
                        f"{group}/pairs": float(len(sources))})
    return results


@torch.no_grad()
def self_intersections(model: MorphableModel, data: MeshDataModule, meshes: int = 200,
                       seed: int = 0) -> dict[str, float]:
    """Self-intersecting faces per mesh of the reconstructions and of the true meshes, on a seeded subset of at most
    ``meshes`` test meshes."""
    test = data.split_indices["test"]
    chosen = np.sort(np.random.default_rng(seed).choice(test, min(meshes, len(test)), replace=False))
    truth = torch.from_numpy(np.array(data.collection.vertices[chosen]))
    reconstructed, original = SelfIntersections(data.template.faces), SelfIntersections(data.template.faces)
    original.update(truth)
    for chunk in truth.split(64):
        reconstructed.update(model(chunk.to(model.mean)))
    return {"mesh_quality/self_intersections_reconstruction": float(reconstructed.compute()["mean"]),
            "mesh_quality/self_intersections_data": float(original.compute()["mean"])}


def _generate(model: MorphableModel, train: MeshSubset, count: int, seed: int, batch_size: int) -> Tensor:
    """``count`` samples of ``model``; an autoencoder without a latent distribution gets one from ``train``."""
    if model.latent_mean.numel() == 0:
        model.fit_latent_distribution(
            {"vertices": batch["vertices"].to(model.mean)} for batch in _batches(train, batch_size))
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([model.sample(min(batch_size, count - start), generator=generator).cpu()
                      for start in range(0, count, batch_size)])


@torch.no_grad()
def test_error_maps(model, data: MeshDataModule) -> dict[str, np.ndarray]:
    """The test split's :class:`VertexError` (mean, std, median, per-mesh and per-vertex errors, cumulative curve)
    and the median-error test mesh with its reconstruction: what error maps and reports show."""
    model.eval()
    metric = VertexError()
    for batch in data.test_dataloader():
        vertices = batch["vertices"].to(model.mean)
        metric.update(model(vertices), vertices)
    result = {key: value.cpu().numpy() for key, value in metric.compute().items()}
    index = data.split_indices["test"][int(np.argsort(result["per_mesh"])[len(result["per_mesh"]) // 2])]
    truth = np.array(data.collection.vertices[index])  # a writable copy of the memory-mapped mesh
    result.update(example_index=int(index), example_truth=truth,
                  example_reconstruction=model(torch.from_numpy(truth).to(model.mean)).cpu().numpy())
    return result


DATA_DIVERSITY_MESHES = 4000


def data_diversity(data: MeshDataModule, pairs: int = 10_000, seed: int = 0) -> dict[str, float]:
    """The diversity of the training meshes (mm): overall and, where the labels exist and some value has two meshes,
    within the same identity and within the same expression (or sequence): the reference values for a generator's
    diversity.

    Pairs are drawn among a seeded random subset of at most ``DATA_DIVERSITY_MESHES`` training meshes: ``pairs``
    random pairs never involve more meshes than that, and the subset keeps memory bounded on large datasets.
    """
    train = data.split_indices["train"]
    if len(train) > DATA_DIVERSITY_MESHES:
        train = np.random.default_rng(seed).choice(train, DATA_DIVERSITY_MESHES, replace=False)
    train = np.sort(train)
    meshes = torch.from_numpy(np.asarray(data.collection.vertices[train]))
    results = {}
    for name, label in (("global", None), ("same_identity", "identity"), ("same_expression", "expression"),
                        ("same_sequence", "sequence")):
        if label is not None and label not in data.collection.labels:
            continue
        groups = None if label is None else torch.as_tensor(data.collection.labels[label][train])
        if groups is not None and torch.unique(groups, return_counts=True)[1].max() < 2:
            continue  # one mesh per label value (anny-heads: one head per person): no within-group pair exists
        metric = Diversity(pairs=pairs, seed=seed)
        metric.update(meshes, groups)
        results[f"data/diversity_{name}_mm"] = float(metric.compute()["mean"])
    return results


def middle_frames(data: MeshDataModule, split: str = "test") -> np.ndarray:
    """Collection indices of the middle frame of every sequence (identity × expression) in a split (sorted), the
    decoupled GAN's Table 2 targets ("the middle frame of each sequence")."""
    indices = np.sort(data.split_indices[split])
    labels = data.collection.labels
    order = labels["frame"][indices] if "frame" in labels else np.arange(len(indices))
    sequence = labels["identity"][indices] * (labels["expression"].max() + 1) + labels["expression"][indices]
    ranking = np.lexsort((order, sequence))  # by sequence, then frame
    _, start, counts = np.unique(sequence[ranking], return_index=True, return_counts=True)
    return np.sort(indices[ranking][start + counts // 2])


def landmark_fitting_errors(model: MorphableModel, data: MeshDataModule, prior_weights=(0.0, 1e-3, 1e-2),
                            steps: int = 500, learning_rate: float = 0.05, batch_size: int = 64) -> dict[str, float]:
    """Table 2 of the decoupled GAN: fit each model to the template's landmarks on the middle frame of every test
    sequence (:func:`~morphzoo.fitting.fit_landmarks`, from the latent Gaussian's mean) and report the RMSE (mm) of
    the fitted mesh against the true mesh over all vertices, for each prior weight λ (per mm², on the whitened
    code). An autoencoder without a latent Gaussian gets one from the training split first."""
    if data.template.landmarks is None:
        raise ValueError(f"landmark fitting needs landmarks on the template '{data.template.name}' "
                         "(Template.landmarks; anny-face has 85)")
    model.eval()
    if model.latent_mean.numel() == 0:
        model.fit_latent_distribution(
            {"vertices": batch["vertices"].to(model.mean)} for batch in _batches(data.subset("train"), batch_size))
    targets = torch.from_numpy(np.asarray(data.collection.vertices[middle_frames(data)])).to(model.mean)
    landmarks = torch.as_tensor(data.template.landmarks)
    results = {}
    for weight in prior_weights:
        squared = torch.cat([
            (fit_landmarks(model, landmarks, chunk[:, landmarks], prior_weight=weight, steps=steps,
                           learning_rate=learning_rate).vertices - chunk).pow(2).sum(-1).flatten()
            for chunk in targets.split(batch_size)])
        results[f"landmark_fit/lambda_{weight:g}/rmse_mm"] = float(squared.mean().sqrt()) * 1000.0
    results["landmark_fit/targets"] = float(len(targets))
    return results
