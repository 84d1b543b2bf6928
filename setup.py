"""setuptools hook: a built wheel carries the registry, the recipes and the bundled zoo inside the package.

They stay at the repository's top level (``checkpoints.yaml``, ``recipes/``, ``zoo/``: the layout users know); a
non-editable build copies them into ``morphzoo/_shipped/``, where :mod:`morphzoo.resources` finds them. An editable
install reads them from the checkout directly. Everything else is in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("checkpoints.yaml", "recipes", "zoo")  # morphzoo.resources.SHIPPED (not imported: setup runs before install)


class BuildPyWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "morphzoo" / "_shipped"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in SHIPPED:
            source = ROOT / name
            if source.is_dir():
                # hidden entries are build leftovers (zoo/.<name>.build.*), never shipped
                shutil.copytree(source, target / name, ignore=shutil.ignore_patterns(".*", "__pycache__"))
            else:
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
