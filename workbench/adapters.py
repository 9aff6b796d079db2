"""Architecture adapters: the facts about a Hugging Face model that the tracer and the head edits need.

For each supported `config.model_type` the adapter knows where the layer list lives (relative to the
model's `base_model`), which submodule is the attention module that transformers' AttentionInterface
calls, and which linear layer is the attention's output projection (its input is the concatenation of
the per-head outputs, the seam where head-output edits act).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.errors import HeadNotFoundError, WorkbenchError

_LLAMA_LIKE = ("layers", "self_attn", "self_attn.o_proj")

# model_type -> (layer list, attention module, output projection), paths relative to base_model / a layer
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "gpt2": ("h", "attn", "attn.c_proj"),
    "gpt_neox": ("layers", "attention", "attention.dense"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "cohere": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "gpt_oss": _LLAMA_LIKE,
    "bert": ("encoder.layer", "attention.self", "attention.output.dense"),
}


# config flags of attention features the kernels do not implement -> what they are
UNSUPPORTED_FEATURES = {"alibi": "ALiBi position biases", "use_alibi": "ALiBi position biases"}


@dataclass
class Adapter:
    """What the workbench needs to know about one model's attention (n_layers, heads, where things are)."""

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    is_causal: bool
    sliding_window: int | None
    layer_types: list[str]  # "full_attention" or "sliding_attention", one per layer
    learned_sinks: bool  # a learned sink logit per head in every softmax denominator (GPT-OSS)
    attention_modules: list[nn.Module] = field(repr=False)
    out_projections: list[nn.Module] = field(repr=False)
    layers: list[nn.Module] = field(default_factory=list, repr=False)  # the decoder (or encoder) layers, in order

    def layer_of(self) -> dict[int, int]:
        """id(attention module) -> layer index, the map the tracer files statistics by."""
        return {id(m): i for i, m in enumerate(self.attention_modules)}

    def check_head(self, layer: int, head: int) -> None:
        """Raise HeadNotFoundError naming (layer, head) if the model has no such head."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise HeadNotFoundError(
                f"head ({layer}, {head}) does not exist: the model has layers 0..{self.n_layers - 1} "
                f"and heads 0..{self.n_heads - 1}"
            )

    def facts(self) -> dict[str, object]:
        """The adapter's facts as plain JSON-ready values (for `workbench info`, Trace metadata)."""
        return {
            "model_type": self.model_type, "n_layers": self.n_layers, "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim, "context_length": self.context_length,
            "is_causal": self.is_causal, "sliding_window": self.sliding_window, "layer_types": self.layer_types,
            "learned_sinks": self.learned_sinks,
        }


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def adapter_for(model: nn.Module) -> Adapter:
    """Build the Adapter of a Hugging Face model; WorkbenchError naming the model_type if it is unsupported."""
    config = model.config
    model_type = config.model_type
    if model_type not in ARCHITECTURES:
        raise WorkbenchError(
            f"unsupported architecture {model_type!r}; supported: {sorted(ARCHITECTURES)}"
        )
    unsupported = [name for name in UNSUPPORTED_FEATURES if getattr(config, name, False)]
    if unsupported:
        raise WorkbenchError(f"model_type {model_type!r} with {unsupported} switched on: the workbench kernels do not "
                             f"implement {', '.join(UNSUPPORTED_FEATURES[n] for n in unsupported)}")
    layers_path, attn_path, out_path = ARCHITECTURES[model_type]
    base = model.base_model
    layers = list(_get(base, layers_path))
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or (
        ["sliding_attention" if window else "full_attention"] * len(layers)
    )
    attention_modules = [_get(layer, attn_path) for layer in layers]
    return Adapter(
        model_type=model_type,
        n_layers=len(layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        context_length=_context_length(config),
        is_causal=model_type != "bert" or bool(getattr(config, "is_decoder", False)),
        sliding_window=window if "sliding_attention" in layer_types else None,
        layer_types=list(layer_types),
        learned_sinks=any(isinstance(getattr(m, "sinks", None), torch.Tensor) for m in attention_modules),
        attention_modules=attention_modules,
        out_projections=[_get(layer, out_path) for layer in layers],
        layers=layers,
    )


def _context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise WorkbenchError(f"cannot tell the context length of model_type {config.model_type!r}")

