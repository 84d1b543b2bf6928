"""UHM12k: the registered head meshes of LAMM (Tarasiou et al., CVPR 2024, supplement).

About 6k neutral heads registered to one 12k-vertex quad template, with 11 semantic regions, read with the
registered-mesh folder reader (:mod:`morphzoo.data.folder`): ``root`` holds the quad ``.obj`` meshes (``.ply`` works
too) and a ``regions.json`` ``{"region name": [vertex indices], ...}``. The quads are kept: the template's
``polygons`` are the files' and every mesh must have them (its ``faces``, the triangulation every method uses,
split each quad along its shorter diagonal on the template).

The split: LAMM does not publish its train/test split. ``split_file`` (a JSON ``{"train": [...], "test": [...]}`` of
mesh paths relative to ``root``; see :mod:`morphzoo.data.splits`) uses yours with ``split: file``; without one, the
split is a seeded (``split_seed``) random ``test_size`` of the meshes, 10 % by default: numbers on it are not
LAMM's numbers.
"""

from __future__ import annotations

from morphzoo.data.folder import MeshFolderDataModule
from morphzoo.errors import DataError


class UHMDataModule(MeshFolderDataModule):
    """UHM12k (see the module docstring): a folder of quad head meshes with a ``regions.json``.

    Args:
        root: the folder of UHM12k meshes.
        template: optional template mesh file; default: the first mesh.
        split: ``file`` when ``split_file`` is given, else ``random`` (LAMM's split is not published); any protocol
            of :mod:`morphzoo.data.splits` the data allows.
        split_file: your split's JSON file of mesh names.
        test_size: the ``random`` split's test meshes: a count or a fraction (default 10 %).
        **kwargs: the other options of :class:`~morphzoo.data.folder.MeshFolderDataModule`.
    """

    dataset = "uhm12k"

    def __init__(self, root: str, template: str | None = None, split: str | None = None,
                 split_file: str | None = None, test_size: int | float = 0.1, **kwargs) -> None:
        if split not in (None, "file") and split_file is not None:
            raise DataError(f"uhm12k: split_file {split_file} is read by split 'file' only, but split is {split!r}; "
                             "leave split unset (or 'file') to use the file, or drop split_file")
        split = split or ("file" if split_file is not None else "random")
        super().__init__(root, template, split=split, split_file=split_file, test_size=test_size, **kwargs)
