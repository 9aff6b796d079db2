"""Effective rank (Roy & Vetterli 2007) of hidden states and of per-head outputs.

erank(X) = exp(H(p)), p_k = sigma_k / sum sigma, H the Shannon entropy, sigma the singular values of the
(uncentered) [tokens, dim] matrix X: 1 when X has rank one, min(tokens, dim) when all singular values are equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.head_outputs import record_head_outputs
from workbench.probes.result import Result, head_rows, layer_rows
from workbench.subject import Subject
from workbench.trace import Trace


def effective_rank(x: torch.Tensor) -> float:
    """exp of the Shannon entropy of the normalized singular values of the [n, d] matrix x."""
    sigma = torch.linalg.svdvals(x.double())
    if float(sigma.sum()) == 0.0:
        return 0.0
    p = sigma / sigma.sum()
    return float(torch.exp(-torch.xlogy(p, p).sum()))


def _positions(n: int, positions: Sequence[int] | None) -> list[int]:
    if positions is None:
        return list(range(n))
    bad = [p for p in positions if not -n <= p < n]
    if bad:
        raise WorkbenchError(f"positions {bad} are outside the sequence of {n} real tokens")
    return [p % n for p in positions]


def hidden_state_erank(trace: Trace, positions: Sequence[int] | None = None, batch: int = 0) -> Result:
    """Effective rank of the hidden states [tokens, d] of each layer (0 = embeddings), over `positions`
    (default all real tokens; counted from the first real token) of sequence `batch`. Metric `erank`, head = -1."""
    if trace.hidden_states is None:
        raise WorkbenchError("hidden-state erank needs a trace taken with hidden_states=True")
    hidden = trace.hidden_states[:, batch][:, trace.attention_mask[batch]]  # [layer+1, n, d]
    keep = _positions(hidden.shape[1], positions)
    values = np.array([effective_rank(h[keep]) for h in hidden])
    return Result("erank_hidden", layer_rows(values, "erank"), {"erank": values},
                  {"positions": positions, "batch": batch})


def head_output_erank(subject: Subject, inputs, positions: Sequence[int] | None = None) -> Result:
    """Effective rank of each head's output [tokens, head_dim] over `positions` of every sequence (stacked).

    Metric `erank` per (layer, head) and the layer mean at head = -1.
    """
    outputs, mask = record_head_outputs(subject, inputs)  # [layer, B, L, H, Dh]
    rows = []
    for b in range(mask.shape[0]):
        real = outputs[:, b][:, mask[b]]  # [layer, n, H, Dh]
        rows.append(real[:, _positions(real.shape[1], positions)])
    stacked = torch.cat(rows, dim=1)  # [layer, tokens, H, Dh]
    values = np.array([[effective_rank(stacked[l, :, h]) for h in range(stacked.shape[2])]
                       for l in range(stacked.shape[0])])
    table = pd.concat([head_rows(values, "erank"), layer_rows(values.mean(axis=1), "erank")], ignore_index=True)
    return Result("erank_heads", table, {"erank": values}, {"positions": positions})
