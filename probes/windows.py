"""Windows of one head's attention, computed on demand: the detail behind a per-position view.

At long context no [q, k] map is ever built: a long-sequence view shows per-position statistics (received
attention, sink mass, entropy), and a window of one head's map is computed when asked for, from the inputs of
that head's layer (`layer_inputs`: q and k after the model's position encoding, from a forward stopped once that
layer's attention ran). Probabilities are the head's true attention (keys before the window are not shown, and
the shown ones are not renormalized). The inputs of a layer can be kept and asked for any number of windows:
moving a window costs one small kernel call, never a forward.
"""

from __future__ import annotations

import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.subject import Subject
from workbench.tracer import AttentionInputs, capture


class _Reached(Exception):
    """Raised from the forward once the wanted layer's attention ran: nothing after it is computed."""


def layer_inputs(subject: Subject, inputs, layer: int) -> AttentionInputs:
    """The attention inputs of `layer` (q, k and the kernel options) for the first sequence of `inputs`, from a
    forward that stops once that layer's attention ran."""
    subject.adapter.check_head(layer, 0)
    enc = subject.encode(inputs)
    enc = {name: value[:1] for name, value in enc.items()}

    def stop(done: int) -> None:
        if done == layer:
            raise _Reached

    with torch.no_grad(), capture(subject, stats=(), keep_inputs=(layer,), on_layer=stop) as cap:
        try:
            subject.model(**enc, use_cache=False)
        except _Reached:
            pass
    if layer not in cap.input_records:
        raise WorkbenchError(f"layer {layer} did not go through the workbench attention")
    return cap.input_records[layer]


def query_window(subject: Subject, inputs, layer: int, head: int, query: int, width: int = 128,
                 kept: AttentionInputs | None = None) -> pd.DataFrame:
    """Head (layer, head)'s attention from position `query` of the first sequence to keys query-width+1..query:
    a DataFrame with columns position, token, p (positions count from the first real token).

    kept: the layer's inputs from an earlier `layer_inputs` call on the same inputs (no forward is run then)."""
    if width < 1:
        raise WorkbenchError(f"width {width} must be at least 1")
    subject.adapter.check_head(layer, head)
    enc = subject.encode(inputs)
    n = int(enc["attention_mask"][0].sum())
    if not 0 <= query < n:
        raise WorkbenchError(f"query position {query} is outside the text's {n} tokens (positions 0-{n - 1})")
    start = max(0, query - width + 1)
    kept = kept or layer_inputs(subject, inputs, layer)
    first = int(enc["attention_mask"][0].long().argmax())  # left padding, if any, comes before the real tokens
    tokens = subject.token_strings(enc["input_ids"][:1])[0][first + start:first + query + 1]
    p = kept.pattern([head], (first + start, first + query + 1))[0, 0, -1]
    return pd.DataFrame({"position": range(start, query + 1), "token": tokens, "p": p.float().cpu().numpy()})
