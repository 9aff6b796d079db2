"""The head-ablation report: one self-contained HTML page, and the same numbers as JSON and Parquet beside it.

The page holds a plotly layer x head heatmap of each head's effect, a table of the top heads, a per-example
breakdown for them, and the command and model that produced it. plotly's JS is inlined, so the page opens
offline. The figures are pure functions from data to `go.Figure` (testable without a browser).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from workbench.atomic import replace_file
from workbench.probes.result import Result
from workbench.probes.tasks import Task

TOP_K = 10


def report_data(result: Result, task: Task, model_id: str, n_layers: int, n_heads: int, command: str) -> dict:
    """The report's numbers as plain JSON-ready values: the [layer][head] matrix of the task metric's mean
    change (null where a head was not ablated), the heads ranked by importance, and the per-example changes."""
    heads = [tuple(int(x) for x in h) for h in result.arrays["heads"]]
    delta = result.arrays["delta"]
    matrix: list[list[float | None]] = [[None] * n_heads for _ in range(n_layers)]
    for (layer, head), row in zip(heads, delta, strict=True):
        matrix[layer][head] = float(row.mean())
    wide = result.table.pivot_table(index=["layer", "head"], columns="metric", values="value").reset_index()
    ranked = wide.sort_values("importance", ascending=False, kind="stable")
    return {
        "model_id": model_id, "task": task.name, "mode": result.params["mode"], "metric": result.params["metric"],
        "command": command, "n_examples": len(task.examples), "baseline": result.params["baseline"],
        "matrix": matrix,
        "ranking": [{k: (int(v) if k in ("layer", "head") else float(v)) for k, v in row.items()}
                    for row in ranked.to_dict("records")],
        "examples": [{"example": i, "text": e.text, "base": float(result.arrays["base"][i]),
                      "delta": {f"L{l}.H{h}": float(delta[j, i]) for j, (l, h) in enumerate(heads)}}
                     for i, e in enumerate(task.examples)],
    }


def heatmap_figure(matrix: list[list[float | None]], metric: str, title: str) -> go.Figure:
    """Layer x head heatmap of the change of `metric` when each head is ablated (layer 0 at the bottom)."""
    finite = [abs(v) for row in matrix for v in row if v is not None]
    bound = max(finite, default=1.0) or 1.0
    fig = go.Figure(go.Heatmap(
        z=matrix, x=[f"H{h}" for h in range(len(matrix[0]))], y=[f"L{l}" for l in range(len(matrix))],
        colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound, colorbar={"title": f"change of {metric}"},
        hovertemplate="%{y}.%{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=260 + 22 * len(matrix))
    return fig


def examples_figure(data: dict, k: int = TOP_K) -> go.Figure:
    """Per-example change of the metric for the top-k heads: a [head x example] heatmap."""
    top = [f"L{r['layer']}.H{r['head']}" for r in data["ranking"][:k]]
    z = [[ex["delta"][name] for ex in data["examples"]] for name in top]
    fig = go.Figure(go.Heatmap(z=z, x=[str(ex["example"]) for ex in data["examples"]], y=top, colorscale="RdBu",
                               zmid=0, hovertemplate="%{y}, example %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=f"change of {data['metric']} per example, top {len(top)} heads", xaxis_title="example",
                      yaxis={"autorange": "reversed"}, height=200 + 24 * len(top))
    return fig


def render_html(data: dict) -> str:
    """The self-contained page (plotly JS inlined once)."""
    title = f"Head ablation: {data['model_id']} on {data['task']} ({data['mode']})"
    heat = heatmap_figure(data["matrix"], data["metric"], title).to_html(full_html=False, include_plotlyjs=True,
                                                                          div_id="heatmap")
    per_example = examples_figure(data).to_html(full_html=False, include_plotlyjs=False, div_id="examples")
    columns = ["layer", "head", "importance", f"delta_{data['metric']}", f"ablated_{data['metric']}"]
    top = pd.DataFrame(data["ranking"][:TOP_K])[columns]
    table = top.to_html(index=False, float_format=lambda v: f"{v:.4f}", classes="top", border=0)
    texts = "".join(f"<li><code>{html.escape(ex['text'])}</code> (plain {data['metric']} {ex['base']:.3f})</li>"
                    for ex in data["examples"])
    baseline = ", ".join(f"{k} {v:.4f}" for k, v in data["baseline"].items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table.top td,th{{padding:2px 10px;text-align:right}}
code{{font-size:90%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Command: <code>{html.escape(data['command'])}</code><br>Model: <code>{html.escape(data['model_id'])}</code>;
task <b>{html.escape(data['task'])}</b>, {data['n_examples']} examples; plain run: {baseline}.<br>
Importance = the change of {data['metric']} in the direction that hurts the task when the head alone is
{data['mode']}-ablated.</p>
{heat}
<h2>Top {TOP_K} heads</h2>
{table}
<h2>Per example</h2>
{per_example}
<ol start="0">{texts}</ol>
</body></html>
"""


def report_files(path: Path) -> list[Path]:
    """The files `write_report` writes for the report PATH: PATH.json, PATH.parquet, PATH_examples.parquet, PATH."""
    stem = Path(path).with_suffix("")
    return [stem.with_suffix(".json"), stem.with_suffix(".parquet"), Path(f"{stem}_examples.parquet"), Path(path)]


def write_report(path: Path, data: dict, result: Result) -> list[Path]:
    """Write PATH (HTML), PATH.json, PATH.parquet (per-head table) and PATH_examples.parquet; each file is
    written beside its place and renamed into it, so none is ever half-written. Returns the paths."""
    examples = pd.DataFrame([{"example": ex["example"], "layer": int(name[1:].split(".")[0]),
                              "head": int(name.split(".H")[1]), "base": ex["base"], "delta": value}
                             for ex in data["examples"] for name, value in ex["delta"].items()])
    files = report_files(path)
    replace_file(files[0], lambda p: p.write_text(json.dumps(data, indent=1)))
    replace_file(files[1], lambda p: result.table.to_parquet(p, index=False))
    replace_file(files[2], lambda p: examples.to_parquet(p, index=False))
    replace_file(files[3], lambda p: p.write_text(render_html(data)))
    return files

