"""The app's layout: a control bar (model, task, text, run) and five tabs (overview, head, intervene,
circuits, runs). Components only; what they show is filled in by `workbench.dashboards.callbacks`.

Every graph whose points are heads has an id {"type": "head-source", "page": ..., "metric": ...}: one
pattern-matching callback opens the head view from a click on any of them.
"""

from __future__ import annotations

from dash import dcc, html

import workbench
from workbench.dashboards.figures import empty_figure
from workbench.dashboards.session import EDITS, OVERVIEW, TASKS, WINDOW
from workbench.samples import SAMPLE_TEXT

ROW = {"display": "flex", "gap": "12px", "alignItems": "center", "flexWrap": "wrap", "margin": "6px 0"}


def head_source(page: str, metric: str) -> dict:
    """The id of a graph whose points are heads (a click opens the head's view)."""
    return {"type": "head-source", "page": page, "metric": metric}


def controls(default_model: str) -> html.Div:
    models = list(dict.fromkeys([default_model, *workbench.known_names()]))
    return html.Div([
        html.Div([
            html.Label("Model"),
            dcc.Dropdown(id="model", options=models, value=default_model, clearable=False, style={"width": "220px"}),
            dcc.Input(id="model-path", placeholder="or a local folder / hub id", debounce=True,
                      style={"width": "260px"}),
            html.Label("Task"),
            dcc.Dropdown(id="task", options=[{"label": v, "value": k} for k, v in TASKS.items()],
                         placeholder="fill the text from a built-in task", style={"width": "300px"}),
            html.Button("Run trace", id="run", n_clicks=0),
        ], style=ROW),
        dcc.Textarea(id="text", value=SAMPLE_TEXT, style={"width": "100%", "height": "80px"}),
        dcc.Loading(html.Div(id="status", children="Pick a model and a text, then run a trace."), type="dot"),
    ])


def overview_page() -> html.Div:
    graphs = [dcc.Graph(id=head_source("overview", m), figure={}, config={"displayModeBar": False},
                        style={"width": "32%", "minWidth": "360px"}) for m in OVERVIEW]
    return html.Div([
        html.P("Layer x head maps; click a head to open its view. Sink and entropy are read from the trace; "
               "retrieval, induction and previous-token scores from the model's own needle and repeated-token "
               "probes (run once per model)."),
        dcc.Loading(html.Div(graphs, style={"display": "flex", "flexWrap": "wrap", "gap": "8px"})),
    ])


def head_page() -> html.Div:
    return html.Div([
        html.Div([
            html.Label("Head"), dcc.Dropdown(id="head", options=[], style={"width": "140px"}, clearable=False),
            html.Label(f"Window start (the map shows at most {WINDOW} positions)"),
            dcc.Input(id="window-start", type="number", min=0, placeholder="end of text", debounce=True,
                      style={"width": "160px"}),
            html.Button("Edit this head", id="edit-this-head", n_clicks=0),
        ], style=ROW),
        dcc.Loading([
            html.Div(id="head-info"),
            dcc.Graph(id="pattern", figure={}),
            html.H4("Attention received per token"),
            html.Div(id="received-text",
                     style={"lineHeight": "1.9", "fontFamily": "monospace", "whiteSpace": "pre-wrap"}),
            dcc.Graph(id="sequence", figure={}, config={"scrollZoom": True}),
        ]),
        dcc.Loading(dcc.Graph(id="query-window", figure=empty_figure(
            "click a position on the view above for its query's attention over the keys before it"))),
    ])


def intervene_page() -> html.Div:
    return html.Div([
        html.Div([
            html.Label("Heads"), dcc.Dropdown(id="edit-heads", options=[], multi=True, style={"width": "360px"}),
            html.Label("Value", title="scale: the factor; calibrate: ACT's beta in (0, 1]; ZeroTuning: the "
                       "first-token scale > 0; ablations take none"),
            dcc.Input(id="edit-value", type="number", value=0.5, step=0.05, style={"width": "140px"}),
            html.Button("Apply", id="apply", n_clicks=0),
        ], style=ROW),
        dcc.RadioItems(id="edit", options=[{"label": v, "value": k} for k, v in EDITS.items()],
                       value="ablate-zero", inline=True, style={"margin": "6px 0"}),
        dcc.Loading([html.Div(id="loss"), dcc.Graph(id="next-token", figure={})]),
    ])


def circuits_page() -> html.Div:
    return html.Div([
        html.Div([
            dcc.Dropdown(id="circuit-run", placeholder="a circuit run from the store", style={"width": "420px"}),
            dcc.Input(id="circuit-path", placeholder="or a circuit.json / its folder", style={"width": "360px"}),
            html.Button("Load", id="load-circuit", n_clicks=0),
            dcc.Checklist(id="circuit-only", options=[{"label": "circuit only", "value": "only"}], value=[]),
        ], style=ROW),
        html.Div(id="circuit-info"),
        dcc.Loading(dcc.Graph(id=head_source("circuits", "circuit"), figure={})),
    ])


def runs_page() -> html.Div:
    return html.Div([
        html.Div([html.Button("Refresh", id="runs-refresh", n_clicks=0),
                  html.Label("Metric"), dcc.Dropdown(id="runs-metric", style={"width": "260px"})], style=ROW),
        html.P("Tick up to three runs to compare them, metric by metric."),
        html.Div(id="runs-info"),
        dcc.Checklist(id="runs-select", options=[], value=[],
                      labelStyle={"display": "block", "fontFamily": "monospace", "fontSize": "12px",
                                  "whiteSpace": "pre"}),
        dcc.Graph(id="runs-figure", figure={}),
    ])


def layout(default_model: str) -> html.Div:
    tabs = [("overview", "Overview", overview_page()), ("head", "Head view", head_page()),
            ("intervene", "Intervene", intervene_page()), ("circuits", "Circuits", circuits_page()),
            ("runs", "Runs", runs_page())]
    return html.Div([
        html.H2("Attention Workbench"),
        controls(default_model),
        dcc.Store(id="trace-id"), dcc.Store(id="head-model"),
        html.Div(id="error", style={"color": "#b00020", "whiteSpace": "pre-wrap"}),
        dcc.Tabs(id="tabs", value="overview",
                 children=[dcc.Tab(label=label, value=value, children=page, id=f"tab-{value}")
                           for value, label, page in tabs]),
    ], style={"fontFamily": "sans-serif", "margin": "12px 20px"})
