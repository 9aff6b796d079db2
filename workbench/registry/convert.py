"""Convert a GGUF checkpoint once into a plain Hugging Face folder (float32 safetensors + tokenizer files).

transformers reads GGUF (`from_pretrained(folder, gguf_file=...)`, with `gguf` installed) and dequantizes it,
but that takes tens of seconds and a GGUF-loaded model refuses `save_pretrained`; so the weights are written
with safetensors' `save_model` (which drops the tied copies) beside the model's config and tokenizer. The
folder is built in a temporary directory and renamed into place: an interrupted conversion leaves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from workbench.atomic import atomic_folder
from workbench.registry import MARKER, sha256

console = Console(stderr=True)


def convert_gguf(gguf: Path, dest: Path, meta: dict) -> Path:
    """Write `gguf` as a Hugging Face folder at `dest` (replacing it whole) and return `dest`."""
    status = console.status(f"Converting {gguf.name} once into {dest} (float32 safetensors)...")
    with atomic_folder(dest) as tmp, status:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {**meta, "dtype": "float32", "gguf_file": gguf.name, "gguf_sha256": sha256(gguf),
                  "weights_sha256": sha256(tmp / "model.safetensors")}
        (tmp / MARKER).write_text(json.dumps(record, indent=1))
    return dest
