"""Each head's weight matrices, read from the model's own projections, for weight-based analyses (composition).

Row-vector convention, as in Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits"): a
residual vector x [d] is a row; head h reads q = x W_Q, k = x W_K, v = x W_V ([d, dh] each) and writes z W_O
([dh, d]) into the residual stream, so W_QK = W_Q W_K^T and W_OV = W_V W_O are [d, d].

- The attention's input norm is folded into W_Q, W_K and W_V: its per-channel weight as a diagonal, and for a
  LayerNorm also its centering (I - 11^T/d). The division by the input's RMS (or standard deviation) is a scalar
  per token, which no normalized weight-based score sees; biases are left out.
- Grouped-query attention: W_K and W_V of a query head are those of the key/value head it reads (head h reads
  kv head h // (n_heads / n_kv_heads)), so every tensor here has one entry per query head.
- Per-head query/key norms (Qwen3's q_norm / k_norm) are folded in the same way, as diagonals on dh.
- Rotary position embeddings: `rope_matrices` gives, for a query-key distance t, the [dh, dh] matrix P(t) with
  (rotated q) . (rotated k) = q P(t) k^T, so the QK circuit at distance t is W_Q P(t) W_K^T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.probes.circuits.graph import sites
from workbench.subject import Subject

_LLAMA = ("self_attn", "q_proj", "k_proj", "v_proj", "o_proj")
PROJECTIONS = {name: _LLAMA for name in ("llama", "mistral", "qwen2", "qwen3", "gemma")}


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
    """The per-head matrices of `subject` (GPT-2 and the Llama-like architectures); WorkbenchError otherwise."""
    a = subject.adapter
    if a.model_type != "gpt2" and a.model_type not in PROJECTIONS:
        raise WorkbenchError(f"weight-based scores read GPT-2 and Llama-like projections; {a.model_type!r} is not "
                             f"one of {sorted(['gpt2', *PROJECTIONS])}")
    norms = sites(subject).attn_norms
    per_layer = [_gpt2_layer(subject, l) if a.model_type == "gpt2" else _llama_layer(subject, l)
                 for l in range(a.n_layers)]
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


def _gpt2_layer(subject: Subject, layer: int) -> tuple[torch.Tensor, ...]:
    a = subject.adapter
    attn = a.attention_modules[layer]
    w = attn.c_attn.weight.detach().double().cpu()  # Conv1D: [d, 3d], x @ w
    d = w.shape[0]
    q, k, v = (_heads(w[:, i * d:(i + 1) * d], a.n_heads) for i in range(3))
    o = attn.c_proj.weight.detach().double().cpu().reshape(a.n_heads, a.head_dim, -1)  # [H, dh, d]
    return q, k, v, o


def _llama_layer(subject: Subject, layer: int) -> tuple[torch.Tensor, ...]:
    a = subject.adapter
    attn = a.attention_modules[layer]
    _, q_name, k_name, v_name, o_name = PROJECTIONS[a.model_type]
    weight = lambda name: getattr(attn, name).weight.detach().double().cpu()  # noqa: E731  [out, in]
    q, k, v = _heads(weight(q_name).T, a.n_heads), _heads(weight(k_name).T, a.n_kv_heads), \
        _heads(weight(v_name).T, a.n_kv_heads)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3: RMSNorm over each head's dh before RoPE
        q = q * _norm_matrix(attn.q_norm, a.head_dim).diagonal()
        k = k * _norm_matrix(attn.k_norm, a.head_dim).diagonal()
    o = weight(o_name).T.reshape(a.n_heads, a.head_dim, -1)  # [H, dh, d]
    return q, k, v, o


def _norm_matrix(norm: nn.Module, d: int) -> torch.Tensor:
    """[d, d]: the linear part of a norm up to a scalar: diag(weight), times the centering for a LayerNorm.
    An RMSNorm-like module (whatever its weight's offset, e.g. Gemma's 1 + w) is read off its output on ones."""
    if isinstance(norm, nn.LayerNorm):
        weight = norm.weight.detach().double().cpu() if norm.weight is not None else torch.ones(d, dtype=torch.float64)
        return (torch.eye(d, dtype=torch.float64) - 1.0 / d) @ torch.diag(weight)
    param = next(norm.parameters(), None)
    ones = torch.ones(1, d, dtype=param.dtype if param is not None else torch.float32,
                      device=param.device if param is not None else "cpu")
    with torch.no_grad():
        return torch.diag(norm(ones)[0].detach().double().cpu())


def rope_matrices(subject: Subject, distances: Sequence[int]) -> torch.Tensor | None:
    """[len(distances), dh, dh] float64: P(t) with (rotated q at position p + t) . (rotated k at p) = q P(t) k^T,
    from the model's own rotary embedding (its frequencies and scaling); None for a model without RoPE."""
    rotary = getattr(subject.model.base_model, "rotary_emb", None)
    if rotary is None:
        return None
    distances = [int(t) for t in distances]
    if not distances or min(distances) < 0:
        raise WorkbenchError(f"RoPE distances {distances} must be a non-empty list of non-negative integers")
    dh = subject.adapter.head_dim
    param = next(subject.model.parameters())
    positions = torch.tensor([[0, *distances]], device=param.device)
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, dtype=param.dtype, device=param.device), positions)
    cos, sin = cos[0].double().cpu(), sin[0].double().cpu()  # [1 + D, dh]
    eye = torch.eye(dh, dtype=torch.float64)
    half = torch.cat([-eye[:, dh // 2:], eye[:, :dh // 2]], dim=1)  # rotate_half of each basis row
    rotated = eye * cos[:, None] + half * sin[:, None]  # [1 + D, dh, dh]: row i = e_i rotated at that position
    return rotated[1:] @ rotated[0].T
