"""Find a task's circuit: score the graph's edges (EAP, EAP-IG or patching), choose the strongest, measure
faithfulness.

`patching` scores nodes by activation patching of each head's output and then the edges between the
`candidates` strongest heads, the MLPs, the input and the logits by path patching: exact, but one forward pass
per head and per edge, so for small models; `eap` / `eap-ig` score every edge from one / `steps` backward passes.
"""

from __future__ import annotations

import pandas as pd

from workbench.errors import WorkbenchError
from workbench.probes.circuits.circuit import Circuit, faithfulness, select
from workbench.probes.circuits.eap import attribution_scores, node_scores
from workbench.probes.circuits.graph import edge_test, receivers, senders
from workbench.probes.circuits.patching import patch_heads
from workbench.probes.circuits.path_patching import path_patch
from workbench.probes.tasks import Task
from workbench.subject import Subject

METHODS = ("eap", "eap-ig", "patching")


def patching_scores(subject: Subject, task: Task, candidates: int = 8) -> tuple[pd.DataFrame, dict[str, float]]:
    """Edges (source, target, score = path-patching effect) among the strongest heads by activation patching,
    and node scores (heads: their patching effect; MLPs and input: the sum of their edges)."""
    effects = patch_heads(subject, task).metric("effect")
    strongest = effects.reindex(effects.value.abs().sort_values(ascending=False).index).head(candidates)
    chosen = {f"L{r.layer}.H{r.head}" for r in strongest.itertuples()}
    is_edge = edge_test(subject)
    keep = lambda n: not n.startswith("L") or n in chosen  # noqa: E731
    pairs = [(u, v) for u in senders(subject) for v in receivers(subject) if keep(u) and keep(v) and is_edge(u, v)]
    edges = path_patch(subject, task, pairs)[["source", "target", "effect"]].rename(columns={"effect": "score"})
    scores = node_scores(edges).to_dict()
    scores.update({f"L{r.layer}.H{r.head}": float(r.value) for r in effects.itertuples()})
    return edges, scores


def find_circuit(subject: Subject, task: Task, method: str = "eap-ig", top_k: int | None = 20,
                 threshold: float | None = None, max_heads: int | None = None, steps: int = 5,
                 candidates: int = 8, measure: bool = True) -> Circuit:
    """Score the edges with `method`, keep the strongest (`circuit.select`), and measure faithfulness."""
    if method not in METHODS:
        raise WorkbenchError(f"unknown circuit method {method!r}; known: {list(METHODS)}")
    if method == "patching":
        edges, scores = patching_scores(subject, task, candidates)
    else:
        edges = attribution_scores(subject, task, method, steps)
        scores = node_scores(edges).to_dict()
    edges = edges.assign(in_circuit=select(edges, top_k, threshold, max_heads))
    a = subject.adapter
    circuit = Circuit(subject.name, task.name, method, task.metric, a.n_layers, a.n_heads, edges, scores,
                      params={"top_k": top_k, "threshold": threshold, "max_heads": max_heads,
                              "n_examples": len(task.examples), **({"steps": steps} if method == "eap-ig" else {}),
                              **({"candidates": candidates} if method == "patching" else {})})
    if measure:
        circuit.faithfulness = faithfulness(subject, task, circuit.nodes)
    return circuit
