"""Head types on repeated random tokens: previous-token, duplicate-token and induction scores; head similarity.

Olsson et al. 2022 ("In-context Learning and Induction Heads"): on a random sequence repeated twice, an
induction head at a token of the second copy attends to the token that followed its earlier occurrence;
a previous-token head attends to the token just before; a duplicate-token head attends to the earlier
occurrence itself. The scores here are defined on any token ids, so they also read natural text:
    prev_token_i = p[i, i-1]
    duplicate_i  = sum_{j < i, x_j = x_i} p[i, j]                 (rows with an earlier duplicate)
    induction_i  = sum_{j < i-1, x_j = x_i} p[i, j+1]             (rows with an earlier duplicate)
averaged over rows. Head similarity is 1 - the mean total-variation distance between two heads' attention
rows, the kind of head grouping ProxyAttn (2025) builds on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.probes.result import Result, head_rows
from workbench.subject import Subject
from workbench.tracer import trace as run_trace


def repeated_random_tokens(subject: Subject, length: int = 50, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """[batch, (1 +) 2 x length] random non-special tokens repeated twice, after the BOS token if the model has one."""
    vocab = subject.model.config.vocab_size
    special = set(getattr(subject.tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([t for t in range(vocab) if t not in special])
    g = torch.Generator().manual_seed(seed)
    half = allowed[torch.randint(len(allowed), (batch, length), generator=g)]
    ids = torch.cat([half, half], dim=1)
    bos = getattr(subject.tokenizer, "bos_token_id", None)
    return torch.cat([torch.full((batch, 1), bos), ids], dim=1) if bos is not None else ids


def type_scores(patterns: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores [..., head] from attention patterns [batch, head, L, L] over token ids [batch, L]."""
    p = patterns.double()
    L = ids.shape[1]
    prev = torch.diagonal(p, offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))
    same = (ids[:, :, None] == ids[:, None, :]) & torch.ones(L, L, dtype=torch.bool).tril(-1)  # [B, i, j]: j < i
    shifted = torch.zeros_like(same)
    shifted[:, :, 1:] = same[:, :, :-1]  # [B, i, j+1] marks x_j = x_i
    shifted &= torch.ones(L, L, dtype=torch.bool).tril(-1)  # j + 1 < i
    rows = same.any(-1)  # [B, i]: rows with an earlier duplicate
    n_rows = rows.sum().clamp_min(1)
    duplicate = ((p * same[:, None]).sum(-1) * rows[:, None]).sum(dim=(0, -1)) / n_rows
    induction = ((p * shifted[:, None]).sum(-1) * rows[:, None]).sum(dim=(0, -1)) / n_rows
    return {"prev_token": prev, "duplicate_token": duplicate, "induction": induction}


def head_types(subject: Subject, length: int = 50, batch: int = 4, seed: int = 0, backend: str = "auto") -> Result:
    """Previous-token, duplicate-token and induction scores of every head on repeated random tokens.

    Metrics per head: `prev_token`, `duplicate_token`, `induction` (each in [0, 1]). Arrays: the same as
    [layer, head] plus `similarity` [layer * head, layer * head] (see `head_similarity`).
    """
    ids = repeated_random_tokens(subject, length, batch, seed)
    adapter = subject.adapter
    heads = [(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
    trace = run_trace(subject, ids, stats=(), patterns=heads, backend=backend)
    scores: dict[str, np.ndarray] = {}
    for layer in range(adapter.n_layers):
        stacked = torch.stack([trace.patterns[(layer, h)] for h in range(adapter.n_heads)], dim=1)
        for name, value in type_scores(stacked, ids).items():
            scores.setdefault(name, np.zeros((adapter.n_layers, adapter.n_heads)))[layer] = value.numpy()
    similarity = head_similarity(trace.patterns, adapter.n_layers, adapter.n_heads)
    table = pd.concat([head_rows(v, k) for k, v in scores.items()], ignore_index=True)
    return Result("heads", table, {**scores, "similarity": similarity},
                  {"length": length, "batch": batch, "seed": seed})


def head_similarity(patterns: dict[tuple[int, int], torch.Tensor], n_layers: int, n_heads: int) -> np.ndarray:
    """[n_layers * n_heads] ^ 2 similarity: 1 - mean over rows of the total-variation distance of two heads.

    Head (l, h) is row l * n_heads + h. Rows are each head's attention rows over the same inputs.
    """
    flat = torch.stack([patterns[(l, h)].double().reshape(-1) for l in range(n_layers) for h in range(n_heads)])
    any_pattern = patterns[(0, 0)]
    n_rows = any_pattern.numel() // any_pattern.shape[-1]
    tv = torch.cdist(flat[None], flat[None], p=1)[0] / (2 * n_rows)
    return (1 - tv).numpy()
