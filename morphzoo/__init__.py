"""morphzoo: a model zoo of neural 3D morphable models."""

__version__ = "0.1.0"
