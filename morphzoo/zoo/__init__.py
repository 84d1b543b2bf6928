"""The model zoo: the checkpoint registry and everything that reads or writes checkpoints.

- :mod:`~morphzoo.zoo.registry`: ``checkpoints.yaml`` (schema check, ``list_models`` / ``info`` / ``load``);
- :mod:`~morphzoo.zoo.hub`: verified Hugging Face Hub downloads at pinned commits;
- :mod:`~morphzoo.zoo.checkpoint`: checkpoint folders (``model.safetensors`` + ``config.json``), strict loading;
- :mod:`~morphzoo.zoo.build`: ``morphzoo zoo build`` (train, export, evaluate, register);
- :mod:`~morphzoo.zoo.evaluate` and :mod:`~morphzoo.zoo.figures`: every applicable metric of a model on its dataset,
  error maps and report figures;
- :mod:`~morphzoo.zoo.bench`: ``morphzoo bench``, the leaderboard.
"""

from morphzoo.zoo.evaluate import evaluate_model
from morphzoo.zoo.registry import NotAvailableError, RegistryError, info, list_models, load, load_registry

__all__ = ["NotAvailableError", "RegistryError", "evaluate_model", "info", "list_models", "load", "load_registry"]
