"""Each head's weight matrices, read from the model's own projections, for weight-based analyses (composition).

Row-vector convention, as in Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits"): a
residual vector x [d] is a row; head h reads q = x W_Q, k = x W_K, v = x W_V ([d, dh] each) and writes z W_O
([dh, d]) into the residual stream, so W_QK = W_Q W_K^T and W_OV = W_V W_O are [d, d].

- The attention's input norm is folded into W_Q, W_K and W_V: its per-channel weight as a diagonal, and for a
  LayerNorm also its centering (I - 11^T/d). The division by the input's RMS (or standard deviation) is a scalar
  per token, which no normalized weight-based score sees; biases are left out.
- Grouped-query attention: W_K and W_V of a query head are those of the key/value head it reads (head h reads
  kv head h // (n_heads / n_kv_heads)), so every tensor here has one entry per query head.
- Query/key norms are folded in the same way, as diagonals: per head over dh (Qwen3, Gemma-3) or over all the
  heads' channels (OLMo-2); their division by the RMS is again a scalar per token (and, for OLMo-2, per token
  over all heads at once).
- Rotary position embeddings: `rope_matrices` gives, for a query-key distance t, the [dh, dh] matrix P(t) with
  (rotated q) . (rotated k) = q P(t) k^T, so the QK circuit at distance t is W_Q P(t) W_K^T. It is read off the
  model's own rotary embedding and its own `apply_rotary_pos_emb`, so partial rotary dimensions (Pythia's 25%),
  interleaved pairs (Cohere) and per-layer frequencies (Gemma-3's local and global layers) are the model's.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.probes.circuits.graph import sites
from workbench.subject import Subject

# how each architecture's attention holds its projections: separate q/k/v/o Linear layers ("separate"), one fused
# qkv Linear with the heads' q, k, v one after the other (Phi-3: "stacked") or each head's q, k, v side by side
# (GPT-NeoX, Pythia: "interleaved"), or GPT-2's Conv1D c_attn / c_proj
PROJECTIONS = {"gpt2": "conv1d", "gpt_neox": "interleaved", "phi3": "stacked",
               **{name: "separate" for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                                "granite", "starcoder2", "mixtral", "qwen3_moe", "gpt_oss", "olmo2",
                                                "cohere")}}


@dataclass
class HeadWeights:
    """W_Q, W_K, W_V [layer, head, d, dh] (input norm folded in) and W_O [layer, head, dh, d], float64 on the CPU."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor

    def ov(self, layer: int, head: int) -> torch.Tensor:
        """W_OV = W_V W_O [d, d] of one head."""
        return self.W_V[layer, head] @ self.W_O[layer, head]

    def qk(self, layer: int, head: int, rope: torch.Tensor | None = None) -> torch.Tensor:
        """W_QK = W_Q P W_K^T [d, d] of one head (P: a `rope_matrices` entry, identity when None)."""
        q = self.W_Q[layer, head]
        return (q if rope is None else q @ rope) @ self.W_K[layer, head].T


def head_weights(subject: Subject) -> HeadWeights:
    """The per-head matrices of `subject` (the architectures of PROJECTIONS); WorkbenchError otherwise."""
    a = subject.adapter
    if a.model_type not in PROJECTIONS:
        raise WorkbenchError(f"weight-based scores read the projections of {sorted(PROJECTIONS)}; "
                             f"{a.model_type!r} is not one of them")
    norms = sites(subject).attn_norms
    per_layer = [_layer(subject, l) for l in range(a.n_layers)]
    group = a.n_heads // a.n_kv_heads
    W_Q, W_K, W_V, W_O = [], [], [], []
    for (q, k, v, o), norm in zip(per_layer, norms, strict=True):
        fold = _norm_matrix(norm, q.shape[1])
        W_Q.append(torch.einsum("ij,hjk->hik", fold, q))
        W_K.append(torch.einsum("ij,hjk->hik", fold, k).repeat_interleave(group, dim=0))
        W_V.append(torch.einsum("ij,hjk->hik", fold, v).repeat_interleave(group, dim=0))
        W_O.append(o)
    return HeadWeights(*(torch.stack(w) for w in (W_Q, W_K, W_V, W_O)))


def _heads(weight: torch.Tensor, n: int) -> torch.Tensor:
    """[d, n * dh] -> [n, d, dh]."""
    d = weight.shape[0]
    return weight.reshape(d, n, -1).permute(1, 0, 2)


def _layer(subject: Subject, layer: int) -> tuple[torch.Tensor, ...]:
    """q, k, v [heads or kv heads, d, dh] and o [heads, dh, d] of one layer, from its projections as the model
    holds them (PROJECTIONS), with its query/key norms folded in."""
    a = subject.adapter
    attn = a.attention_modules[layer]
    kind = PROJECTIONS[a.model_type]
    dense = lambda module: module.weight.detach().double().cpu().T  # noqa: E731  [in, out]: x @ w
    if kind == "conv1d":  # GPT-2's Conv1D already holds [in, out]
        w = attn.c_attn.weight.detach().double().cpu()
        d = w.shape[0]
        q, k, v = (_heads(w[:, i * d:(i + 1) * d], a.n_heads) for i in range(3))
        o = attn.c_proj.weight.detach().double().cpu()
    elif kind == "interleaved":  # [d, heads x (q | k | v)]
        w = dense(attn.query_key_value).reshape(-1, a.n_heads, 3, a.head_dim)
        q, k, v = (w[:, :, i].permute(1, 0, 2) for i in range(3))
        o = dense(attn.dense)
    elif kind == "stacked":  # [d, q of every head | k of every kv head | v of every kv head]
        w = dense(attn.qkv_proj)
        sizes = (a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.n_kv_heads * a.head_dim)
        q, k, v = (_heads(part, n) for part, n in zip(w.split(sizes, dim=1), (a.n_heads, a.n_kv_heads, a.n_kv_heads),
                                                        strict=True))
        o = dense(attn.o_proj)
    else:
        q, k, v = (_heads(dense(getattr(attn, name)), n) for name, n in
                   (("q_proj", a.n_heads), ("k_proj", a.n_kv_heads), ("v_proj", a.n_kv_heads)))
        o = dense(attn.o_proj)
    q, k = _fold_head_norm(attn, "q_norm", q), _fold_head_norm(attn, "k_norm", k)
    return q, k, v, o.reshape(a.n_heads, a.head_dim, -1)  # o: [H, dh, d]


def _fold_head_norm(attn: nn.Module, name: str, w: torch.Tensor) -> torch.Tensor:
    """w [heads, d, dh] with the attention's query or key norm `name` folded in, if it has one: per head over dh
    (Qwen3, Gemma-3) or over every head's channels at once (OLMo-2), read as a diagonal like the input norm."""
    norm = getattr(attn, name, None)
    if norm is None:
        return w
    heads, _, dh = w.shape
    size = next(norm.parameters()).numel()
    if size not in (dh, heads * dh):
        raise WorkbenchError(f"{type(attn).__name__}.{name} has {size} weights: weight-based scores fold a norm over "
                             f"each head's {dh} channels or over all {heads * dh}")
    scale = _norm_matrix(norm, size).diagonal().reshape(-1, dh)  # [1 or heads, dh]
    return w * scale[:, None, :]


def _norm_matrix(norm: nn.Module, d: int) -> torch.Tensor:
    """[d, d]: the linear part of a norm up to a scalar: diag(weight), times the centering for a LayerNorm.
    An RMSNorm-like module (whatever its weight's offset, e.g. Gemma's 1 + w) is read off its output on ones."""
    centering = torch.eye(d, dtype=torch.float64) - 1.0 / d
    if isinstance(norm, nn.LayerNorm):
        weight = norm.weight.detach().double().cpu() if norm.weight is not None else torch.ones(d, dtype=torch.float64)
        return centering @ torch.diag(weight)
    param = next(norm.parameters(), None)
    ones = torch.ones(1, d, dtype=param.dtype if param is not None else torch.float32,
                      device=param.device if param is not None else "cpu")
    with torch.no_grad():
        on_ones = norm(ones)[0].detach().double().cpu()
    if on_ones.abs().max() < 1e-6 and param is not None and param.numel() == d:  # a LayerNorm of its own (Cohere)
        return centering @ torch.diag(param.detach().double().cpu().reshape(d))
    return torch.diag(on_ones)


def rope_matrices(subject: Subject, distances: Sequence[int], layer: int = 0) -> torch.Tensor | None:
    """[len(distances), dh, dh] float64: P(t) with (rotated q at position p + t) . (rotated k at p) = q P(t) k^T in
    attention layer `layer`, from the model's own rotary embedding (its frequencies, scaling and, for models whose
    layers differ, that layer's) and its own rotation (`apply_rotary_pos_emb` of the layer's modeling module: the
    rotated dimensions and how they pair); None for a model without RoPE."""
    rotary = getattr(subject.model.base_model, "rotary_emb", None)
    if rotary is None:
        return None
    distances = [int(t) for t in distances]
    if not distances or min(distances) < 0:
        raise WorkbenchError(f"RoPE distances {distances} must be a non-empty list of non-negative integers")
    a = subject.adapter
    param = next(subject.model.parameters())
    positions = torch.tensor([[0, *distances]], device=param.device)
    by_layer = "layer_type" in inspect.signature(rotary.forward).parameters  # Gemma-3: local and global layers
    extra = (subject.model.config.layer_types[layer],) if by_layer else ()
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, dtype=param.dtype, device=param.device), positions, *extra)
    rotate = sys.modules[type(a.attention_modules[layer]).__module__].apply_rotary_pos_emb
    # each basis row e_i as a query head at every position: [1, dh (heads), 1 + D (positions), dh]
    basis = torch.eye(a.head_dim, dtype=torch.float64)[None, :, None, :].expand(1, -1, len(positions[0]), -1)
    rotated, _ = rotate(basis, basis, cos.double().cpu(), sin.double().cpu())
    rotated = rotated[0].transpose(0, 1)  # [1 + D, dh, dh]: row i = e_i rotated at that position
    return rotated[1:] @ rotated[0].T
