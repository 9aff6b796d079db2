"""Weight-based head composition: how much each earlier head's output can move each later head's query, key or
value, and the singular directions of the earlier head's output that carry it.

Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits"): a head h1 writes x W_OV^{h1} into the
residual stream; a later head h2 reads it through its query (Q-composition), its key (K-composition) or its
value (V-composition). The composition score is the Frobenius norm of the product over the norms of its factors:
    Q: |W_OV^{h1} W_QK^{h2}| / (|W_OV^{h1}| |W_QK^{h2}|)      (h1's output read as h2's query)
    K: |W_OV^{h1} W_QK^{h2}^T| / (|W_OV^{h1}| |W_QK^{h2}|)    (h1's output read as h2's key)
    V: |W_OV^{h1} W_OV^{h2}| / (|W_OV^{h1}| |W_OV^{h2}|)
with the matrices of `workbench.probes.weights` (input norms folded in, GQA's shared keys and values expanded).
An induction head's key reads what a previous-token head wrote, so that pair has a high K-composition.

Merullo et al. 2024 ("Talking Heads: Understanding Inter-layer Communication in Transformer Language Models")
find that heads talk through low-rank subspaces. With the SVD W_OV^{h1} = sum_i s_i u_i^T v_i (v_i: h1's output
directions, orthonormal rows), the composition splits exactly into components:
    score^2 = sum_i component_i^2,   component_i = s_i |v_i B| / (|W_OV^{h1}| |B|)
(B = W_QK^{h2}, W_QK^{h2}^T or W_OV^{h2}), so a few directions often carry most of a pair's score;
`workbench.interventions.components.remove_components` takes such directions out of a head's output.

RoPE: the QK circuit depends on the distance t between query and key, W_QK(t) = W_Q P(t) W_K^T
(`weights.rope_matrices`). Q- and K-composition (and their components) are the root mean square over `distances`
of their values at each t, so the squared components still sum to the squared score; distances=(0,) ignores
RoPE (reads W_Q W_K^T). V-composition does not see positions. Models without RoPE ignore `distances`; in models
whose layers rotate at different frequencies (Gemma-3's local and global layers), each receiver's own are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from workbench.probes.result import Result
from workbench.probes.weights import HeadWeights, head_weights, rope_matrices
from workbench.subject import Subject

KINDS = ("q", "k", "v")


def ov_svd(weights: HeadWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values S [layer, head, dh] (descending) and output directions Vt [layer, head, dh, d] (orthonormal
    rows) of every head's W_OV = W_V W_O, through QR factors so that only [dh, dh] matrices are decomposed
    (no [d, d] matrix is built; a batched SVD of the [dh, d] factor is many times slower on the CPU)."""
    _, r_v = torch.linalg.qr(weights.W_V)  # W_V = Q R: W_OV = Q (R W_O) has the singular values of R W_O
    q_o, r_o = torch.linalg.qr((r_v @ weights.W_O).transpose(-1, -2))  # R W_O = r_o^T q_o^T
    _, s, vh = torch.linalg.svd(r_o.transpose(-1, -2))  # r_o^T = U S Vh, so R W_O = U S (Vh q_o^T)
    return s, vh @ q_o.transpose(-1, -2)


def _gram(matrix: torch.Tensor) -> torch.Tensor:
    """M^T M [..., dh, dh] of [..., d, dh] matrices: |X M^T|^2 = sum((X G) * X) for G = M^T M, X [.., dh]."""
    return matrix.transpose(-1, -2) @ matrix


def _components(weights: HeadWeights, s: torch.Tensor, vt: torch.Tensor, rope: torch.Tensor | None,
                layer: int, kind: str) -> torch.Tensor:
    """Component scores [sender layer < layer, sender head, receiver head, dh] of every earlier head into the heads
    of `layer`, for composition `kind` (root mean square over the RoPE distances for q and k).

    Component i of B's product with W_OV^{h1} has |s_i v_i B|^2 = x N x^T with x = s_i v_i W (W = the receiver's
    W_Q, W_K or W_V) and N a [dh, dh] matrix: P G_K P^T (Q), P^T G_Q P (K), W_O W_O^T (V); since the normalizer
    |B| depends only on the receiver and t, the mean over t of N / |B|^2 is taken first, so no [d, d] matrix and
    no per-distance product over all senders is built."""
    sv = s[:layer, ..., None] * vt[:layer]  # [l, h, i, d]: s_i v_i
    if kind == "v":
        read = torch.einsum("lhid,gdk->lhgik", sv, weights.W_V[layer])
        o = weights.W_O[layer]
        n = o @ o.transpose(-1, -2)  # [g, dh, dh]
        n = n / (_gram(weights.W_V[layer]) * n).sum((-1, -2))[:, None, None]  # |W_V W_O|^2 = tr(G_V W_O W_O^T)
    else:
        g_q, g_k = _gram(weights.W_Q[layer]), _gram(weights.W_K[layer])  # [g, dh, dh]
        p = (rope if rope is not None else torch.eye(g_q.shape[-1], dtype=g_q.dtype)[None])[:, None]  # [t, 1, ..]
        query_side = p.transpose(-1, -2) @ g_q @ p  # P^T G_Q P [t, g, dh, dh]
        den = (query_side * g_k).sum((-1, -2))  # |W_Q P W_K^T|^2 = tr(P^T G_Q P G_K) [t, g]
        n = ((p @ g_k @ p.transpose(-1, -2) if kind == "q" else query_side) / den[..., None, None]).mean(0)
        read = torch.einsum("lhid,gdk->lhgik", sv, (weights.W_Q if kind == "q" else weights.W_K)[layer])
    num = (torch.einsum("lhgik,gkj->lhgij", read, n) * read).sum(-1)
    return (num.clamp_min(0) / s[:layer].square().sum(-1)[..., None, None]).sqrt()


def composition_scores(subject: Subject, distances: Sequence[int] = tuple(range(32))) -> Result:
    """Q-, K- and V-composition of every earlier head into every later head, and its SVD components.

    Arrays (sender layer, sender head, receiver layer, receiver head; NaN unless the sender's layer is earlier):
    `q_composition`, `k_composition`, `v_composition` [L, H, L, H]; `q_components`, `k_components`,
    `v_components` [L, H, L, H, dh] (the score of each of the sender's output directions, in the order of its
    singular values; their squares sum to the score's square); `singular_values` [L, H, dh] and `ov_directions`
    [L, H, dh, d] of every head's W_OV. Table: per receiver `{kind}_composition_max` (its strongest sender),
    then one `{kind}_composition` row per pair with columns `source_layer`, `source_head`.
    """
    a = subject.adapter
    weights = head_weights(subject)
    ropes = [rope_matrices(subject, distances, layer) for layer in range(a.n_layers)]  # each receiver layer's
    s, vt = ov_svd(weights)
    arrays: dict[str, np.ndarray] = {}
    for kind in KINDS:
        comp = np.full((a.n_layers, a.n_heads, a.n_layers, a.n_heads, a.head_dim), np.nan)
        for layer in range(1, a.n_layers):
            comp[:layer, :, layer] = _components(weights, s, vt, ropes[layer], layer, kind).numpy()
        arrays[f"{kind}_components"] = comp
        arrays[f"{kind}_composition"] = np.sqrt(np.square(comp).sum(-1))  # NaN where comp is
    arrays["singular_values"] = s.numpy()
    arrays["ov_directions"] = vt.float().numpy()
    rope = ropes[0] is not None
    params = {"rope": rope, "distances": [int(t) for t in distances] if rope else []}
    return Result("composition", _table(arrays, a.n_layers, a.n_heads), arrays, params)


def _table(arrays: dict[str, np.ndarray], n_layers: int, n_heads: int) -> pd.DataFrame:
    summary, pairs = [], []
    for kind in KINDS:
        scores = arrays[f"{kind}_composition"]
        for layer in range(1, n_layers):
            for head in range(n_heads):
                column = scores[:layer, :, layer, head]
                summary.append((layer, head, -1, -1, f"{kind}_composition_max", float(column.max())))
                pairs += [(layer, head, sl, sh, f"{kind}_composition", float(column[sl, sh]))
                          for sl in range(layer) for sh in range(n_heads)]
    return pd.DataFrame(summary + pairs, columns=["layer", "head", "source_layer", "source_head", "metric", "value"])


def carrying_components(result: Result, sender: tuple[int, int], receiver: tuple[int, int], kind: str = "k",
                        k: int = 5) -> pd.DataFrame:
    """The k components of `sender`'s output that carry most of its `kind`-composition into `receiver`: columns
    component (index into the sender's singular values), singular_value, score, share (score^2 / total^2)."""
    comp = result.arrays[f"{kind}_components"][(*sender, *receiver)]
    if np.isnan(comp).all():
        raise ValueError(f"head {sender} is not in an earlier layer than {receiver}: no composition")
    order = np.argsort(-comp)[:k]
    total = float(np.square(comp).sum())
    return pd.DataFrame({"component": order, "singular_value": result.arrays["singular_values"][sender][order],
                         "score": comp[order], "share": np.square(comp[order]) / total})


def ov_directions(subject: Subject, head: tuple[int, int], components: Sequence[int]) -> torch.Tensor:
    """[k, d] float64: the output directions (right singular vectors of W_OV, descending singular values) of
    `head` numbered `components`."""
    _, vt = ov_svd(head_weights(subject))
    return vt[head][list(components)]
