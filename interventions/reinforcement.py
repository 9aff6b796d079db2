"""VHR-style head reinforcement: amplify chosen heads' outputs by a gate inside the attention kernel.

The gate multiplies the head's attention output before the output projection (0 ablates, > 1 reinforces),
as in the head-reinforcement methods that strengthen heads found to carry the signal of interest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from workbench.interventions.select import Head, check_heads, per_head_edits
from workbench.subject import Subject
from workbench.tracer import capture


@contextlib.contextmanager
def reinforce(subject: Subject, heads: Iterable[Head], factor: float) -> Iterator[None]:
    """Multiply `heads`' outputs by `factor` inside the attention kernel while the block runs."""
    values = {head: factor for head in check_heads(subject, heads)}
    with capture(subject, stats=(), edits=per_head_edits(subject, "gate", values, 1.0)):
        yield
