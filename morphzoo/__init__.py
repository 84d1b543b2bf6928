"""morphzoo: a model zoo of neural 3D morphable models.

``morphzoo.load(name)``, ``morphzoo.list_models(pattern, pretrained)`` and ``morphzoo.info(name)`` are the registry's
public face (:mod:`morphzoo.zoo.registry`); they are imported on first use, so ``import morphzoo`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["info", "list_models", "load"]


def __getattr__(name: str):
    if name in __all__:
        from morphzoo.zoo import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'morphzoo' has no attribute {name!r}")
