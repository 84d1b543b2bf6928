"""Mesh toolkit: templates, I/O, QEM sampling hierarchies, spirals and graph operators."""

from morphzoo.mesh.graph import adjacency_matrix, edge_index, scaled_laplacian, sparse_to_torch
from morphzoo.mesh.io import read_mesh, read_points, read_polygon_mesh, read_template, write_mesh
from morphzoo.mesh.sampling import MeshHierarchy, SamplingLevel, mesh_hierarchy
from morphzoo.mesh.spirals import neural3dmm_spirals, spiralnet_spirals
from morphzoo.mesh.template import Template, triangulate_polygons

__all__ = [
    "MeshHierarchy",
    "SamplingLevel",
    "Template",
    "adjacency_matrix",
    "edge_index",
    "mesh_hierarchy",
    "neural3dmm_spirals",
    "read_mesh",
    "read_points",
    "read_polygon_mesh",
    "read_template",
    "scaled_laplacian",
    "sparse_to_torch",
    "spiralnet_spirals",
    "triangulate_polygons",
    "write_mesh",
]
