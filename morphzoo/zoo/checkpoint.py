"""The zoo's checkpoint folder: ``model.safetensors`` + ``config.json``, laid out like a Hugging Face Hub repo.

- ``model.safetensors``: the model's ``state_dict`` (parameters and persistent buffers, including the template, the
  training split's mean/std and the latent Gaussian). safetensors holds raw tensors only: nothing on the load path is
  unpickled. Floating tensors may be stored in float16 (``fp16=True``) and are upcast to float32 on load; integer
  buffers (faces, sampling and spiral indices) keep their dtype.
- ``config.json``: ``class_path`` and ``init_args`` (the constructor arguments, as in the recipe), the template's
  fingerprint, name and vertex count, the dataset, metrics, parameter count and provenance.

Loading rebuilds the :class:`~morphzoo.mesh.template.Template` from the ``template_vertices``/``template_faces``
buffers, checks its fingerprint against ``config.json``, builds the model from ``class_path`` + ``init_args`` and
loads the weights *strictly*: every missing key, unexpected key, shape or dtype-kind mismatch is listed in one error.
A buffer that is empty in a freshly built model (e.g. ``latent_mean`` before ``fit_latent_distribution``) is an
unfitted placeholder that the model resizes itself (``MorphableModel._load_from_state_dict``): it takes any shape.

Choice (the papers are silent on storage): ``fp16=True`` stores the learned *parameters* in float16; every floating
buffer stays float32. Buffers hold metre-space quantities (template, mean/std, the latent Gaussian, PCA's components,
barycentric up-sampling weights) that enter the outputs directly, where float16's 11-bit mantissa would cost ~0.03 mm
at 0.1 m; they are small next to the weights of a neural model, so keeping them costs little.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from morphzoo.cache import atomic_file, entry_lock, temporary_directory_for
from morphzoo.errors import MorphzooError
from morphzoo.mesh.template import Template
from morphzoo.methods.base import MorphableModel

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "morphzoo-checkpoint"
FORMAT_VERSION = 1
# Buffers every MorphableModel has; the template and normalisation are rebuilt from them.
DATA_BUFFERS = ("template_vertices", "template_faces", "mean", "std")


class CheckpointError(MorphzooError, ValueError):
    """A checkpoint folder that cannot be loaded faithfully (bad config, tampered files, mismatching weights)."""


def class_path_of(model_class: type) -> str:
    """``module.Class``, preferring the shortest public module that exports the class (``morphzoo.methods.CoMA``)."""
    parts = model_class.__module__.split(".")
    for depth in range(1, len(parts) + 1):
        module = importlib.import_module(".".join(parts[:depth]))
        if getattr(module, model_class.__qualname__, None) is model_class:
            return f"{module.__name__}.{model_class.__qualname__}"
    return f"{model_class.__module__}.{model_class.__qualname__}"


def import_model_class(class_path: str, source: str = "config.json") -> type[MorphableModel]:
    """Import ``class_path`` and check that it names a :class:`MorphableModel` subclass."""
    module_name, _, class_name = str(class_path).rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{source}: class_path {class_path!r} cannot be imported ({error}). Use a class such as "
                              "'morphzoo.methods.SpiralNetPlusPlus'.") from None
    if not (isinstance(model_class, type) and issubclass(model_class, MorphableModel)):
        raise CheckpointError(f"{source}: class_path {class_path!r} is not a morphzoo MorphableModel subclass")
    return model_class


def init_args_of(model: MorphableModel) -> dict[str, Any]:
    """The constructor arguments saved by ``save_hyperparameters`` (LightningCLI's ``_class_path`` etc. dropped)."""
    return json.loads(json.dumps({k: v for k, v in dict(model.hparams).items() if not k.startswith("_")},
                                 default=list))


def count_parameters(model: MorphableModel) -> int:
    """The model's size as the registry reports it (:meth:`MorphableModel.num_learned_values`)."""
    return model.num_learned_values()


def _storage_state(model: MorphableModel, fp16: bool) -> dict[str, torch.Tensor]:
    parameters = {name for name, _ in model.named_parameters()}
    state = {}
    for key, tensor in model.state_dict().items():
        if fp16 and key in parameters and tensor.is_floating_point():
            tensor = tensor.half()
        # a copy per key: buffers may share memory (a model built without data statistics has mean = template)
        state[key] = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
    return state


def write_checkpoint(model: MorphableModel, folder: str | Path, *, fp16: bool = False,
                     extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` into ``folder`` (created; it must not exist or be empty), atomically (a hidden
    ``.NAME.lock`` beside it coordinates concurrent writers).

    Args:
        model: any :class:`MorphableModel` built with ``save_hyperparameters``.
        folder: the checkpoint folder to create.
        fp16: store floating weights in float16 (upcast to float32 on load).
        extra: more ``config.json`` fields: ``name``, ``dataset``, ``recipe``, ``metrics``, ``provenance``...
    """
    folder = Path(folder)
    if getattr(model, "is_materialised", False):
        raise CheckpointError(f"{type(model).__name__} is in its inference form (materialised): write the trained "
                              "model; loading the checkpoint materialises it again")
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty: choose a new output folder or remove it first")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class_path": class_path_of(type(model)),
        "init_args": init_args_of(model),
        "template": {"fingerprint": model.template.fingerprint(), "name": model.template.name,
                     "num_vertices": model.template.num_vertices},
        "dtype": "float16" if fp16 else "float32",
        "num_params": count_parameters(model),
        **dict(extra or {}),
    }
    model.on_save_checkpoint(config)  # the method's own saved fields, as in a Lightning checkpoint (LAMM: region names)
    # the folder's lock: a concurrent export of the same folder waits, and a killed one's temporary is removed
    with entry_lock(folder), temporary_directory_for(folder) as tmp:
        # Serialised in memory and written by Python, so that a full disk raises an OSError (named by the cache)
        # rather than safetensors' own error type. One metadata key: safetensors writes its metadata map in hash
        # order, so two keys made the same weights hash differently from run to run (the format lives in config.json).
        (tmp / WEIGHTS_NAME).write_bytes(save(_storage_state(model, fp16), metadata={"format": "pt"}))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    return folder


def update_config(folder: str | Path, fields: Mapping[str, Any]) -> None:
    """Merge ``fields`` (metrics, provenance...) into a checkpoint folder's ``config.json``, atomically."""
    path = Path(folder) / CONFIG_NAME
    config = read_config(folder) | dict(fields)
    with atomic_file(path, "w") as file:
        file.write(json.dumps(config, indent=2) + "\n")


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a morphzoo checkpoint folder: {CONFIG_NAME} is missing "
                              f"(expected {WEIGHTS_NAME} + {CONFIG_NAME}; write one with `morphzoo export`)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    missing = [key for key in ("class_path", "init_args", "template") if key not in config]
    if not isinstance(config, dict) or missing:
        raise CheckpointError(f"{path} lacks the fields {missing}: it was not written by morphzoo's export")
    if not isinstance(config["init_args"], dict) or "fingerprint" not in config["template"]:
        raise CheckpointError(f"{path}: init_args must be a mapping and template must hold a fingerprint")
    return config


def state_dict_problems(expected: Mapping[str, torch.Tensor], provided: Mapping[str, torch.Tensor]) -> list[str]:
    """Every difference between a model's ``state_dict`` and a checkpoint's, one line each (empty = loadable).

    An empty expected tensor is an unfitted placeholder and accepts any shape (see the module docstring).
    """
    problems = [f"missing key {key!r} (shape {tuple(expected[key].shape)})" for key in expected if key not in provided]
    problems += [f"unexpected key {key!r} (shape {tuple(provided[key].shape)})" for key in provided
                 if key not in expected]
    for key in expected.keys() & provided.keys():
        want, got = expected[key], provided[key]
        if want.numel() > 0 and want.shape != got.shape:
            problems.append(f"shape mismatch for {key!r}: the model has {tuple(want.shape)}, the checkpoint "
                            f"{tuple(got.shape)}")
        if want.is_floating_point() != got.is_floating_point():
            problems.append(f"dtype mismatch for {key!r}: the model has {want.dtype}, the checkpoint {got.dtype}")
    return sorted(problems)


def build_model(config: Mapping[str, Any], state: dict[str, torch.Tensor], source: str) -> MorphableModel:
    """Build ``config["class_path"]`` from ``config["init_args"]`` and the data buffers of ``state``; load strictly."""
    model_class = import_model_class(config["class_path"], source)
    absent = [name for name in DATA_BUFFERS if name not in state]
    if absent:
        raise CheckpointError(f"{source}: the weights lack the buffers {absent} that every MorphableModel saves; "
                              "the file is not a morphzoo model's state_dict")
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    template = Template(vertices=state["template_vertices"].double().numpy(), faces=state["template_faces"].numpy(),
                        name=str(config["template"].get("name", "template")))
    if template.fingerprint() != config["template"]["fingerprint"]:
        raise CheckpointError(f"{source}: template fingerprint mismatch: config.json says "
                              f"{config['template']['fingerprint']}, the weights' template buffers give "
                              f"{template.fingerprint()}. config.json and model.safetensors do not belong together.")
    template, init_args = model_class.restore_arguments(template, state, dict(config["init_args"]), dict(config))
    try:
        model = model_class(template=template, mean=state["mean"], std=state["std"], **init_args)
    except TypeError as error:
        raise CheckpointError(f"{source}: init_args do not fit {config['class_path']} ({error})") from None
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit {config['class_path']}"
                              f"({json.dumps(config['init_args'])}); {len(problems)} problem(s):\n  - "
                              + "\n  - ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def prepare_for_inference(model: MorphableModel, device: str | torch.device | None = None) -> MorphableModel:
    """Move to ``device`` and switch to inference: ``model.prepare_inference()`` where the class has it, else eval."""
    if device is not None:
        model = model.to(device)
    prepare = getattr(model, "prepare_inference", None)
    return prepare() if callable(prepare) else model.eval()


def load_checkpoint(folder: str | Path, device: str | torch.device | None = None) -> MorphableModel:
    """Load a checkpoint folder (see the module docstring) into a ready model in inference mode."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS_NAME} is missing")
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own SafetensorError on truncated or malformed files
        raise CheckpointError(f"{weights} cannot be read as safetensors ({error})") from None
    return prepare_for_inference(build_model(config, state, str(folder)), device)


def export_lightning_checkpoint(ckpt: str | Path, folder: str | Path, *, fp16: bool = False,
                                class_path: str | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """A Lightning ``.ckpt`` written by ``morphzoo fit`` -> a checkpoint folder.

    The ``.ckpt`` is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling). Its class comes from
    ``class_path`` or, by default, LightningCLI's ``_class_path`` hyperparameter.
    """
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{ckpt} cannot be read as a Lightning checkpoint with weights_only=True ({error})") \
            from None
    hyperparameters = dict(checkpoint.get("hyper_parameters", {}))
    class_path = class_path or hyperparameters.get("_class_path")
    if not class_path:
        raise CheckpointError(f"{ckpt} does not record its model class: pass --class-path "
                              "(e.g. morphzoo.methods.SpiralNetPlusPlus)")
    init_args = {k: v for k, v in hyperparameters.items() if not k.startswith("_")}
    config = {"class_path": class_path, "init_args": json.loads(json.dumps(init_args, default=list)),
              "template": {"fingerprint": Template(
                  vertices=checkpoint["state_dict"]["template_vertices"].double().numpy(),
                  faces=checkpoint["state_dict"]["template_faces"].numpy()).fingerprint()}}
    model = build_model(config, checkpoint["state_dict"], str(ckpt))
    return write_checkpoint(model, folder, fp16=fp16, extra=extra)
