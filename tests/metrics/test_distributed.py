"""Every metric of the shared package gives the same result when its updates are spread over two processes (torch
distributed, gloo, the way Lightning's DDP syncs metrics) as in one process over all the data."""

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from morphzoo.metrics import (
    Compactness,
    DisentanglementError,
    Diversity,
    JiangDisentanglementError,
    ManipulationError,
    PCAGeneralisation,
    Specificity,
    VertexError,
)

WORLD = 2


def data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = torch.randn(1, 40, 3, generator=generator) * 0.1
    targets = shape + 0.01 * torch.randn(21, 40, 3, generator=generator)  # odd count: uneven shards
    return {"targets": targets, "predictions": targets + 0.002 * torch.randn(21, 40, 3, generator=generator),
            "identity": torch.arange(21) % 4, "reference": shape + 0.01 * torch.randn(30, 40, 3, generator=generator)}


def metrics(inputs: dict[str, torch.Tensor]) -> dict:
    """name -> (metric, update arguments of every mesh, as a function of a row index tensor)."""
    t, p, ident = inputs["targets"], inputs["predictions"], inputs["identity"]
    control = torch.zeros(40, dtype=torch.bool)
    control[:7] = True
    return {
        "vertex_error": (VertexError(), lambda rows: (p[rows], t[rows])),
        "vertex_error_aligned": (VertexError(align="procrustes"), lambda rows: (p[rows], t[rows])),
        "specificity": (Specificity(inputs["reference"]), lambda rows: (p[rows],)),
        "diversity": (Diversity(pairs=50, seed=0), lambda rows: (p[rows],)),
        "diversity_same_identity": (Diversity(pairs=50, seed=0), lambda rows: (p[rows], ident[rows])),
        "disentanglement": (DisentanglementError(), lambda rows: (p[rows], ident[rows])),
        "disentanglement_jiang": (JiangDisentanglementError(), lambda rows: (p[rows], ident[rows])),
        "manipulation": (ManipulationError(control), lambda rows: (p[rows], t[rows])),
        "compactness": (Compactness(max_components=5), lambda rows: (t[rows],)),
        "generalisation": (PCAGeneralisation(inputs["reference"], (1, 4)), lambda rows: (t[rows],)),
    }


# per-mesh outputs follow the order meshes arrive in (rank by rank once gathered); these do not
ORDER_FREE_VECTORS = {"per_vertex", "curve_fraction", "curve_thresholds", "cumulative", "variances", "per_subject",
                      "subjects"}


def scalars(result) -> dict[str, torch.Tensor]:
    """The numbers of a metric's result that do not depend on the order of the meshes."""
    items = result.items() if isinstance(result, dict) else [("value", result)]
    return {str(k): torch.as_tensor(v, dtype=torch.float64) for k, v in items
            if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor)
                                               and (v.dim() == 0 or str(k) in ORDER_FREE_VECTORS))}


def compute_all(rows: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    results = {}
    for name, (metric, arguments) in metrics(data()).items():
        for chunk in rows.split(4):  # several updates per process
            metric.update(*arguments(chunk))
        results[name] = scalars(metric.compute())
    return results


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = compute_all(torch.arange(rank, 21, WORLD))  # interleaved shards, as a DistributedSampler makes
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_agree_with_one():
    single = compute_all(torch.arange(21))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "results.pt")
        mp.start_processes(_worker, args=(str(Path(tmp) / "init"), out), nprocs=WORLD, start_method="spawn")
        distributed = torch.load(out)
    assert distributed.keys() == single.keys()
    for name in single:
        assert distributed[name].keys() == single[name].keys(), name
        for key in single[name]:
            torch.testing.assert_close(distributed[name][key], single[name][key], rtol=1e-5, atol=1e-7,
                                       msg=f"{name}/{key}")
