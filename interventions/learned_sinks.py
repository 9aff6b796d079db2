"""Scale the learned attention sinks of a model that has them (GPT-OSS: one sink logit per head in every softmax
denominator, the learned form of the attention sinks of Xiao et al. 2023, "Efficient Streaming Language Models
with Attention Sinks").

Scaling the sink's unnormalized weight exp(u_h) by s is adding log(s) to its logit, which the kernels do in-pass
(`kernels.HeadEdits.sink_bias`): the sink's share becomes s q / (1 - q + s q) for a row where it was q, and the
keys keep their proportions. s = 0 removes the sink (the row's weights sum to 1, as in a model without one);
s > 1 lets the head attend to nothing more often.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

from workbench.errors import WorkbenchError
from workbench.interventions.select import Head, per_head_edits
from workbench.subject import Subject
from workbench.tracer import capture


@contextlib.contextmanager
def scale_learned_sinks(subject: Subject, scales: Mapping[Head, float]) -> Iterator[None]:
    """Scale each head's learned sink weight by scales[(layer, head)] >= 0 while the block runs (0 removes it).

    WorkbenchError for a model without learned sinks or a negative scale, before anything runs.
    """
    if not subject.adapter.learned_sinks:
        raise WorkbenchError(f"{subject.name} ({subject.adapter.model_type}) has no learned attention sinks to scale")
    bad = {head: s for head, s in scales.items() if not s >= 0}
    if bad:
        raise WorkbenchError(f"learned-sink scales must be >= 0, got {bad}")
    biases = {head: math.log(s) if s > 0 else -math.inf for head, s in scales.items()}
    with capture(subject, stats=(), edits=per_head_edits(subject, "sink_bias", biases, 0.0)):
        yield
