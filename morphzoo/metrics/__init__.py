"""torchmetrics ``Metric``s: inputs in metres, outputs in millimetres, usable with or without Lightning."""

from morphzoo.metrics.vertex_error import VertexError

__all__ = ["VertexError"]
