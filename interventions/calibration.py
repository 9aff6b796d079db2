"""ACT (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks: Training-Free Attention Calibration
Technique"): find the non-initial tokens that act as attention sinks in chosen heads, and scale their
attention down, giving it back to the other tokens in proportion.

Sinks are found on the inputs themselves with `workbench.probes.sinks.secondary_sinks` (a token receiving over
`ratio` times its uniform share); scaling by beta and renormalizing is a logit bias of log(beta) on those
keys, applied in-kernel: p'_j = beta p_j / (1 - p_j + beta p_j).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

from workbench.interventions.select import Head, check_heads, key_bias_edits
from workbench.probes.sinks import secondary_sinks
from workbench.errors import WorkbenchError
from workbench.subject import Subject
from workbench.tracer import capture, trace


def find_hidden_sinks(subject: Subject, inputs, heads: Iterable[Head] | None = None, ratio: float = 5.0,
                      min_queries: int = 4) -> dict[Head, list[int]]:
    """Per head (default all), the positions of its non-initial sink tokens in `inputs` (union over the batch)."""
    chosen = None if heads is None else set(check_heads(subject, heads))
    hits = secondary_sinks(trace(subject, inputs, stats=("received",)), ratio, min_queries).metric("received_ratio")
    found: dict[Head, set[int]] = {}
    for row in hits.itertuples():
        head = (int(row.layer), int(row.head))
        if chosen is None or head in chosen:
            found.setdefault(head, set()).add(int(row.position))
    return {head: sorted(positions) for head, positions in sorted(found.items())}


@contextlib.contextmanager
def calibrate(subject: Subject, inputs, heads: Iterable[Head] | None = None, beta: float = 0.4,
              ratio: float = 5.0) -> Iterator[dict[Head, list[int]]]:
    """While the block runs, scale the attention of `heads` (default all) to their hidden sinks in `inputs`
    by `beta` in (0, 1]; yields the sinks found, {(layer, head): [positions]}."""
    if not 0.0 < beta <= 1.0:
        raise WorkbenchError(f"ACT beta {beta} is outside (0, 1]")
    sinks = find_hidden_sinks(subject, inputs, heads, ratio)
    edits = key_bias_edits(subject, {head: dict.fromkeys(positions, math.log(beta))
                                     for head, positions in sinks.items()})
    with capture(subject, stats=(), edits=edits):
        yield sinks
