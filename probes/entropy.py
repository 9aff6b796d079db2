"""Attention entropy per head, layer and position; local versus global heads; future attention influence.

Entropy is in nats; normalized entropy divides by log(number of keys the query sees), so 1 is uniform
attention and 0 attention on one key. Local versus global heads and future attention influence follow
"Attention Illuminates LLM Reasoning" (2025): the windowed average attention distance of a query is
sum_j p_ij min(i - j, W) (the tracer's `window_distance` with distance_cap = W), and a token's future
attention influence is the mean attention it receives from the queries that see it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.probes.result import LAYER_LEVEL, Result, head_rows, layer_rows
from workbench.probes.sinks import uniform_received
from workbench.trace import Trace, normalized_entropy


def _real(trace: Trace, name: str) -> torch.Tensor:
    """Statistic `name` [layer, batch, head, q] in float64 with NaN on padding."""
    if name not in trace.stats:
        raise WorkbenchError(f"this probe needs {name!r}, which the trace lacks: trace with it included")
    return trace.stats[name].double().where(trace.attention_mask[None, :, None, :], torch.nan)


def entropy_profile(trace: Trace) -> Result:
    """Per-head entropy: `entropy_mean`, `entropy_median`, `entropy_norm` (normalized mean); per layer the
    means over heads (head = -1); per position (head = -1, with `position`) the mean over heads and batch.

    Arrays: `entropy_norm_by_position` [layer, q] (mean over heads and batch; padded layout of batch 0's length).
    """
    ent = _real(trace, "entropy")
    norm = normalized_entropy(trace).double()
    flat = ent.permute(0, 2, 1, 3).flatten(2)  # [layer, head, batch * q]
    mean = flat.nanmean(-1).numpy()
    median = flat.nanmedian(-1).values.numpy()
    norm_mean = norm.permute(0, 2, 1, 3).flatten(2).nanmean(-1).numpy()
    by_position = ent.nanmean(dim=(1, 2)).numpy()  # [layer, q]
    norm_by_position = norm.nanmean(dim=(1, 2)).numpy()
    layers, positions = np.indices(by_position.shape)
    per_position = pd.DataFrame({
        "layer": layers.ravel(), "head": LAYER_LEVEL, "position": positions.ravel(),
        "metric": "entropy_by_position", "value": by_position.ravel(),
    }).dropna(subset=["value"])
    table = pd.concat([
        head_rows(mean, "entropy_mean"), head_rows(median, "entropy_median"), head_rows(norm_mean, "entropy_norm"),
        layer_rows(np.nanmean(mean, axis=1), "entropy_mean"), layer_rows(np.nanmean(norm_mean, axis=1), "entropy_norm"),
        per_position,
    ], ignore_index=True)
    arrays = {"entropy_mean": mean, "entropy_median": median, "entropy_norm": norm_mean,
              "entropy_by_position": by_position, "entropy_norm_by_position": norm_by_position}
    return Result("entropy", table, arrays)


def local_global(trace: Trace, threshold: float = 0.25) -> Result:
    """Heads ranked by windowed average attention distance (WAAD), local when WAAD < threshold x W.

    Needs a trace with `window_distance` taken with distance_cap = W. Metrics per head: `waad` (mean over
    real queries), `waad_norm` (waad / W) and `is_local` (1.0 or 0.0). The default threshold is ours, not
    the paper's: a head is local when its mean capped distance is under a quarter of the window.
    """
    cap = trace.options.get("distance_cap")
    if not cap:
        raise WorkbenchError("local/global heads need a trace with window_distance taken with distance_cap=W")
    waad = _real(trace, "window_distance").nanmean(dim=(1, 3)).numpy()
    table = pd.concat([head_rows(waad, "waad"), head_rows(waad / cap, "waad_norm"),
                       head_rows((waad / cap < threshold).astype(float), "is_local")], ignore_index=True)
    return Result("local_global", table, {"waad": waad}, {"distance_cap": cap, "threshold": threshold})


def future_attention_influence(trace: Trace) -> Result:
    """Per token (and head), the mean attention it receives from the other queries that see it: for a causal
    model, from the later tokens ("Attention Illuminates LLM Reasoning"): fai_j = (received_j - p_jj) / (n_j - 1),
    n_j the number of queries that see key j (NaN where no other query does, the last token of a causal model).

    Metrics: `fai` per (layer, head, batch, position), and per (layer, batch, position) averaged over heads
    at head = -1. Arrays: `fai` for batch 0 [layer, head, n]. Needs the trace's `received` and `self_mass`.
    """
    missing = [name for name in ("received", "self_mass") if name not in trace.stats]
    if missing:
        raise WorkbenchError(f"future attention influence needs {missing}: trace with them included")
    frames, first = [], None
    for b in range(trace.token_ids.shape[0]):
        tokens = trace.real_tokens(b)
        received = trace.sequence("received", b).double()  # [layer, head, n]
        own = trace.sequence("self_mass", b).double()  # [layer, head, n]: each token's attention to itself
        seen_by = torch.stack([uniform_received(trace, layer, b)[1] for layer in range(trace.n_layers)])
        others = (seen_by - 1)[:, None, :]
        fai = torch.where(others > 0, (received - own) / others.clamp_min(1), torch.nan).numpy()
        first = fai if first is None else first
        layers, heads, positions = np.indices(fai.shape)
        frames.append(pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "batch": b,
                                    "position": positions.ravel(), "metric": "fai", "value": fai.ravel()}))
        mean = fai.mean(axis=1)
        layers, positions = np.indices(mean.shape)
        frames.append(pd.DataFrame({"layer": layers.ravel(), "head": LAYER_LEVEL, "batch": b,
                                    "position": positions.ravel(), "metric": "fai", "value": mean.ravel()}))
        for frame in frames[-2:]:
            frame["token"] = [tokens[p] for p in frame.position]
    return Result("future_attention_influence", pd.concat(frames, ignore_index=True), {"fai": first})
