"""Converting a GGUF checkpoint into a plain Hugging Face folder: float32 safetensors, config and tokenizer.

transformers reads GGUF (`from_pretrained(folder, gguf_file=...)`, with `gguf` installed) and dequantizes every
tensor to float, but that takes 40-90 s on two CPU cores (much of it parsing the GGUF's metadata, once for the
tokenizer and again for the weights), and a GGUF-loaded model refuses `save_pretrained`. So this is done once:
the dequantized tensors are written with safetensors' `save_model` (which stores tied weights once) beside a
config stripped of its `quantization_config` (the folder is no longer a GGUF one) and the converted tokenizer.

Stored dtype: float32, the exact dequantized values (a 4-bit value times a float16 scale plus a float16 offset
needs more mantissa bits than bfloat16's 8 or float16's 11). Measured on three prompts against the GGUF-loaded
model, the float32 folder gives identical logits (max |difference| 0.0), while rounding the weights to bfloat16
moves logits by up to 0.22 (SmolLM2) / 0.17 (Gemma-3) and to float16 by up to 0.035 / 0.022, on logits of
magnitude ~25 (only 18% / 12% of the weights survive bfloat16 exactly); greedy tokens did not change. Attention
statistics are what this project measures, so the stored weights are the exact ones, at twice the disk (540 MB
and 1.07 GB); a caller wanting half precision passes `dtype=` when loading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

WEIGHTS = "model.safetensors"


def load_gguf(gguf: Path, stage: Callable[[str], None]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The GGUF's model dequantized to float32 and its tokenizer; `stage(label)` announces each step."""
    stage("reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    stage("dequantizing the weights")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def gguf_to_folder(gguf: Path, out: Path, stage: Callable[[str], None]) -> Path:
    """Write `gguf` as a Hugging Face folder into the existing empty folder `out`; return the weights file.

    The caller makes `out` a temporary folder and renames it into place afterwards: this function leaves a
    partial folder behind when it fails, so it must never be pointed at the final location.
    """
    model, tokenizer = load_gguf(gguf, stage)
    stage("writing safetensors")
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now; loading must not look for a GGUF
    config.architectures = [type(model).__name__]
    save_model(model, str(out / WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out / WEIGHTS
