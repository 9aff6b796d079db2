"""The workbench attention inside a TransformerLens 4 TransformerBridge.

A bridge (`Subject.bridge()`) replaces each attention layer of the Hugging Face model it wraps with a
component that re-implements attention, so that it can fire hook_attn_scores and hook_pattern on the full
[batch, head, q, k] map. While a `workbench.capture` is active, `hf_attention` hands each such component's work
back to the Hugging Face module it wraps, whose attention goes through transformers' AttentionInterface, that
is the workbench kernels: the capture records the statistics and applies the in-kernel edits whether the model
or the bridge runs, and no map is built. The hooks of each attention's input and output and every hook outside
the attention (residual stream, MLPs) still fire; hook_q/k/v, hook_attn_scores and hook_pattern do not (a
capture's `patterns=` keeps the maps of chosen heads over a window). Outside captures the bridge is its own.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

from torch import nn


def attention_bridges(model: nn.Module) -> list[nn.Module]:
    """The TransformerLens attention components inside `model` (none unless TransformerLens is imported)."""
    if "transformer_lens.model_bridge.generalized_components.attention" not in sys.modules:
        return []
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return [m for m in model.modules() if isinstance(m, AttentionBridge)
            and type(m).forward is not AttentionBridge.forward and "forward" not in m.__dict__]


@contextlib.contextmanager
def hf_attention(model: nn.Module) -> Iterator[None]:
    """Route the TransformerLens attention components inside `model` through the Hugging Face modules they
    wrap while the block runs (see the module docstring); nothing to do for a model without a bridge."""
    rerouted = attention_bridges(model)
    if rerouted:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

        for module in rerouted:  # on the instance: a bridge component passes attribute writes to its HF module
            module.__dict__["forward"] = types.MethodType(AttentionBridge.forward, module)
    try:
        yield
    finally:
        for module in rerouted:
            del module.__dict__["forward"]
