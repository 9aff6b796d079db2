"""VAR-style attention redistribution (Kang et al., ICLR 2025, "See What You Are Told: Visual Attention Sink in
Large Multimodal Models"): in chosen heads, take a fraction of the attention each query pays to the sink
tokens and give it to a chosen set of tokens, in proportion to the attention they already get.

With S_i, T_i the attention row i pays to the sinks and to the targets, and f the fraction:
a'_ij = (1 - f) a_ij on the sinks, a_ij (1 + f S_i / T_i) on the targets, a_ij elsewhere (and on every key
of a row that pays the targets nothing). The edit depends on the whole row, so the attention kernel applies
it in-pass (`kernels.HeadEdits.redistribute`); no attention map is materialized.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch

from workbench.errors import WorkbenchError
from workbench.interventions.select import Head, check_heads
from workbench.kernels import HeadEdits
from workbench.subject import Subject
from workbench.tracer import capture


@contextlib.contextmanager
def redistribute(subject: Subject, heads: Iterable[Head], targets: Sequence[int], fraction: float,
                 sink_keys: Sequence[int] = (0,)) -> Iterator[None]:
    """While the block runs, move `fraction` in [0, 1] of the attention `heads` pay to the `sink_keys` onto
    the `targets`, row by row.

    sink_keys and targets are disjoint token positions counted from the first real (non-padding) token, as
    the statistics' sink keys are; a target past the end of an input receives nothing. Composes with the
    other edits (a second redistribution only over the same keys); the model is restored on exit, also on
    error. Statistics traced inside the block (`workbench.trace`) describe the redistributed attention.
    """
    if not 0.0 <= fraction <= 1.0:
        raise WorkbenchError(f"redistributed fraction {fraction} is outside [0, 1]")
    rows: dict[int, torch.Tensor] = {}
    for layer, head in check_heads(subject, heads):
        rows.setdefault(layer, torch.zeros(subject.adapter.n_heads))[head] = float(fraction)
    try:
        edits = {layer: HeadEdits(redistribute=row, source_keys=torch.tensor([int(k) for k in sink_keys]),
                                  target_keys=torch.tensor([int(k) for k in targets])) for layer, row in rows.items()}
    except ValueError as error:  # no targets, a negative position, a key both sink and target
        raise WorkbenchError(f"cannot redistribute: {error}") from error
    with capture(subject, stats=(), edits=edits):
        yield
