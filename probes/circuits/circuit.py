"""A circuit: the edges (and so the heads and MLPs) that carry a task, chosen from edge scores; its faithfulness,
the overlap of two circuits, and its export as JSON (the contract the Dash app reads) and as a plotly figure.

Faithfulness follows Wang et al. 2022: the task metric of the circuit alone, every head and MLP outside it
mean-ablated, divided by the full model's metric on the clean prompts (node-level: edges between two circuit
nodes are all kept). As in that paper the means are taken over the corrupted prompts of the same template, at
each position, not over all tokens: a mean over every token also removes what a head writes because of where it
is in the sentence, which no circuit can then restore. Overlap of head sets as in Merullo, Eickhoff and
Pavlick 2023 ("Circuit Component Reuse Across Tasks"): the shared heads, their share of the smaller circuit
and the Jaccard index.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from workbench.head_outputs import head_output_hook
from workbench.probes.circuits.graph import head_nodes, mlp_output, sites, with_mlp_output
from workbench.probes.tasks import Task, evaluate
from workbench.subject import Subject

if TYPE_CHECKING:
    import plotly.graph_objects as go

FORMAT = 1
MAX_EXPORTED_EDGES = 200  # edges outside the circuit beyond the strongest ones are left out of the JSON


@dataclass
class Circuit:
    """Edge scores of a model on a task, the chosen edges, and the nodes they touch."""

    model_id: str
    task: str
    method: str
    metric: str
    n_layers: int
    n_heads: int
    edges: pd.DataFrame  # source, target, score, in_circuit
    node_scores: dict[str, float]
    faithfulness: float | None = None
    params: dict = field(default_factory=dict)

    @property
    def nodes(self) -> set[str]:
        """Heads and MLPs touched by a chosen edge."""
        chosen = self.edges[self.edges.in_circuit]
        return (set(chosen.source) | set(chosen.target)) - {"input", "logits"}

    @property
    def heads(self) -> list[tuple[int, int]]:
        """The circuit's heads as sorted (layer, head) pairs."""
        return head_nodes(self.nodes)

    def to_json(self) -> dict:
        """The circuit as the JSON contract of `circuit_schema.md` (format 1)."""
        inside = self.nodes
        node = lambda i, kind, layer, head, score, flag: {  # noqa: E731
            "id": i, "kind": kind, "layer": layer, "head": head, "score": score, "in_circuit": flag}
        nodes = [node("input", "input", -1, None, None, True)]
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                i = f"L{l}.H{h}"
                nodes.append(node(i, "head", l, h, _num(self.node_scores.get(i)), i in inside))
            nodes.append(node(f"M{l}", "mlp", l, None, _num(self.node_scores.get(f"M{l}")), f"M{l}" in inside))
        nodes.append(node("logits", "logits", self.n_layers, None, None, True))
        order = self.edges.score.abs().sort_values(ascending=False, kind="stable").index
        ranked = self.edges.loc[order]
        kept = pd.concat([ranked[ranked.in_circuit], ranked[~ranked.in_circuit].head(MAX_EXPORTED_EDGES)])
        edges = [{"source": r.source, "target": r.target, "score": float(r.score), "in_circuit": bool(r.in_circuit)}
                 for r in kept.itertuples()]
        return {"format": FORMAT, "model_id": self.model_id, "task": self.task, "method": self.method,
                "metric": self.metric, "nodes": nodes, "edges": edges, "faithfulness": _num(self.faithfulness),
                "n_heads_in_circuit": len(self.heads), "n_heads_total": self.n_layers * self.n_heads,
                "params": self.params}

    def head_metrics(self) -> pd.DataFrame:
        """Store rows: per head `circuit_score` and `in_circuit` (0/1); per MLP the same at head = -1."""
        rows = []
        inside = self.nodes
        for l in range(self.n_layers):
            for h, i in [*((h, f"L{l}.H{h}") for h in range(self.n_heads)), (-1, f"M{l}")]:
                rows.append((l, h, "circuit_score", float(self.node_scores.get(i, float("nan")))))
                rows.append((l, h, "in_circuit", float(i in inside)))
        return pd.DataFrame(rows, columns=["layer", "head", "metric", "value"])


def _num(value) -> float | None:
    return None if value is None or value != value else float(value)


def select(edges: pd.DataFrame, top_k: int | None = None, threshold: float | None = None,
           max_heads: int | None = None) -> pd.Series:
    """in_circuit flags: edges taken by |score|, strongest first, until `top_k` are taken or |score| falls below
    `threshold`; an edge that would bring the circuit over `max_heads` heads is passed over."""
    order = edges.score.abs().sort_values(ascending=False, kind="stable")
    flags = pd.Series(False, index=edges.index)
    heads: set[str] = set()
    for index, magnitude in order.items():
        if (top_k is not None and flags.sum() >= top_k) or (threshold is not None and magnitude < threshold):
            break
        new = {n for n in (edges.source[index], edges.target[index]) if n.startswith("L")} - heads
        if max_heads is not None and len(heads) + len(new) > max_heads:
            continue
        heads |= new
        flags[index] = True
    return flags


def reference_outputs(subject: Subject, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over `rows`: every head's output [layer, B, L, H, Dh] and every MLP's [layer, B, L, d]."""
    heads: dict[int, torch.Tensor] = {}
    mlps: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, a, out, l=l: mlps.__setitem__(l, mlp_output(out).detach().float()))
             for l, m in enumerate(sites(subject).mlps)]
    try:
        with torch.no_grad(), head_output_hook(subject, lambda l, x: heads.__setitem__(l, x.detach().float())):
            subject.model(**subject.encode(rows), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    n = subject.adapter.n_layers
    return torch.stack([heads[l] for l in range(n)]), torch.stack([mlps[l] for l in range(n)])


def group_means(task: Task, values: torch.Tensor) -> torch.Tensor:
    """values [layer, B, L, ...] of the reference prompts -> for each example, the mean at each position over the
    reference prompts of its group and length (`Example.group`); positions past an example's end are left 0."""
    keys = [(e.group, len(e.clean)) for e in task.examples]
    members: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    means = torch.zeros_like(values)
    for (_, length), rows in members.items():
        means[:, rows, :length] = values[:, rows, :length].mean(1, keepdim=True)
    return means


@contextlib.contextmanager
def mean_ablate_outside(subject: Subject, task: Task, nodes: set[str]) -> Iterator[None]:
    """While the block runs on the task's clean prompts (in task order), replace the output of every head and MLP
    outside `nodes` by its mean over the task's corrupted prompts (the clean ones for tasks without) of the same
    group and length, position by position: Wang et al. 2022's mean over the ABC distribution of one template,
    which keeps what a component writes at each place in the template and removes what depends on the names."""
    which = "corrupted" if all(e.corrupted is not None for e in task.examples) else "clean"
    heads, mlps = (group_means(task, v) for v in reference_outputs(
        subject, [list(e.corrupted if which == "corrupted" else e.clean) for e in task.examples]))
    kept = set(head_nodes(nodes))
    dropped = {l: [h for h in range(subject.adapter.n_heads) if (l, h) not in kept]
               for l in range(subject.adapter.n_layers)}

    def edit(layer: int, x: torch.Tensor) -> torch.Tensor | None:
        if not dropped[layer]:
            return None
        x = x.clone()
        x[:, :, dropped[layer]] = heads[layer, :, :x.shape[1], dropped[layer]].to(x)
        return x

    def mean_of(layer: int):
        def hook(module, args, out):
            written = mlp_output(out)
            return with_mlp_output(out, mlps[layer, :, :written.shape[1]].to(written).clone())
        return hook

    hooks = [m.register_forward_hook(mean_of(l))
             for l, m in enumerate(sites(subject).mlps) if f"M{l}" not in nodes]
    try:
        with head_output_hook(subject, edit):
            yield
    finally:
        for h in hooks:
            h.remove()


def circuit_metric(subject: Subject, task: Task, nodes: set[str]) -> float:
    """The task metric's mean on the clean prompts with every head and MLP outside `nodes` mean-ablated
    (`mean_ablate_outside`)."""
    with torch.no_grad(), mean_ablate_outside(subject, task, nodes):
        return float(evaluate(subject, task)[task.metric].mean())


def faithfulness(subject: Subject, task: Task, nodes: set[str]) -> float:
    """circuit_metric / the full model's metric on the clean prompts (Wang et al. 2022)."""
    return circuit_metric(subject, task, nodes) / float(evaluate(subject, task)[task.metric].mean())


def overlap(a: Circuit, b: Circuit) -> dict:
    """Shared heads of two circuits, their share of the smaller one, and the Jaccard index of the head sets."""
    ha, hb = set(a.heads), set(b.heads)
    shared = sorted(ha & hb)
    return {"shared": [f"L{l}.H{h}" for l, h in shared],
            "overlap": len(shared) / max(1, min(len(ha), len(hb))),
            "jaccard": len(shared) / max(1, len(ha | hb))}


def circuit_figure(data: dict) -> go.Figure:
    """The circuit JSON (`Circuit.to_json`) as a layered graph: x = layer (MLPs half a layer right), y = head;
    edges in the circuit drawn with width by |score|, blue where corrupting them raises the metric, red where
    it lowers it. (plotly is imported here: the circuit methods themselves run without it.)"""
    import plotly.graph_objects as go

    n_heads = max((n["head"] for n in data["nodes"] if n["kind"] == "head"), default=0) + 1
    where = {}
    for n in data["nodes"]:
        x = {"input": -1.0, "mlp": n["layer"] + 0.5}.get(n["kind"], float(n["layer"]))
        y = {"head": n["head"], "mlp": n_heads}.get(n["kind"], (n_heads - 1) / 2)
        where[n["id"]] = (x, y)
    chosen = [e for e in data["edges"] if e["in_circuit"]]
    largest = max((abs(e["score"]) for e in chosen), default=1.0) or 1.0
    fig = go.Figure()
    for e in chosen:
        (x0, y0), (x1, y1) = where[e["source"]], where[e["target"]]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text", showlegend=False,
                                 text=f"{e['source']} -> {e['target']}: {e['score']:.4f}",
                                 line={"width": 1 + 7 * abs(e["score"]) / largest,
                                       "color": "#c0392b" if e["score"] < 0 else "#2e86c1"}))
    inside = [n for n in data["nodes"] if n["in_circuit"]]
    outside = [n for n in data["nodes"] if not n["in_circuit"]]
    for group, color, label in ((outside, "#d5d8dc", "outside"), (inside, "#1c2833", "in circuit")):
        fig.add_trace(go.Scatter(
            x=[where[n["id"]][0] for n in group], y=[where[n["id"]][1] for n in group], mode="markers+text",
            marker={"size": 14, "color": color}, text=[n["id"] for n in group], textposition="top center",
            name=label, hovertext=[f"{n['id']}: {n['score']}" for n in group], hoverinfo="text"))
    faith = data["faithfulness"]
    fig.update_layout(title=f"{data['model_id']} on {data['task']} ({data['method']}): "
                            f"{data['n_heads_in_circuit']}/{data['n_heads_total']} heads"
                            + ("" if faith is None else f", faithfulness {faith:.2f}"),
                      xaxis={"title": "layer", "dtick": 1}, yaxis={"title": "head", "dtick": 1}, height=520)
    return fig


def save(circuit: Circuit, folder: Path) -> list[Path]:
    """Write circuit.json, circuit.html (the figure, plotly inlined) and edges.parquet into `folder`."""
    data = circuit.to_json()
    files = [folder / "circuit.json", folder / "circuit.html", folder / "edges.parquet"]
    files[0].write_text(json.dumps(data, indent=1))
    circuit_figure(data).write_html(files[1], include_plotlyjs=True)
    circuit.edges.to_parquet(files[2], index=False)
    return files
