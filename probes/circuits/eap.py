"""Edge attribution patching: a first-order estimate of every edge's patching effect from one backward pass.

EAP (Syed, Rager and Conmy 2023, "Attribution Patching Outperforms Automated Circuit Discovery"): the effect of
patching edge u -> v with its corrupted value is estimated as
    score(u -> v) = (a_u(corrupted) - a_u(clean)) . dM/dx_v      (summed over positions, mean over examples)
where a_u is the sender's output in the residual stream and x_v the receiver's input, the gradient taken on the
clean run. EAP-IG (Hanna, Pezzelle and Belinkov 2024, "Have Faith in Faithfulness") averages the gradient over
`steps` inputs interpolated from the corrupted to the clean input embeddings (k / steps, k = 1..steps).
Scores are in units of the task's metric: negative for an edge whose corruption lowers a logit difference.
A node's score is the sum over its outgoing edges, the attribution of patching the node itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.probes.circuits.graph import (
    ReceiverDeltas,
    edge_test,
    receivers,
    record,
    senders,
    sites,
    split_receivers,
)
from workbench.probes.tasks import Task, encode, score_logits
from workbench.subject import Subject

METHODS = ("eap", "eap-ig")


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients while the block runs (only the receivers' deltas are differentiated)."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def interpolated_input(subject: Subject, start: torch.Tensor, end: torch.Tensor, alpha: float) -> Iterator[None]:
    """Replace the residual entering layer 0 by start + alpha (end - start) while the block runs."""
    def hook(module, args, kwargs):
        x = start + alpha * (end - start)
        if args:
            return (x.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x.to(kwargs["hidden_states"].dtype)}

    handle = sites(subject).layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def receiver_gradients(subject: Subject, task: Task, enc: dict[str, torch.Tensor], alphas: list[float],
                       corrupted_input: torch.Tensor | None = None, clean_input: torch.Tensor | None = None
                       ) -> ReceiverDeltas:
    """dM/dx_v for every receiver v (M = the mean of task.metric), averaged over the inputs interpolated at
    `alphas` between the corrupted and the clean layer-0 residual (alpha = 1 alone: the clean run)."""
    batch, length = enc["input_ids"].shape
    total = ReceiverDeltas.zeros(subject, batch, length)
    for alpha in alphas:
        leaves = ReceiverDeltas.zeros(subject, batch, length, requires_grad=True)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_frozen(subject.model))
            stack.enter_context(split_receivers(subject, leaves))
            if alpha != 1.0:
                stack.enter_context(interpolated_input(subject, corrupted_input, clean_input, alpha))
            logits = subject.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                   use_cache=False).logits
            metric = score_logits(task, logits, enc)[task.metric].mean()
            metric.backward()
        for name in ("heads", "mlps", "logits"):
            getattr(total, name).add_(getattr(leaves, name).grad.detach() / len(alphas))
    return total


def attribution_scores(subject: Subject, task: Task, method: str = "eap", steps: int = 5) -> pd.DataFrame:
    """Every edge's score: a DataFrame (source, target, score) in graph order, for method `eap` or `eap-ig`."""
    if method not in METHODS:
        raise WorkbenchError(f"unknown attribution method {method!r}; known: {list(METHODS)}")
    if steps < 1:
        raise WorkbenchError(f"EAP-IG needs at least 1 step, got {steps}")
    task.check_pairs()
    clean, corrupted = encode(subject, "clean", task), encode(subject, "corrupted", task)
    a_clean, a_corrupted = record(subject, clean), record(subject, corrupted)
    delta = a_corrupted - a_clean
    alphas = [1.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    grads = receiver_gradients(subject, task, clean, alphas, a_corrupted.input, a_clean.input)
    sources, targets = senders(subject), receivers(subject)
    sent = torch.stack([delta.of(u) for u in sources]).double()
    got = torch.stack([grads.of(v) for v in targets]).double()
    scores = torch.einsum("ubld,vbld->uv", sent, got).numpy()
    is_edge = edge_test(subject)
    rows = [(u, v, float(scores[i, j])) for i, u in enumerate(sources) for j, v in enumerate(targets)
            if is_edge(u, v)]
    return pd.DataFrame(rows, columns=["source", "target", "score"])


def node_scores(edges: pd.DataFrame) -> pd.Series:
    """Each sender's score: the sum of its outgoing edges' scores (indexed by node id, graph order kept)."""
    return edges.groupby("source", sort=False).score.sum()


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length sequences (Pearson's r of their average ranks)."""
    ra, rb = pd.Series(np.asarray(a, float)).rank(), pd.Series(np.asarray(b, float)).rank()
    return float(np.corrcoef(ra, rb)[0, 1])
