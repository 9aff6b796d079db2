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

POLL_MS = 300  # how often the browser asks a running job for its progress
WINDOW_DEBOUNCE = 0.4  # seconds the head view waits after the last keystroke in the window field
MAX_COMPARED = 3  # runs the Runs tab compares side by side
NO_TRACE = "no trace yet: press Run trace above to fill these maps"
NO_CIRCUIT = ("no circuit loaded: `workbench circuit --model M --out DIR` writes one; pick its run above, "
              "or type the path of a circuit.json")
ROW = {"display": "flex", "gap": "12px", "alignItems": "center", "flexWrap": "wrap", "margin": "6px 0"}


def head_source(page: str, metric: str) -> dict:
    """The id of a graph whose points are heads (a click opens the head's view)."""
    return {"type": "head-source", "page": page, "metric": metric}


def job_controls(kind: str) -> html.Div:
    """A long job's progress bar, its line and its Cancel button (hidden until a job starts), with the store
    of the job's id and the interval that polls it (`workbench.dashboards.jobs`)."""
    return html.Div([
        html.Div([html.Progress(id=f"{kind}-progress", value="0", max="1", style={"width": "240px"}),
                  html.Span(id=f"{kind}-job-info"),
                  html.Button("Cancel", id=f"{kind}-cancel", n_clicks=0)],
                 id=f"{kind}-job", style={**ROW, "display": "none"}),
        dcc.Store(id=f"{kind}-job-id"),
        dcc.Interval(id=f"{kind}-poll", interval=POLL_MS, disabled=True),
    ])


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
        html.Div([html.Span(id="token-count"), html.Span(id="stale", style={"color": "#a05a00"})], style=ROW),
        job_controls("trace"),
        html.Div(id="status", children="Pick a model and a text, then press Run trace."),
    ])


def overview_page() -> html.Div:
    graphs = [dcc.Graph(id=head_source("overview", m), figure=empty_figure(NO_TRACE), config={"displayModeBar": False},
                        style={"width": "32%", "minWidth": "360px"}) for m in OVERVIEW]
    return html.Div([
        html.P("Layer x head maps; click a head to open its view. Sink and entropy are read from the trace; "
               "retrieval, induction and previous-token scores from the model's own needle and repeated-token "
               "probes (run once per model, with its first trace)."),
        html.Div(graphs, style={"display": "flex", "flexWrap": "wrap", "gap": "8px"}),
    ])


def head_page() -> html.Div:
    return html.Div([
        html.Div([
            html.Label("Head"), dcc.Dropdown(id="head", options=[], style={"width": "140px"}, clearable=False,
                                             placeholder="run a trace"),
            html.Label(f"Window start (the map shows at most {WINDOW} positions)"),
            dcc.Input(id="window-start", type="number", min=0, placeholder="end of text", debounce=WINDOW_DEBOUNCE,
                      style={"width": "160px"}),
            html.Button("Edit this head", id="edit-this-head", n_clicks=0),
        ], style=ROW),
        html.Div(id="head-info", children="Run a trace, then click a head on the Overview (or pick one above)."),
        dcc.Loading(dcc.Graph(id="pattern", figure=empty_figure("a head's attention map: pick a head"))),
        html.Details([html.Summary("Text coloured by the attention each token receives", id="received-summary"),
                      html.Div(id="received-text", style={"lineHeight": "1.9", "fontFamily": "monospace",
                                                          "whiteSpace": "pre-wrap", "maxHeight": "320px",
                                                          "overflowY": "auto"})], id="received-details"),
        dcc.Graph(id="sequence", figure=empty_figure("per-position statistics of the head along the whole text"),
                  config={"scrollZoom": True}),
        dcc.Loading(dcc.Graph(id="query-window", figure=empty_figure(
            "click a position on the view above for its query's attention over the keys before it"))),
    ])


def intervene_page() -> html.Div:
    return html.Div([
        html.Div([
            html.Label("Heads"), dcc.Dropdown(id="edit-heads", options=[], multi=True, style={"width": "360px"},
                                              placeholder="run a trace, then pick heads"),
            html.Label("Value", title="scale: the factor; calibrate: ACT's beta in (0, 1]; ZeroTuning: the "
                       "first-token scale > 0; ablations take none"),
            dcc.Input(id="edit-value", type="number", value=0.5, step=0.05, style={"width": "140px"}),
            html.Button("Apply", id="apply", n_clicks=0),
        ], style=ROW),
        dcc.RadioItems(id="edit", options=[{"label": v, "value": k} for k, v in EDITS.items()],
                       value="ablate-zero", inline=True, style={"margin": "6px 0"}),
        job_controls("edit"),
        html.Div(id="loss", children="Edits apply to the traced text: run a trace, pick heads, press Apply."),
        dcc.Graph(id="next-token", figure=empty_figure("next-token probabilities before and after: press Apply")),
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
        dcc.Loading(dcc.Graph(id=head_source("circuits", "circuit"), figure=empty_figure(NO_CIRCUIT))),
    ])


def runs_page() -> html.Div:
    return html.Div([
        html.Div([html.Button("Refresh", id="runs-refresh", n_clicks=0),
                  html.Label("Metric"), dcc.Dropdown(id="runs-metric", style={"width": "260px"})], style=ROW),
        html.P(f"Tick up to {MAX_COMPARED} runs to compare them, metric by metric."),
        html.Div(id="runs-info"),
        dcc.Checklist(id="runs-select", options=[], value=[],
                      labelStyle={"display": "block", "fontFamily": "monospace", "fontSize": "12px",
                                  "whiteSpace": "pre"}),
        dcc.Graph(id="runs-figure", figure=empty_figure("tick runs above to compare them")),
    ])


def layout(default_model: str) -> html.Div:
    tabs = [("overview", "Overview", overview_page()), ("head", "Head view", head_page()),
            ("intervene", "Intervene", intervene_page()), ("circuits", "Circuits", circuits_page()),
            ("runs", "Runs", runs_page())]
    return html.Div([
        html.H2("Attention Workbench"),
        controls(default_model),
        dcc.Store(id="trace-id"),
        dcc.Tabs(id="tabs", value="overview",
                 children=[dcc.Tab(label=label, value=value, children=page, id=f"tab-{value}")
                           for value, label, page in tabs]),
    ], style={"fontFamily": "sans-serif", "margin": "12px 20px"})
