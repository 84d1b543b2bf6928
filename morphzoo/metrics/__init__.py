"""torchmetrics ``Metric``s: inputs in metres, outputs in millimetres, usable with or without Lightning, DDP-safe."""

from morphzoo.metrics.alignment import similarity_procrustes
from morphzoo.metrics.compactness import Compactness, PCAGeneralisation
from morphzoo.metrics.decoupling import Decoupling, choose_threshold
from morphzoo.metrics.disentanglement import DisentanglementError, JiangDisentanglementError
from morphzoo.metrics.diversity import Diversity
from morphzoo.metrics.manipulation import ManipulationError
from morphzoo.metrics.roughness import Roughness
from morphzoo.metrics.self_intersection import SelfIntersections, self_intersecting_faces
from morphzoo.metrics.specificity import Specificity
from morphzoo.metrics.vertex_error import VertexError

__all__ = [
    "Compactness", "Decoupling", "DisentanglementError", "Diversity", "JiangDisentanglementError", "ManipulationError",
    "PCAGeneralisation", "Roughness", "SelfIntersections", "Specificity", "VertexError", "choose_threshold",
    "self_intersecting_faces", "similarity_procrustes",
]

