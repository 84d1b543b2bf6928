"""Where the files that ship with morphzoo live: the registry (``checkpoints.yaml``), the recipes and the bundled zoo.

In a git checkout (and an editable install) they are the repository's top-level ``checkpoints.yaml``, ``recipes/`` and
``zoo/``. A wheel carries copies of them inside the package, under ``morphzoo/_shipped/`` (``setup.py`` puts them there
at build time), so ``pip install`` then ``morphzoo.load(name)`` or ``morphzoo fit -c spiralnet`` works from any
working directory. Both layouts have the same relative paths, so a registry entry's ``recipe: recipes/x.yaml`` and
``bundled: zoo/x`` resolve the same way in either.
"""

from __future__ import annotations

import difflib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "_shipped"  # filled only in a built wheel
CHECKOUT_DIR = PACKAGE_DIR.parent
REGISTRY_NAME = "checkpoints.yaml"
RECIPES_DIR = "recipes"
SHIPPED = (REGISTRY_NAME, RECIPES_DIR, "zoo")  # what the wheel carries, relative to the resource root


class ResourceError(FileNotFoundError):
    """A shipped file (the registry, a recipe) cannot be found."""


def resource_root() -> Path:
    """The folder holding ``checkpoints.yaml``, ``recipes/`` and ``zoo/``: the wheel's copy, else the checkout."""
    for root in (SHIPPED_DIR, CHECKOUT_DIR):
        if (root / REGISTRY_NAME).is_file() and (root / RECIPES_DIR).is_dir():
            return root
    raise ResourceError(f"morphzoo's shipped files are missing: neither {SHIPPED_DIR} nor {CHECKOUT_DIR} holds "
                        f"{REGISTRY_NAME} and {RECIPES_DIR}/. Reinstall morphzoo (`pip install morphzoo-*.whl`, or "
                        "`bash scripts/install.sh` in a checkout), or set MORPHZOO_REGISTRY to your own registry.")


def recipe_names() -> list[str]:
    """Every shipped recipe, by name: ``spiralnet``, ``coma-dfaust``, ``loggers/wandb``, ..."""
    recipes = resource_root() / RECIPES_DIR
    return sorted(path.relative_to(recipes).with_suffix("").as_posix() for path in recipes.rglob("*.yaml"))


def find_recipe(name: str | Path) -> Path:
    """A recipe file: ``name`` itself if it is a file, else the shipped recipe it names.

    ``spiralnet``, ``spiralnet.yaml`` and ``recipes/spiralnet.yaml`` all name ``recipes/spiralnet.yaml`` of the
    resource root, so the README's commands work from any working directory. An unknown name raises a
    :class:`ResourceError` that suggests the closest shipped names.
    """
    path = Path(name)
    if path.is_file():
        return path.resolve()
    key = path.as_posix().removeprefix(f"{RECIPES_DIR}/").removesuffix(".yaml").removesuffix(".yml")
    names = recipe_names()
    if key in names:
        return resource_root() / RECIPES_DIR / f"{key}.yaml"
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"shipped recipes: {', '.join(names)}"
    raise ResourceError(f"no recipe {str(name)!r}: it is neither a file nor a shipped recipe; {hint}")
