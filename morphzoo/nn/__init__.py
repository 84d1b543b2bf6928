"""Reusable mesh layers: small, documented ``nn.Module``s with the formula in the docstring."""

from morphzoo.nn.chebconv import ChebConv
from morphzoo.nn.feature_aggregation import FeatureAggregation, SparseMapping
from morphzoo.nn.geometry_mapping import GeometryMapping
from morphzoo.nn.mesh_embedding import MeshEmbeddingNet, semi_hard_triplet_loss, vertex_normals
from morphzoo.nn.pointcloud import OffsetAttention, PointCloudTransformer, SampleAndGroup, farthest_point_sampling, knn
from morphzoo.nn.pooling import Downsample, Upsample
from morphzoo.nn.spiralconv import SpiralConv
from morphzoo.nn.transformer import MixerBlock, TokenBackbone, TransformerBlock

__all__ = ["ChebConv", "Downsample", "FeatureAggregation", "GeometryMapping", "MeshEmbeddingNet", "MixerBlock",
           "OffsetAttention", "PointCloudTransformer", "SampleAndGroup", "SparseMapping", "SpiralConv", "TokenBackbone",
           "TransformerBlock", "Upsample", "farthest_point_sampling", "knn", "semi_hard_triplet_loss", "vertex_normals"]
