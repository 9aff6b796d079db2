"""Attention sinks: first-token sink scores, non-initial (secondary / hidden) sinks, massive activations.

- Sink score and Sink_k^eps: Gu et al. 2024, "When Attention Sink Emerges in Language Models": a head's sink
  score is its mean attention on the first token; Sink^eps is the share of heads whose score exceeds eps.
- Non-initial sinks: tokens other than the first that receive far more attention than the uniform share, the
  secondary sinks of Wang et al. 2025 ("What are you sinking?") and the hidden sinks that ACT ("Unveiling and
  Harnessing Hidden Attention Sinks", Yu et al. 2024) calibrates; with the layers where each appears and
  how long it persists (its sink levels).
- Massive activations: Sun et al. 2024, hidden-state entries whose magnitude is over 100x the median.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.probes.result import LAYER_LEVEL, Result, head_rows, layer_rows
from workbench.trace import Trace


def _need(trace: Trace, *names: str) -> None:
    missing = [n for n in names if n not in trace.stats and n != "hidden_states"]
    if "hidden_states" in names and trace.hidden_states is None:
        missing.append("hidden_states")
    if missing:
        raise WorkbenchError(f"this probe needs {missing}, which the trace lacks: trace with them included")


def sink_scores(trace: Trace, eps: float = 0.3) -> Result:
    """Per-head first-token sink score (mean sink_mass over real query rows after the first) and Sink^eps.

    The first query row is left out: it sees only the first token, so its mass is 1 by construction.
    Table metrics: `sink_score` per head; `sink_share` (share of heads over eps) per layer and, at
    layer = -1, for the whole model.
    A model with learned sinks (GPT-OSS) parks attention in its per-head sink logit as well as on the first
    token, and both are the no-op attention the score measures: the table then also has `learned_sink_score`
    (the mean learned_sink_mass) per head, and a head counts in `sink_share` when its first-token and learned
    scores together exceed eps (a head that sinks into its learned sink is not missed).
    """
    learned = bool(trace.config.get("learned_sinks"))
    _need(trace, "sink_mass", *(["learned_sink_mass"] if learned else []))
    if trace.options.get("sink_keys", [0]) != [0]:
        raise WorkbenchError(f"sink scores need sink_keys=(0,), the trace used {trace.options['sink_keys']}")
    rows = trace.attention_mask.clone()
    rows[torch.arange(rows.shape[0]), rows.int().argmax(-1)] = False  # drop each sequence's first real query

    def head_mean(stat: str) -> np.ndarray:  # [layer, head]
        return trace.stats[stat].double().where(rows[None, :, None, :], torch.nan).nanmean(dim=(1, 3)).numpy()

    score = head_mean("sink_mass")
    tables, arrays = [head_rows(score, "sink_score")], {"sink_score": score}
    total = score
    if learned:
        arrays["learned_sink_score"] = head_mean("learned_sink_mass")
        tables.append(head_rows(arrays["learned_sink_score"], "learned_sink_score"))
        total = score + arrays["learned_sink_score"]
    share = (total > eps).mean(axis=1)
    whole = pd.DataFrame({"layer": [LAYER_LEVEL], "head": [LAYER_LEVEL], "metric": ["sink_share"],
                          "value": [float((total > eps).mean())]})
    table = pd.concat([*tables, layer_rows(share, "sink_share"), whole], ignore_index=True)
    return Result("sinks", table, {**arrays, "sink_share": share}, {"eps": eps})


def uniform_received(trace: Trace, layer: int, batch: int,
                     kept: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([..., n] attention each real key would receive if every query attended uniformly, [n] queries that see it).

    kept [..., n]: the share of each query's attention that goes to keys (1 - learned_sink_mass, per head), which
    a uniform query spreads over its keys; default 1 (a model without learned sinks)."""
    visible = trace.visible_keys(layer)[batch][trace.attention_mask[batch]].double()  # [n]
    n = visible.shape[0]
    window = trace.window(layer) or n
    per_query = 1.0 / visible if kept is None else kept.double() / visible
    share = torch.cat([torch.zeros(*per_query.shape[:-1], 1, dtype=torch.float64), per_query.cumsum(-1)], -1)
    j = torch.arange(n)
    if trace.config.get("is_causal", True):
        first, last = j, (j + window - 1).clamp_max(n - 1)  # the queries that see key j
    else:
        first, last = (j - window + 1).clamp_min(0), (j + window - 1).clamp_max(n - 1)
    return share[..., last + 1] - share[..., first], last - first + 1


def secondary_sinks(trace: Trace, ratio: float = 5.0, min_queries: int = 4) -> Result:
    """Non-initial tokens that receive over `ratio` times their uniform share of attention in some head.

    A key is judged only if at least `min_queries` queries see it (the last few keys of a causal sequence
    are seen by too few to tell). With learned sinks a uniform query spreads only its keys' share of the row
    (1 - learned_sink_mass) over them, so a head that parks attention in its learned sink is not judged
    against more attention than it hands out. Per hit, a row (layer, head, position, token, metric `received_ratio`);
    per sink token, its levels: `first_layer`, `last_layer`, `n_layers` (layers with a hit in any head),
    `persistence` (the longest run of consecutive such layers) and `n_heads` (heads with a hit), at
    layer = head = -1.
    """
    _need(trace, "received")
    hits, levels = [], []
    for b in range(trace.token_ids.shape[0]):
        tokens = trace.real_tokens(b)
        received = trace.sequence("received", b).double()  # [layer, head, n]
        n = received.shape[-1]
        flagged = np.zeros((trace.n_layers, trace.n_heads, n), dtype=bool)
        kept = 1 - trace.sequence("learned_sink_mass", b) if "learned_sink_mass" in trace.stats else None
        for layer in range(trace.n_layers):
            expected, seen_by = uniform_received(trace, layer, b, None if kept is None else kept[layer])
            judged = seen_by >= min_queries
            judged[0] = False  # the first token is the initial sink, scored by sink_scores
            r = received[layer] / expected
            flagged[layer] = ((r > ratio) & judged).numpy()
            for head, pos in zip(*np.nonzero(flagged[layer]), strict=True):
                hits.append((layer, head, b, pos, tokens[pos], "received_ratio", float(r[head, pos])))
        for pos in np.nonzero(flagged.any(axis=(0, 1)))[0]:
            layers = flagged[:, :, pos].any(axis=1)
            runs = np.diff(np.flatnonzero(np.diff(np.r_[0, layers.astype(int), 0])))[::2]
            levels_of = {"first_layer": layers.argmax(), "last_layer": len(layers) - 1 - layers[::-1].argmax(),
                         "n_layers": layers.sum(), "persistence": runs.max(), "n_heads": flagged[:, :, pos].sum()}
            for metric, value in levels_of.items():
                levels.append((LAYER_LEVEL, LAYER_LEVEL, b, pos, tokens[pos], metric, float(value)))
    columns = ["layer", "head", "batch", "position", "token", "metric", "value"]
    table = pd.DataFrame(hits + levels, columns=columns)
    return Result("secondary_sinks", table, {}, {"ratio": ratio, "min_queries": min_queries})


def massive_activations(trace: Trace, factor: float = 100.0) -> Result:
    """Hidden-state entries whose magnitude exceeds `factor` x the median magnitude of their layer (Sun et al.).

    Rows: layer (0 = the embeddings, l = the output of block l), position, token, dim, metric
    `massive_activation` with value |h| and metric `massive_ratio` with |h| / median.
    """
    _need(trace, "hidden_states")
    rows = []
    for b in range(trace.token_ids.shape[0]):
        tokens = trace.real_tokens(b)
        hidden = trace.hidden_states[:, b][:, trace.attention_mask[b]].abs().double()  # [layer+1, n, d]
        median = hidden.flatten(1).median(dim=1).values
        for layer, pos, dim in torch.nonzero(hidden > factor * median[:, None, None]).tolist():
            value = float(hidden[layer, pos, dim])
            rows.append((layer, LAYER_LEVEL, b, pos, tokens[pos], dim, "massive_activation", value))
            rows.append((layer, LAYER_LEVEL, b, pos, tokens[pos], dim, "massive_ratio", value / float(median[layer])))
    table = pd.DataFrame(rows, columns=["layer", "head", "batch", "position", "token", "dim", "metric", "value"])
    return Result("massive_activations", table, {}, {"factor": factor})
