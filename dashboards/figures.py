"""The app's figures: pure functions from arrays and tables to `go.Figure` (tested without a browser).

Heads are drawn with layers as rows and heads as columns (a heatmap cell's x is its head, y its layer); the
nodes of a circuit graph carry [layer, head, model] in their `customdata`, so that one pattern-matching
callback can open the view of any head clicked.
Numbers go into the figures as plain lists (NaN as None), not plotly's base64 arrays, so that the browser's
copy of a figure reads back as the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import cycle

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.dashboards.circuits import Circuit

MARGIN = dict(l=50, r=20, t=40, b=40)


def _values(array) -> list:
    """A numeric array as nested lists, NaN as None."""
    array = np.asarray(array, dtype=float)
    return np.where(np.isnan(array), None, array).tolist()


def _layout(fig: go.Figure, title: str, height: int = 320) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.02, font=dict(size=14)), margin=MARGIN, height=height,
                      template="plotly_white")
    return fig


def head_heatmap(matrix: np.ndarray, title: str, model: str, colorscale: str = "Viridis") -> go.Figure:
    """A [layer, head] matrix of `model` as a heatmap (layer 0 at the top); hover shows L{layer}.H{head}."""
    matrix = np.asarray(matrix, dtype=float)
    n_layers, n_heads = matrix.shape
    fig = go.Figure(go.Heatmap(
        z=_values(matrix), x=list(range(n_heads)), y=list(range(n_layers)), colorscale=colorscale, name=model,
        hovertemplate="L%{y}.H%{x}: %{z:.3f}<extra></extra>", xgap=1, ygap=1,
    ))
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="layer", dtick=1, autorange="reversed")
    return _layout(fig, title, height=max(220, 60 + 26 * n_layers))


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height=200)


WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def token_label(token: str) -> str:
    """A token as an axis or hover label: whitespace drawn as visible marks (␣ space, ↵ newline, ⇥ tab), an
    empty token as ∅, so that no label is blank."""
    if token == "":
        return "∅"
    if token.strip():
        return token
    return "".join(WHITESPACE.get(c, c) for c in token)


def token_labels(tokens: Sequence[str]) -> list[str]:
    """`token_label` of every token."""
    return [token_label(t) for t in tokens]


def _labels(tokens: Sequence[str], start: int = 0) -> list[str]:
    """Unique axis labels `position:token` (plotly merges equal category labels)."""
    return [f"{start + i}:{t}" for i, t in enumerate(tokens)]


def pattern_figure(pattern: np.ndarray, tokens: Sequence[str], start: int, title: str) -> go.Figure:
    """One head's attention map over positions [start, start + len(tokens)): queries as rows, keys as columns.

    Rows are the head's true attention, not renormalized to the window: what a row's cells do not hold went to
    keys before the window (often the first token, a sink). The colour bar says how much that is, and the scale
    runs from 0 to the window's largest cell."""
    pattern = np.asarray(pattern, dtype=float)
    if pattern.shape != (len(tokens), len(tokens)):
        raise ValueError(f"pattern of shape {pattern.shape} does not match {len(tokens)} tokens")
    labels = _labels(tokens, start)
    outside = 1.0 - pattern.sum(1)
    note = "" if start == 0 else (f"<br>{outside.mean():.0%} of each row<br>(mean; up to {outside.max():.0%})"
                                  f"<br>goes to keys<br>before {start}")
    fig = go.Figure(go.Heatmap(z=_values(pattern), x=labels, y=labels, colorscale="Blues", zmin=0,
                               customdata=_values(np.repeat(outside[:, None], len(tokens), 1)),
                               colorbar=dict(title=dict(text="attention p" + note, side="top")),
                               hovertemplate="query %{y}<br>key %{x}<br>p = %{z:.3f}<br>row's attention before "
                                             "the window: %{customdata:.3f}<extra></extra>"))
    fig.update_xaxes(title="key (position:token)", tickangle=-60, type="category")
    fig.update_yaxes(title="query (position:token)", autorange="reversed", type="category")
    return _layout(fig, title, height=260 + 12 * len(tokens))


def next_token_figure(tokens: Sequence[str], before: np.ndarray, after: np.ndarray, title: str) -> go.Figure:
    """The next-token probabilities of `tokens` before and after an edit, as two bar panels side by side."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("before", "after"), shared_yaxes=True)
    labels = [repr(t) for t in tokens]
    for col, (name, probs) in enumerate((("before", before), ("after", after)), start=1):
        fig.add_trace(go.Bar(x=labels, y=_values(probs), name=name,
                             hovertemplate="%{x}: %{y:.4f}<extra>" + name + "</extra>"), row=1, col=col)
    fig.update_yaxes(title="probability", row=1, col=1)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, height=340)


def circuit_positions(circuit: Circuit) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: x is the layer (input left of layer 0, logits right of the last layer),
    heads stacked by index within their layer and the layer's MLP below them."""
    positions = {}
    for node in circuit.nodes:
        if node["kind"] == "head":
            y = -float(node["head"])
        elif node["kind"] == "mlp":
            y = -float(circuit.n_heads) - 0.5
        else:
            y = -(circuit.n_heads - 1) / 2
        positions[node["id"]] = (float(node["layer"]), y)
    return positions


def circuit_figure(circuit: Circuit, only_circuit: bool = False) -> go.Figure:
    """The circuit graph: in-circuit edges dark with width by |score|, the other edges faint (or hidden);
    nodes coloured by kind, in-circuit nodes outlined. Head nodes carry [layer, head, model] customdata."""
    pos = circuit_positions(circuit)
    fig = go.Figure()
    top = max((abs(e["score"]) for e in circuit.edges if e["score"] is not None), default=1.0) or 1.0
    for edge in sorted(circuit.edges, key=lambda e: e["in_circuit"]):
        if only_circuit and not edge["in_circuit"]:
            continue
        (x0, y0), (x1, y1) = pos[edge["source"]], pos[edge["target"]]
        score = abs(edge["score"]) if edge["score"] is not None else 0.0
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
            line=dict(width=0.5 + 4 * score / top if edge["in_circuit"] else 0.5,
                      color="rgba(40,60,140,0.8)" if edge["in_circuit"] else "rgba(150,150,150,0.25)"),
        ))
    colours = {"input": "#2ca02c", "head": "#1f77b4", "mlp": "#ff7f0e", "logits": "#d62728"}
    for kind, colour in colours.items():
        nodes = [n for n in circuit.nodes if n["kind"] == kind and (n["in_circuit"] or not only_circuit)]
        if not nodes:
            continue
        fig.add_trace(go.Scatter(
            x=[pos[n["id"]][0] for n in nodes], y=[pos[n["id"]][1] for n in nodes], mode="markers+text",
            name=kind, text=[n["id"] for n in nodes], textposition="top center",
            customdata=[[n["layer"], n["head"], circuit.model_id] for n in nodes],
            hovertext=[f"{n['id']} score={n['score']}" for n in nodes], hoverinfo="text",
            marker=dict(size=[16 if n["in_circuit"] else 9 for n in nodes], color=colour,
                        opacity=[1.0 if n["in_circuit"] else 0.35 for n in nodes],
                        line=dict(width=[2 if n["in_circuit"] else 0 for n in nodes], color="black")),
        ))
    fig.update_xaxes(title="layer", dtick=1, zeroline=False)
    fig.update_yaxes(visible=False)
    faith = "n/a" if circuit.faithfulness is None else f"{circuit.faithfulness:.2f}"
    title = (f"{circuit.model_id} / {circuit.task}: {circuit.method} on {circuit.metric}, "
             f"{circuit.n_heads_in_circuit} of {circuit.n_heads_total} heads, faithfulness {faith}")
    return _layout(fig, title, height=max(360, 70 * circuit.n_heads))


def runs_figure(tables: Mapping[str, pd.DataFrame], metric: str) -> go.Figure:
    """Metric `metric` of each run's head table (layer, head, metric, value) as heatmaps side by side."""
    fig = make_subplots(rows=1, cols=len(tables), subplot_titles=list(tables), horizontal_spacing=0.08)
    values = [t[(t.metric == metric) & (t["head"] >= 0) & (t.layer >= 0)] for t in tables.values()]
    values = [v for v in values if not v.empty]
    if not values:
        return empty_figure(f"no per-head values of {metric!r} in the selected runs")
    low = min(float(v.value.min()) for v in values)
    high = max(float(v.value.max()) for v in values)
    for col, table in enumerate(tables.values(), start=1):
        rows = table[(table.metric == metric) & (table["head"] >= 0) & (table.layer >= 0)]
        if rows.empty:
            continue
        grid = rows.pivot_table(index="layer", columns="head", values="value")
        fig.add_trace(go.Heatmap(z=_values(grid.to_numpy()), x=list(grid.columns), y=list(grid.index), zmin=low,
                                 zmax=high, coloraxis="coloraxis",
                                 hovertemplate="L%{y}.H%{x}: %{z:.3f}<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", title="layer" if col == 1 else None, row=1, col=col)
        fig.update_xaxes(title="head", row=1, col=col)
    fig.update_layout(coloraxis=dict(colorscale="Viridis"))
    return _layout(fig, metric, height=360)


HEAD_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]  # one per head, in every row
SEQUENCE_TITLES = {"received": "attention received (sum of p over the queries)",
                   "sink_mass": "sink mass (p on the first token)", "entropy": "entropy of the query's row (nats)"}
SEQUENCE_UNITS = {"received": "sum of p", "sink_mass": "p", "entropy": "nats"}


def sequence_figure(series: Mapping[str, Mapping[str, np.ndarray]], tokens: Sequence[str], title: str) -> go.Figure:
    """Per-position statistics along a text of any length: one row per statistic (received attention, sink
    mass, entropy), one line per head, x shared and zoomable (WebGL lines: 32k+ positions stay responsive).

    series: statistic -> head name -> [n] values. Hover shows position, token and value; a click on a point
    gives its position as the point's x (the app opens that query's attention window)."""
    names = list(series)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[SEQUENCE_TITLES.get(n, n) for n in names])
    positions = list(range(len(tokens)))
    colors = dict(zip(dict.fromkeys(h for by_head in series.values() for h in by_head), cycle(HEAD_COLORS)))
    for row, name in enumerate(names, start=1):
        for head, values in series[name].items():
            values = np.asarray(values, dtype=float)
            if len(values) != len(tokens):
                raise ValueError(f"{name} of {head} has {len(values)} values for {len(tokens)} tokens")
            fig.add_trace(go.Scattergl(x=positions, y=_values(values), mode="lines", name=head, legendgroup=head,
                                       showlegend=row == 1, customdata=list(tokens), line={"color": colors[head]},
                                       hovertemplate=f"{head} %{{x}}: %{{customdata}}<br>{name} %{{y:.3f}}"
                                                     "<extra></extra>"), row=row, col=1)
        fig.update_yaxes(title=SEQUENCE_UNITS.get(name), row=row, col=1)
    fig.update_xaxes(title="position (token index; drag to zoom, double-click resets; click a point for its query)",
                     row=len(names), col=1)
    return _layout(fig, title, height=170 * len(names) + 80).update_layout(dragmode="zoom", hovermode="closest")


def query_figure(probabilities: np.ndarray, tokens: Sequence[str], start: int, query: int, title: str) -> go.Figure:
    """One query's attention over the keys start..query (a window ending at the query), keys by position."""
    probabilities = np.asarray(probabilities, dtype=float)
    if len(probabilities) != len(tokens) or start + len(tokens) - 1 != query:
        raise ValueError(f"{len(probabilities)} probabilities for keys {start}..{query} and {len(tokens)} tokens")
    fig = go.Figure(go.Bar(x=list(range(start, query + 1)), y=_values(probabilities), customdata=list(tokens),
                           hovertemplate="key %{x}: %{customdata}<br>p = %{y:.4f}<extra></extra>"))
    fig.update_xaxes(title=f"key position (query {query})")
    fig.update_yaxes(title="attention p", rangemode="tozero")
    return _layout(fig, title, height=280)
