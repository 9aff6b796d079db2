"""One query's attention over a window of keys, computed on demand: the detail behind a per-position view.

At long context no [q, k] map is ever built: a long-sequence view shows per-position statistics (received
attention, sink mass, entropy), and a click on a position asks for that query's attention over the `width` keys
that end at it, from one trace that keeps the head's pattern over that window only (`patterns` with a
`pattern_window`). Probabilities are the head's true attention (keys before the window are not shown, and the
shown ones are not renormalized).
"""

from __future__ import annotations

import pandas as pd

from workbench.errors import WorkbenchError
from workbench.subject import Subject
from workbench.tracer import trace


def query_window(subject: Subject, inputs, layer: int, head: int, query: int, width: int = 128) -> pd.DataFrame:
    """Head (layer, head)'s attention from position `query` of the first sequence to keys query-width+1..query:
    a DataFrame with columns position, token, p (positions count from the first real token)."""
    if width < 1:
        raise WorkbenchError(f"width {width} must be at least 1")
    subject.adapter.check_head(layer, head)
    n = int(subject.encode(inputs)["attention_mask"][0].sum())
    if not 0 <= query < n:
        raise WorkbenchError(f"query position {query} is outside the text's {n} tokens (positions 0-{n - 1})")
    start = max(0, query - width + 1)
    run = trace(subject, inputs, stats=(), patterns=[(layer, head)], pattern_window=(start, query + 1), logits=None)
    tokens = run.real_tokens(0)[start:query + 1]
    return pd.DataFrame({"position": range(start, query + 1), "token": tokens,
                         "p": run.patterns[(layer, head)][0, -1].float().numpy()})
