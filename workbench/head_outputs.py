"""The second seam: the input of each attention's output projection, split per head.

That input is the concatenation of the heads' outputs, [batch, pos, head x head_dim], so a forward
pre-hook there can read or edit each head's contribution before it is mixed into the residual stream.
Every head-output observation and edit goes through `head_output_hook`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from workbench.subject import Subject

HeadFn = Callable[[int, torch.Tensor], torch.Tensor | None]


@contextlib.contextmanager
def head_output_hook(subject: Subject, fn: HeadFn) -> Iterator[None]:
    """While the block runs, call fn(layer, x) with x = [batch, pos, head, head_dim] before each output
    projection; a tensor fn returns replaces x. The hooks are removed on exit, also on error."""
    adapter = subject.adapter
    handles = []

    def make(layer: int):
        def hook(module, args):
            x = args[0]
            per_head = x.reshape(*x.shape[:-1], adapter.n_heads, adapter.head_dim)
            edited = fn(layer, per_head)
            if edited is None:
                return None
            return (edited.reshape(x.shape).to(x.dtype), *args[1:])
        return hook

    try:
        for layer, proj in enumerate(adapter.out_projections):
            handles.append(proj.register_forward_pre_hook(make(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def record_head_outputs(subject: Subject, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's output [layer, batch, pos, head, head_dim] (float32, CPU) and the attention mask [batch, pos]."""
    enc = subject.encode(inputs)
    outputs: dict[int, torch.Tensor] = {}

    def keep(layer: int, x: torch.Tensor) -> None:
        outputs[layer] = x.detach().float().cpu()

    with torch.no_grad(), head_output_hook(subject, keep):
        subject.model(**enc, use_cache=False)
    return torch.stack([outputs[i] for i in range(subject.adapter.n_layers)]), enc["attention_mask"].bool().cpu()
