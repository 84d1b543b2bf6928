"""Choose anny-face's 85 sparse landmarks once (the decoupled GAN's Table 2 uses 85; Abrevaya et al. 2019, Fig. 10b).

Candidates: template vertices of the facial regions whose normal faces forward (-Y, anny's facing direction) by more
than 60°, which keeps the outer skin and drops the mouth cavity and eye sockets. Farthest-point sampling over them by
Euclidean distance, starting at the nose tip (the most forward vertex), spreads 85 landmarks over the face.
Prints the indices to paste into ``morphzoo/data/synth/face.py`` (``LANDMARKS``).
"""

import numpy as np
import trimesh

from morphzoo.data.anny import load_anny_dataset

FACIAL_REGIONS = ("mouth", "eye.L", "eye.R", "chin", "nose", "eyebrows", "forehead", "cheek.L", "cheek.R")
COUNT = 85

template = load_anny_dataset("anny-face", "tiny").template
normals = trimesh.Trimesh(template.vertices, template.faces, process=False).vertex_normals
facial = np.isin(template.regions, [template.region_names.index(name) for name in FACIAL_REGIONS])
candidates = np.flatnonzero(facial & (normals[:, 1] < -0.5))
points = template.vertices[candidates]
chosen = [int(np.argmin(points[:, 1]))]
distance = np.linalg.norm(points - points[chosen[0]], axis=1)
while len(chosen) < COUNT:
    chosen.append(int(np.argmax(distance)))
    distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
print(tuple(int(i) for i in candidates[chosen]))
