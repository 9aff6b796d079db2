"""The computational graph on the residual stream: senders, receivers, and the hooks that give each receiver
its own copy of its input.

Nodes (Elhage et al. 2021's residual-stream view): `input` (the residual entering layer 0), each head `L{l}.H{h}`
(its output projected into the residual stream), each MLP `M{l}`, and `logits` (the residual entering the final
norm). An edge u -> v exists when u writes to the residual before v reads it. A receiver's input is the sum of
its senders' outputs, read through its own pre-norm; `split_receivers` re-runs each attention on one copy of
the residual per head (and each MLP on its own copy), so a delta can be added to one receiver's input alone
(path patching) or its gradient taken alone (edge attribution patching).

Supported: pre-norm blocks: sequential (GPT-2; Llama, Mistral, Qwen2/3, Qwen3-MoE, Mixtral, Phi-3, StarCoder2,
GPT-OSS, Gemma; Granite, whose branches join the residual scaled by its residual multiplier; Gemma-2/3, whose
branches pass a norm of their own before joining it: a head's share of that norm's output is its share of the
norm's input, times the norm's gain at that position in that run; OLMo-2, whose branches read the residual itself
and have only such output norms) and parallel (GPT-NeoX, Cohere: attention and MLP
read the same residual, so a layer's heads do not send to its MLP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.head_outputs import head_output_hook
from workbench.subject import Subject


class Layout(NamedTuple):
    """Where an architecture reads and writes the residual stream; paths relative to base_model / a layer."""

    layers: str
    attn_norm: str | None  # None: the branch reads the residual itself (OLMo-2)
    mlp_norm: str | None  # the attention's pre-norm again where both branches read one norm (Cohere)
    mlp: str
    final_norm: str
    attn_post_norm: str | None = None  # a norm on the attention's output before it joins the residual (Gemma-2/3)
    mlp_post_norm: str | None = None
    parallel: bool = False  # the MLP reads the layer's input, not the residual after the attention


_LLAMA = Layout("layers", "input_layernorm", "post_attention_layernorm", "mlp", "norm")
_GEMMA2 = Layout("layers", "input_layernorm", "pre_feedforward_layernorm", "mlp", "norm", "post_attention_layernorm",
                 "post_feedforward_layernorm")
SITES = {"gpt2": Layout("h", "ln_1", "ln_2", "mlp", "ln_f"), "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
         "qwen3": _LLAMA, "gemma": _LLAMA, "phi3": _LLAMA, "granite": _LLAMA, "starcoder2": _LLAMA,
         "mixtral": _LLAMA, "qwen3_moe": _LLAMA, "gpt_oss": _LLAMA, "gemma2": _GEMMA2, "gemma3_text": _GEMMA2,
         "cohere": Layout("layers", "input_layernorm", "input_layernorm", "mlp", "norm", parallel=True),
         "olmo2": Layout("layers", None, None, "mlp", "norm", "post_attention_layernorm", "post_feedforward_layernorm"),
         "gpt_neox": Layout("layers", "input_layernorm", "post_attention_layernorm", "mlp", "final_layer_norm")}


@dataclass
class Sites:
    """The modules where the residual stream is read and written, per layer, and how the branches join it.

    attn_inputs / mlp_inputs: the modules whose input is the residual each branch reads (its pre-norm, or the
    branch itself where it has none, whose norms are then the identity)."""

    layers: list[nn.Module]
    attn_norms: list[nn.Module]
    mlp_norms: list[nn.Module]
    mlps: list[nn.Module]
    final_norm: nn.Module
    attn_inputs: list[nn.Module]
    mlp_inputs: list[nn.Module]
    attn_post_norms: list[nn.Module] | None = None
    mlp_post_norms: list[nn.Module] | None = None
    parallel: bool = False
    residual_scale: float = 1.0  # Granite's residual_multiplier: each branch joins the residual times this


def sites(subject: Subject) -> Sites:
    """The Sites of a subject; WorkbenchError naming an architecture whose residual is not a sum of its branches."""
    model_type = subject.adapter.model_type
    if model_type not in SITES:
        raise WorkbenchError(f"circuits need a residual stream that each block's branches add to (no norm of the "
                             f"whole stream between layers); {model_type!r} is not one of {sorted(SITES)}")
    layout, config = SITES[model_type], subject.model.config
    base = subject.model.base_model
    layers = list(base.get_submodule(layout.layers))

    def each(path: str | None) -> list[nn.Module] | None:
        return None if path is None else [m.get_submodule(path) for m in layers]

    parallel = layout.parallel or bool(model_type == "gpt_neox" and config.use_parallel_residual)
    attentions, mlps = list(subject.adapter.attention_modules), each(layout.mlp)
    identity = [nn.Identity() for _ in layers]
    attn_norms, mlp_norms = each(layout.attn_norm), each(layout.mlp_norm)
    return Sites(layers, attn_norms or identity, mlp_norms or identity, mlps, base.get_submodule(layout.final_norm),
                 attn_norms or attentions, mlp_norms or mlps, each(layout.attn_post_norm),
                 each(layout.mlp_post_norm), parallel, float(getattr(config, "residual_multiplier", 1.0)))


def on_input(module: nn.Module, fn):
    """Register a forward pre-hook calling fn(x) with the module's input x (first argument or hidden_states)."""
    return module.register_forward_pre_hook(lambda m, args, kwargs: fn(args[0] if args else kwargs["hidden_states"]),
                                            with_kwargs=True)


def mlp_output(out):
    """The tensor an MLP writes to the residual: its output, or the first item where it returns a tuple (GPT-OSS's
    mixture of experts returns its router scores too)."""
    return out[0] if isinstance(out, tuple) else out


def with_mlp_output(out, value: torch.Tensor):
    """`out` (an MLP's output, tensor or tuple) with the written tensor replaced by `value`."""
    return (value, *out[1:]) if isinstance(out, tuple) else value


def head_name(layer: int, head: int) -> str:
    """The node id of a head: L{layer}.H{head}."""
    return f"L{layer}.H{head}"


def parse_head(node: str) -> tuple[int, int]:
    """(layer, head) of a head's node id L{layer}.H{head}."""
    layer, head = node[1:].split(".H")
    return int(layer), int(head)


def head_nodes(nodes) -> list[tuple[int, int]]:
    """The (layer, head) pairs of the head nodes among `nodes`, sorted."""
    return sorted(parse_head(n) for n in nodes if n.startswith("L"))


def senders(subject: Subject) -> list[str]:
    """Sender node ids in graph order: input, then per layer its heads and its MLP."""
    a = subject.adapter
    return ["input"] + [n for l in range(a.n_layers) for n in [*(head_name(l, h) for h in range(a.n_heads)), f"M{l}"]]


def receivers(subject: Subject) -> list[str]:
    """Receiver node ids in graph order: per layer its heads and its MLP, then logits."""
    return senders(subject)[1:] + ["logits"]


def position(node: str, n_layers: int, parallel: bool = False) -> tuple[int, int]:
    """(layer, stage) of a node: stage 0 = attention, 1 = MLP (0 too in a parallel block, where both read the
    layer's input); input is (-1, 1) and logits (n_layers, 0)."""
    if node == "input":
        return -1, 1
    if node == "logits":
        return n_layers, 0
    if node.startswith("M"):
        return int(node[1:]), 0 if parallel else 1
    return parse_head(node)[0], 0


def is_edge(sender: str, receiver: str, n_layers: int, parallel: bool = False) -> bool:
    """Whether `sender` writes to the residual stream before `receiver` reads it (`parallel`: `Sites.parallel`)."""
    return position(sender, n_layers, parallel) < position(receiver, n_layers, parallel)


def edge_test(subject: Subject):
    """is_edge(sender, receiver) for the subject's graph: its number of layers and whether its blocks are parallel."""
    n_layers, parallel = subject.adapter.n_layers, sites(subject).parallel
    return lambda sender, receiver: is_edge(sender, receiver, n_layers, parallel)


@dataclass
class Activations:
    """Each sender's output in the residual stream: input [B, L, d], heads [layer, head, B, L, d],
    mlps [layer, B, L, d]."""

    input: torch.Tensor
    heads: torch.Tensor
    mlps: torch.Tensor

    def __sub__(self, other: Activations) -> Activations:
        return Activations(self.input - other.input, self.heads - other.heads, self.mlps - other.mlps)

    def of(self, node: str) -> torch.Tensor:
        """The [B, L, d] output of sender `node`."""
        if node == "input":
            return self.input
        if node.startswith("M"):
            return self.mlps[int(node[1:])]
        return self.heads[parse_head(node)]


def head_contributions(proj: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Each head's term of the output projection: z [B, L, H, Dh] -> [H, B, L, d] with proj(z) = sum + bias."""
    n_heads = z.shape[2]
    eye = torch.eye(n_heads, dtype=z.dtype, device=z.device)
    masked = z[None] * eye[:, None, None, :, None]  # [H, B, L, H, Dh]: copy h keeps head h only
    flat = masked.reshape(n_heads, *z.shape[:2], -1)
    return proj.forward(flat) - proj.forward(torch.zeros_like(flat[:1]))  # forward: no hooks


def record(subject: Subject, enc: dict[str, torch.Tensor]) -> Activations:
    """Run the model once (no grad) and return every sender's output in the residual stream."""
    s, adapter = sites(subject), subject.adapter
    kept: dict[str, torch.Tensor] = {}
    heads: dict[int, torch.Tensor] = {}

    def keep_z(layer: int, z: torch.Tensor) -> None:
        proj = adapter.out_projections[layer]
        share = head_contributions(proj, z)
        if s.attn_post_norms is not None:  # each head's share of the post-norm's output (the module docstring)
            total = proj.forward(z.reshape(*z.shape[:2], -1))
            gain = s.attn_post_norms[layer].forward(total) / torch.where(total == 0, torch.ones_like(total), total)
            share = share * gain
        heads[layer] = share * s.residual_scale

    def keep_mlp(layer: int):
        return lambda m, args, out: kept.__setitem__(f"M{layer}", mlp_output(out) * s.residual_scale)

    writers = s.mlps if s.mlp_post_norms is None else s.mlp_post_norms
    handles = [on_input(s.attn_inputs[0], lambda x: kept.__setitem__("input", x))]
    handles += [module.register_forward_hook(keep_mlp(l)) for l, module in enumerate(writers)]
    try:
        with torch.no_grad(), head_output_hook(subject, keep_z):
            subject.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return Activations(kept["input"].float(), torch.stack([heads[l] for l in range(adapter.n_layers)]).float(),
                       torch.stack([kept[f"M{l}"] for l in range(adapter.n_layers)]).float())


@dataclass
class ReceiverDeltas:
    """What is added to each receiver's input: heads [layer, head, B, L, d], mlps [layer, B, L, d], logits [B, L, d].
    Leaves with requires_grad collect each receiver's input gradient in `.grad`."""

    heads: torch.Tensor
    mlps: torch.Tensor
    logits: torch.Tensor

    @classmethod
    def zeros(cls, subject: Subject, batch: int, length: int, requires_grad: bool = False) -> ReceiverDeltas:
        a, d = subject.adapter, subject.model.config.hidden_size
        make = lambda *shape: torch.zeros(*shape, device=subject.device, requires_grad=requires_grad)  # noqa: E731
        return cls(make(a.n_layers, a.n_heads, batch, length, d), make(a.n_layers, batch, length, d),
                   make(batch, length, d))

    def of(self, node: str) -> torch.Tensor:
        """The [B, L, d] slot of receiver `node` (a view: writing to it changes the deltas)."""
        if node == "logits":
            return self.logits
        if node.startswith("M"):
            return self.mlps[int(node[1:])]
        return self.heads[parse_head(node)]


def _expand(value, batch: int, copies: int):
    """Repeat batch-shaped tensors (dim 0 == batch, 2+ dims) `copies` times along dim 0, inside tuples too."""
    if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch and batch > 1:
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    if isinstance(value, tuple):
        return tuple(_expand(v, batch, copies) for v in value)
    return value


@contextlib.contextmanager
def split_receivers(subject: Subject, deltas: ReceiverDeltas) -> Iterator[None]:
    """While the block runs, each head reads its own copy of the residual plus deltas.heads[l, h], each MLP its
    own copy plus deltas.mlps[l], and the final norm the residual plus deltas.logits. With zero deltas the
    model's outputs are unchanged. Hooks are removed on exit, also on error."""
    s, adapter = sites(subject), subject.adapter
    n_heads = adapter.n_heads
    stash: dict[str, torch.Tensor] = {}
    inside: list[int] = []  # the layer whose attention is being re-run

    def combine(layer: int, z: torch.Tensor) -> torch.Tensor | None:
        if not inside or inside[-1] != layer:
            return None
        copies = z.reshape(n_heads, -1, *z.shape[1:])  # [copy, B, L, H, Dh]
        own = torch.stack([copies[h, :, :, h] for h in range(n_heads)], dim=2)  # head h from copy h
        return torch.cat([own[None], torch.zeros_like(copies[1:])]).reshape(z.shape)

    def stash_input(key):
        def keep(x):
            if not inside:
                stash[key] = x
        return keep

    def rerun_attention(layer: int):
        def hook(module, args, kwargs, output):
            if inside:
                return None
            x = stash.pop(f"a{layer}")
            batch = x.shape[0]
            copies = (x[None] + deltas.heads[layer].to(x.dtype)).reshape(n_heads * batch, *x.shape[1:])
            inside.append(layer)
            try:
                hidden = s.attn_norms[layer](copies)
                new_args = (hidden, *(_expand(a, batch, n_heads) for a in args[1:])) if args else ()
                new_kwargs = {k: None if "past" in k else _expand(v, batch, n_heads) for k, v in kwargs.items()}
                if not args:
                    new_kwargs["hidden_states"] = hidden
                out = module(*new_args, **new_kwargs)
            finally:
                inside.pop()
            return (out[0][:batch], *output[1:])
        return hook

    def rerun_mlp(layer: int):
        def hook(module, args, output):
            if inside:
                return None
            x = stash.pop(f"m{layer}")
            inside.append(-1)
            try:
                return module(s.mlp_norms[layer](x + deltas.mlps[layer].to(x.dtype)))
            finally:
                inside.pop()
        return hook

    def add_logits(module, args):
        return (args[0] + deltas.logits.to(args[0].dtype), *args[1:])

    handles = [s.final_norm.register_forward_pre_hook(add_logits)]
    for layer in range(adapter.n_layers):
        handles.append(on_input(s.attn_inputs[layer], stash_input(f"a{layer}")))
        handles.append(adapter.attention_modules[layer].register_forward_hook(rerun_attention(layer),
                                                                              with_kwargs=True))
        handles.append(on_input(s.mlp_inputs[layer], stash_input(f"m{layer}")))
        handles.append(s.mlps[layer].register_forward_hook(rerun_mlp(layer)))
    try:
        with head_output_hook(subject, combine):
            yield
    finally:
        for h in handles:
            h.remove()
