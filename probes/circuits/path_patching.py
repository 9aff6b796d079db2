"""Path patching (Wang et al. 2022, "Interpretability in the Wild"; Goldowsky-Dill et al. 2023): the effect of the
direct path from a sender to a receiver.

The clean run is repeated with one receiver's input changed by the sender's corrupted-minus-clean output, every
other node reading its clean input (`graph.split_receivers`); what the receiver then writes flows on to the
logits freely. This is the exact edge patching that edge attribution patching (`eap`) estimates to first order.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from workbench import parallel
from workbench.errors import WorkbenchError
from workbench.probes.circuits.graph import ReceiverDeltas, edge_test, record, split_receivers
from workbench.probes.tasks import Task, encode, evaluate, normalized, score_logits
from workbench.subject import Subject


def path_patch(subject: Subject, task: Task, edges: Sequence[tuple[str, str]], scale: float = 1.0) -> pd.DataFrame:
    """Per edge (sender, receiver): `patched` (the task metric's mean with the edge carrying `scale` times the
    sender's corrupted-minus-clean output), `effect` (patched - clean) and `normalized` (clean = 1, corrupted = 0).
    """
    task.check_pairs()
    is_edge = edge_test(subject)
    for u, v in edges:
        if not is_edge(u, v):
            raise WorkbenchError(f"{u} -> {v} is not an edge: {u} does not write before {v} reads")
    clean_enc, corrupted_enc = encode(subject, "clean", task), encode(subject, "corrupted", task)
    delta = record(subject, corrupted_enc) - record(subject, clean_enc)
    clean = float(evaluate(subject, task, "clean")[task.metric].mean())
    corrupted = float(evaluate(subject, task, "corrupted")[task.metric].mean())

    def run(edge: tuple[str, str]) -> tuple:
        u, v = edge
        deltas = ReceiverDeltas.zeros(subject, *clean_enc["input_ids"].shape)
        deltas.of(v).copy_(scale * delta.of(u))
        with torch.no_grad(), split_receivers(subject, deltas):
            logits = subject.model(input_ids=clean_enc["input_ids"], attention_mask=clean_enc["attention_mask"],
                                   use_cache=False).logits
        patched = float(score_logits(task, logits, clean_enc)[task.metric].mean())
        return u, v, patched, patched - clean, normalized(patched, clean, corrupted)

    rows = parallel.map_items(run, list(edges), desc="path patching", unit="edge")
    return pd.DataFrame(rows, columns=["source", "target", "patched", "effect", "normalized"])
