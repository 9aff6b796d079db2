"""Where each head's attention mass sits, block by block, and how much a sparse pattern of blocks keeps.

All probes read the `block_mass` statistic of a Trace (trace with stats=("block_mass",) and a block_size):
M[a, b] = sum_{i in query block a} sum_{j in key block b} p_ij. Each query block's row, divided by its sum (the
number of real query rows in it), is a distribution D[a, :] over the key blocks: the share of the block's
attention that each key block holds.

- `coverage`: per query block, the fewest key blocks whose mass reaches gamma (FlexPrefill, Lai et al. 2025,
  "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence Inference", picks per head
  the smallest set of blocks whose cumulative attention passes gamma), that count as a share of the blocks the
  query block sees, and the mass the top-k key blocks capture.
- `head_groups`: head similarity from block-mass maps, 1 - the mean total-variation distance between two heads'
  rows D, and the error of replacing each head's block choice by its group's representative head (ProxyAttn,
  2025: heads of a layer share their important blocks, so a few representative heads can choose for all).
- `layer_similarity`: the same similarity between the heads of two layers, for every layer pair (EchoAtt,
  Rajabzadeh et al. 2024, shares attention maps across layers whose maps agree).
Means run over the real query blocks of every sequence of the trace; a block that sees one key block only (the
first one under a causal mask) counts like the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.probes.result import LAYER_LEVEL, Result, head_rows, layer_rows
from workbench.trace import Trace


def block_rows(trace: Trace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sequence: D [layer, head, n, n] (each real query block's row of block_mass over its sum, float64) and
    real [layer, head, n] (the query blocks that hold a real row)."""
    if "block_mass" not in trace.stats:
        raise WorkbenchError("these probes need the block_mass statistic: trace with stats=('block_mass',)")
    out = []
    for b in range(trace.token_ids.shape[0]):
        mass = trace.sequence("block_mass", b).double()
        total = mass.sum(-1)
        real = total > 0
        out.append((mass / total.where(real, 1.0)[..., None], real))
    return out


def blocks_to_reach(rows: torch.Tensor, gamma: float) -> torch.Tensor:
    """[...]: the fewest entries of each row of `rows` [..., n] (a distribution) whose sum reaches gamma."""
    cumulative = rows.sort(-1, descending=True).values.cumsum(-1)
    return (cumulative < gamma - 1e-9).sum(-1).clamp_max(rows.shape[-1] - 1) + 1


def top_k_mass(rows: torch.Tensor, k: int) -> torch.Tensor:
    """[...]: the mass of the k largest entries of each row of `rows` [..., n]."""
    return rows.topk(min(k, rows.shape[-1]), -1).values.sum(-1)


def _mean_over_blocks(values: list[torch.Tensor], real: list[torch.Tensor]) -> np.ndarray:
    """[layer, head]: the mean of values [layer, head, n] over the real query blocks of every sequence."""
    total = sum((v * r).sum(-1) for v, r in zip(values, real, strict=True))
    count = sum(r.sum(-1) for r in real)
    return (total / count.clamp_min(1)).numpy()


def coverage(trace: Trace, gamma: float = 0.9, top_k: Sequence[int] = (1, 4, 16)) -> Result:
    """Per head: key blocks needed per query block to reach mass gamma, their share of the blocks it sees, top-k mass.

    Metrics per head: `blocks_for_gamma` (mean count), `kept_fraction` (mean of the count over the number of key
    blocks with mass, the blocks the query block sees), `top{k}_mass` for each k; per layer (head = -1) their
    means over heads. Arrays: the per-head metrics [layer, head] and `blocks_for_gamma_per_block`
    [layer, head, n] of the first sequence.
    """
    if not 0 < gamma <= 1:
        raise WorkbenchError(f"gamma {gamma} must be in (0, 1]")
    bad = [k for k in top_k if not isinstance(k, int) or k < 1]
    if bad:
        raise WorkbenchError(f"top_k values {bad} must be positive integers")
    rows = block_rows(trace)
    real = [r for _, r in rows]
    needed = [blocks_to_reach(d, gamma).double() for d, _ in rows]
    seen = [(d > 0).sum(-1).clamp_min(1).double() for d, _ in rows]
    metrics = {"blocks_for_gamma": _mean_over_blocks(needed, real),
               "kept_fraction": _mean_over_blocks([n / s for n, s in zip(needed, seen, strict=True)], real)}
    for k in top_k:
        metrics[f"top{k}_mass"] = _mean_over_blocks([top_k_mass(d, k) for d, _ in rows], real)
    table = pd.concat([head_rows(v, name) for name, v in metrics.items()]
                      + [layer_rows(v.mean(1), name) for name, v in metrics.items()], ignore_index=True)
    arrays = {**metrics, "blocks_for_gamma_per_block": needed[0].numpy()}
    return Result("coverage", table, arrays, {"gamma": gamma, "top_k": list(top_k), "block_size": trace.block_size})


def map_similarity(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - the mean total-variation distance between the rows of block maps a [..., n, n] and b, over the query
    blocks where `real` [..., n] (broadcast against both) holds; the leading dimensions pair up by broadcasting."""
    distance = 0.5 * (a - b).abs().sum(-1)
    return 1 - (distance * real).sum(-1) / real.sum(-1).clamp_min(1)


def _pair_similarity(a: torch.Tensor, b: torch.Tensor, real_a: torch.Tensor, real_b: torch.Tensor) -> torch.Tensor:
    """[head of a, head of b]: map_similarity of every head of maps a [head, n, n] with every head of b."""
    return map_similarity(a[:, None], b[None], real_a[:, None] & real_b[None])


def _head_similarity(rows) -> torch.Tensor:
    """[layer, head, head]: map_similarity of every pair of heads of a layer, averaged over sequences."""
    return torch.stack([torch.stack([_pair_similarity(d[layer], d[layer], real[layer], real[layer])
                                     for layer in range(d.shape[0])]) for d, real in rows]).mean(0)


def medoid_groups(similarity: np.ndarray, n_groups: int, iterations: int = 20) -> np.ndarray:
    """Group labels [head] of a [head, head] similarity by k-medoids (distance 1 - similarity); the label of a
    group is its representative head (the medoid: the member closest, in total, to the others).

    Start: the head most similar to all, then repeatedly the head farthest from the chosen ones.
    """
    distance = 1 - similarity
    medoids = [int(distance.sum(1).argmin())]
    while len(medoids) < n_groups:
        medoids.append(int(distance[:, medoids].min(1).argmax()))
    for _ in range(iterations):
        labels = np.asarray(medoids)[distance[:, medoids].argmin(1)]
        new = [int(members[distance[np.ix_(members, members)].sum(1).argmin()])
               for members in (np.flatnonzero(labels == m) for m in medoids)]
        if new == medoids:
            break
        medoids = new
    return np.asarray(medoids)[distance[:, medoids].argmin(1)]


def kept_mass_by(chooser: torch.Tensor, rows: torch.Tensor, gamma: float) -> torch.Tensor:
    """[...]: the mass of `rows` [..., n] on the fewest key blocks of `chooser` [..., n] that reach gamma in it."""
    k = blocks_to_reach(chooser, gamma)
    order = chooser.argsort(-1, descending=True)
    chosen = torch.arange(chooser.shape[-1]) < k[..., None]  # in the chooser's order
    return (rows.gather(-1, order) * chosen).sum(-1)


def head_groups(trace: Trace, n_groups: int = 2, gamma: float = 0.9) -> Result:
    """Head similarity from block-mass maps and the error of letting each group's representative head choose.

    Heads of each layer are grouped by k-medoids on their similarity (`medoid_groups`). Metrics per head:
    `representative` (the head that stands for its group), `similarity_to_representative`, `own_missed_mass` (the
    head's mass outside the fewest key blocks that reach gamma in its own map, at most 1 - gamma) and
    `proxy_missed_mass` (its mass outside the blocks its representative chooses so, the error of letting the
    representative choose; equal to the own for a representative); per layer (head = -1) `mean_head_similarity`
    over head pairs and the mean missed masses. Arrays: `similarity` [layer, head, head], `representative`,
    `own_missed_mass`, `proxy_missed_mass` [layer, head]. All means run over the real query blocks.
    """
    heads = trace.n_heads
    if not 1 <= n_groups <= heads:
        raise WorkbenchError(f"n_groups {n_groups} must be between 1 and the {heads} heads of a layer")
    rows = block_rows(trace)
    similarity = _head_similarity(rows).numpy()
    representative = np.stack([medoid_groups(s, n_groups) for s in similarity])  # [layer, head]
    reps = torch.as_tensor(representative)
    real = [r for _, r in rows]
    own_missed = _mean_over_blocks([1 - kept_mass_by(d, d, gamma) for d, _ in rows], real)
    missed_mass = _mean_over_blocks([1 - kept_mass_by(d.gather(1, reps[:, :, None, None].expand_as(d)), d, gamma)
                                     for d, _ in rows], real)
    to_rep = np.take_along_axis(similarity, representative[:, :, None], 2)[..., 0]
    off_diagonal = ~np.eye(heads, dtype=bool)
    pair_mean = similarity[:, off_diagonal].mean(1) if heads > 1 else np.ones(similarity.shape[0])
    table = pd.concat([head_rows(representative.astype(float), "representative"),
                       head_rows(to_rep, "similarity_to_representative"),
                       head_rows(own_missed, "own_missed_mass"),
                       head_rows(missed_mass, "proxy_missed_mass"),
                       layer_rows(pair_mean, "mean_head_similarity"),
                       layer_rows(own_missed.mean(1), "own_missed_mass"),
                       layer_rows(missed_mass.mean(1), "proxy_missed_mass")], ignore_index=True)
    return Result("head_groups", table, {"similarity": similarity, "representative": representative,
                                         "own_missed_mass": own_missed, "proxy_missed_mass": missed_mass},
                  {"n_groups": n_groups, "gamma": gamma, "block_size": trace.block_size})


def layer_similarity(trace: Trace) -> Result:
    """Similarity of the block-mass maps of every pair of layers, head by head and best-matched.

    For layers l, l': `same_head` = mean over heads h of the similarity of head h in l and in l', `best_match` =
    mean over heads of l' of their most similar head in l. Table: one row per layer pair and metric, with columns
    layer (l), other_layer (l'), head = -1; plus per layer (other_layer empty) `next_layer_similarity`, the
    same-head similarity to layer l + 1. Arrays: `same_head`, `best_match` [layer, layer].
    """
    rows = block_rows(trace)
    n_layers = trace.n_layers
    same, best = np.zeros((n_layers, n_layers)), np.zeros((n_layers, n_layers))
    for first in range(n_layers):
        for other in range(n_layers):
            sim = torch.stack([_pair_similarity(d[first], d[other], real[first], real[other])
                               for d, real in rows]).mean(0).numpy()  # [head of `first`, head of `other`]
            same[first, other] = np.diagonal(sim).mean()
            best[first, other] = sim.max(0).mean()
    pairs = [{"layer": l, "other_layer": o, "head": LAYER_LEVEL, "metric": name, "value": float(values[l, o])}
             for name, values in (("same_head", same), ("best_match", best))
             for l in range(n_layers) for o in range(n_layers) if o != l]
    table = pd.concat([pd.DataFrame(pairs, columns=["layer", "other_layer", "head", "metric", "value"]),
                       layer_rows(np.append(np.diagonal(same, 1), np.nan), "next_layer_similarity")],
                      ignore_index=True)
    return Result("layer_similarity", table, {"same_head": same, "best_match": best},
                  {"block_size": trace.block_size})
