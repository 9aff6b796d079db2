"""Block-sparse attention as an edit: keep, per head and query block, only some key blocks, and measure the damage.

The kernels skip the dropped blocks (`workbench.kernels.HeadEdits.block_keep`), so any task can be scored under a
sparsity budget. `top_k_blocks` builds the oracle mask of a budget from a dense run's `block_mass`: per query
block, the key blocks holding the most attention (the oracle top-k of The Sparse Frontier, Nawrot et al. 2025,
"The Sparse Frontier: Sparse Attention Trade-offs in Transformer LLMs", and the block-level ground truth that
SeerAttention, Gao et al. 2024, learns to predict). `sparsity_sweep` scores a task at several budgets: what the
model loses when each head keeps that fraction of the blocks it sees.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.errors import WorkbenchError
from workbench.interventions.select import Head, check_heads
from workbench.kernels import DEFAULT_BLOCK_SIZE, HeadEdits
from workbench.probes.result import LAYER_LEVEL, Result
from workbench.probes.tasks import Task, encode, evaluate
from workbench.subject import Subject
from workbench.tracer import capture
from workbench.tracer import trace as run_trace


def check_fraction(kept_fraction: float) -> float:
    """kept_fraction as a float; WorkbenchError naming it unless in (0, 1]."""
    if not 0 < kept_fraction <= 1:
        raise WorkbenchError(f"kept fraction {kept_fraction} must be in (0, 1]")
    return float(kept_fraction)


def top_k_blocks(block_mass: torch.Tensor, kept_fraction: float) -> torch.Tensor:
    """The oracle mask [head, batch, n_q, n_k] of one layer's block_mass [batch, head, n_q, n_k]: per query block,
    the ceil(kept_fraction x v) key blocks of most mass among the v that hold any (at least one); blocks that
    hold no mass are dropped, query blocks with none keep everything (they hold no real query)."""
    kept_fraction = check_fraction(kept_fraction)
    seen = block_mass > 0
    k = (seen.sum(-1, keepdim=True) * kept_fraction).ceil().clamp_min(1)
    rank = block_mass.argsort(-1, descending=True).argsort(-1)  # 0 for the block of most mass
    keep = (rank < k) & seen
    keep |= ~seen.any(-1, keepdim=True)
    return keep.transpose(0, 1).contiguous()


def kept_share(masks: dict[int, torch.Tensor], dense: dict[int, torch.Tensor]) -> float:
    """The share of the blocks holding mass in the dense run (`dense`: layer -> block_mass) that `masks` keep."""
    kept = sum(int((m & (d.transpose(0, 1) > 0)).sum()) for m, d in ((masks[l], dense[l]) for l in masks))
    total = sum(int((dense[l] > 0).sum()) for l in masks)
    return kept / max(1, total)


def oracle_masks(subject: Subject, inputs, kept_fraction: float, block_size: int = DEFAULT_BLOCK_SIZE,
                 heads: Iterable[Head] | None = None) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(masks, block_mass): the oracle block masks of `inputs` at a budget (layer -> [head, batch, n_q, n_k]),
    from one dense traced run, and that run's block_mass (layer -> [batch, head, n_q, n_k]). heads: the heads
    made sparse (default all); the others keep every block."""
    kept_fraction = check_fraction(kept_fraction)
    traced = run_trace(subject, inputs, stats=("block_mass",), block_size=block_size, logits=None)
    dense = {layer: traced.stats["block_mass"][layer] for layer in range(traced.n_layers)}
    chosen = None if heads is None else check_heads(subject, heads)
    masks = {}
    for layer, mass in dense.items():
        mask = top_k_blocks(mass, kept_fraction)
        if chosen is not None:
            sparse = torch.zeros(mask.shape[0], dtype=torch.bool)
            sparse[[h for l, h in chosen if l == layer]] = True
            mask |= ~sparse[:, None, None, None]
        masks[layer] = mask
    return masks, dense


@contextlib.contextmanager
def block_sparse(subject: Subject, masks: dict[int, torch.Tensor], block_size: int = DEFAULT_BLOCK_SIZE
                 ) -> Iterator[None]:
    """While the block runs, each layer of `masks` (layer -> bool [head, 1 or batch, n_q, n_k]) attends only to
    the key blocks its mask keeps, per head and query block. Composes with the other edits; the model is
    restored on exit. The masks fit inputs of one length (and batch): a forward of another raises."""
    try:
        edits = {layer: HeadEdits(block_keep=mask.bool(), keep_block_size=block_size) for layer, mask in masks.items()}
    except ValueError as error:
        raise WorkbenchError(f"cannot apply the block masks: {error}") from error
    with capture(subject, stats=(), edits=edits):
        yield


def sparsity_sweep(subject: Subject, task: Task, fractions: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
                   block_size: int = DEFAULT_BLOCK_SIZE, heads: Iterable[Head] | None = None,
                   on_start: Callable[[float], None] | None = None) -> Result:
    """Score `task` with every head (or `heads`) keeping its oracle top blocks at each budget in `fractions`.

    The masks come from the dense run of the task's clean prompts (`oracle_masks`), one per budget. Table rows
    (layer = head = -1, with a `kept_fraction` column): each task metric's mean at the budget, its change from
    the dense run (`delta_<m>`), `kept_share` (the share of the blocks holding mass that the masks kept, which
    rounding up to whole blocks lifts above the budget on short inputs). Arrays: `fractions`, `base` [n] and
    `scores` [budget, n] of the task metric. on_start(seconds): the estimated duration, once the dense run is
    timed.
    """
    fractions = [check_fraction(f) for f in fractions]
    if not fractions:
        raise WorkbenchError("no budgets to sweep")
    start = time.perf_counter()
    base = evaluate(subject, task)
    if on_start is not None:
        on_start(3 * (time.perf_counter() - start) * len(fractions))
    prompts = [list(e.clean) for e in task.examples]
    length = encode(subject, "clean", task)["input_ids"].shape[1]
    rows, scores = [], []
    for fraction in tqdm(fractions, desc=f"block-sparse budgets on {task.name}", unit="budget"):
        masks, dense = oracle_masks(subject, prompts, fraction, block_size, heads)
        with block_sparse(subject, masks, block_size):
            sparse = evaluate(subject, task)
        for name, values in sparse.items():
            rows += [(fraction, name, float(values.mean())), (fraction, f"delta_{name}",
                                                              float((values - base[name]).mean()))]
        rows.append((fraction, "kept_share", kept_share(masks, dense)))
        scores.append(sparse[task.metric])
    table = pd.DataFrame(rows, columns=["kept_fraction", "metric", "value"])
    table.insert(0, "layer", LAYER_LEVEL)
    table.insert(1, "head", LAYER_LEVEL)
    return Result("sparsity_sweep", table, {"fractions": np.array(fractions), "base": base[task.metric],
                                            "scores": np.stack(scores)},
                  {"task": task.name, "metric": task.metric, "n_examples": len(task.examples),
                   "block_size": block_size, "length": length, "blocks": math.ceil(length / block_size),
                   "baseline": {k: float(v.mean()) for k, v in base.items()}})
