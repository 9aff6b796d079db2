"""The app's callbacks: each reads the controls, calls the Session (the workbench's public API) and draws
with `workbench.dashboards.figures`. User errors (WorkbenchError, ValueError) are shown beside the control that caused
them, never raised into the browser.
"""

from __future__ import annotations

import time

from dash import ALL, Dash, Input, Output, State, ctx, html, no_update
from dash.exceptions import PreventUpdate

from workbench.dashboards import figures
from workbench.errors import WorkbenchError
from workbench.dashboards.circuits import circuit_runs, read_circuit
from workbench.dashboards.layout import head_source
from workbench.dashboards.session import EDITS, OVERVIEW, Session
from workbench.probes.circuits.graph import head_name, parse_head

ERROR_STYLE = {"color": "#b00020"}


def _error(err: Exception) -> html.Span:
    return html.Span(f"error: {err}", className="error", style=ERROR_STYLE)


def _model(model: str | None, path: str | None) -> str:
    """The model to use: a typed folder / hub id wins over the dropdown."""
    return (path or "").strip() or model


def register(app: Dash, session: Session) -> None:
    """Attach every callback of the app to `app`."""

    @app.callback(Output("text", "value"), Output("status", "children", allow_duplicate=True),
                  Input("task", "value"), State("model", "value"), State("model-path", "value"),
                  prevent_initial_call=True)
    def fill_task(task, model, path):
        if not task:
            raise PreventUpdate
        try:
            return session.task_text(_model(model, path), task), f"text of task {task!r} filled in"
        except (ValueError, OSError) as err:
            return no_update, _error(err)

    @app.callback(Output("trace-id", "data"), Output("status", "children"), Output("head-model", "data"),
                  Input("run", "n_clicks"), State("model", "value"), State("model-path", "value"),
                  State("text", "value"), prevent_initial_call=True,
                  running=[(Output("run", "disabled"), True, False),
                           (Output("run", "children"), "Tracing...", "Run trace")])
    def run_trace(_, model, path, text):
        name, start = _model(model, path), time.perf_counter()
        try:
            run = session.run_trace(name, text or "")
        except (ValueError, OSError) as err:
            return no_update, _error(err), no_update
        trace = run.trace
        return run.run_id, html.Span(
            f"{name}: traced {len(trace.real_tokens(0))} tokens through {trace.n_layers} layers x "
            f"{trace.n_heads} heads in {time.perf_counter() - start:.1f} s; store run {run.run_id}",
            id="status-done"), name

    @app.callback(Output(head_source("overview", ALL), "figure"), Input("trace-id", "data"),
                  prevent_initial_call=True)
    def overview(run_id):
        run = session.trace_run(run_id)
        out = []
        for spec in ctx.outputs_list:
            metric = spec["id"]["metric"]
            title = f"{OVERVIEW[metric][0]} ({run.model})"
            try:
                out.append(figures.head_heatmap(session.overview(run_id, metric), title, run.model))
            except (ValueError, OSError) as err:
                out.append(figures.empty_figure(f"{title}: {err}"))
        return out

    @app.callback(Output("head", "options"), Output("edit-heads", "options"), Input("head-model", "data"),
                  prevent_initial_call=True)
    def head_options(model):
        options = _head_options(session, model)
        return options, options

    @app.callback(Output("head", "value"), Output("head", "options", allow_duplicate=True),
                  Output("head-model", "data", allow_duplicate=True), Output("tabs", "value"),
                  Input(head_source(ALL, ALL), "clickData"), State("trace-id", "data"), prevent_initial_call=True)
    def open_head(_, run_id):
        click = ctx.triggered[0]["value"] if ctx.triggered else None
        if not click or not click.get("points"):
            raise PreventUpdate
        point = click["points"][0]
        if "customdata" in point:  # a circuit node: [layer, head, model]
            layer, head, model = point["customdata"]
        else:  # a heatmap cell of the traced model (Plotly does not pass a heatmap's customdata on)
            layer, head, model = point["y"], point["x"], session.trace_run(run_id).model
        if head is None:  # an input, MLP or logits node of a circuit
            raise PreventUpdate
        return head_name(layer, head), _head_options(session, model), model, "head"

    @app.callback(Output("head-info", "children"), Output("pattern", "figure"), Output("received-text", "children"),
                  Output("sequence", "figure"),
                  Input("head", "value"), Input("window-start", "value"), State("head-model", "data"),
                  State("text", "value"), prevent_initial_call=True)
    def head_view(node, start, model, text):
        if not node or not model:
            raise PreventUpdate
        layer, head = parse_head(node)
        try:
            view = session.head_view(model, text or "", layer, head, start)
        except (ValueError, OSError) as err:
            return (_error(err), *[no_update] * 3)
        stop = view.start + view.pattern.shape[0]
        info = (f"{model} {node}: {len(view.labels)} tokens; the map shows positions {view.start}..{stop - 1}; "
                f"the per-position view below covers the whole text (click a position for its query's attention)")
        series = {name: {node: getattr(view, name)} for name in ("received", "sink_mass", "entropy")}
        return (info,
                figures.pattern_figure(view.pattern, view.labels[view.start:stop], view.start,
                                       f"{node} attention map"),
                _received_spans(view.labels, view.received),
                figures.sequence_figure(series, view.labels, f"{node} along the text"))

    @app.callback(Output("query-window", "figure"), Input("sequence", "clickData"), State("head", "value"),
                  State("head-model", "data"), State("text", "value"), prevent_initial_call=True)
    def query_view(click, node, model, text):
        if not click or not node or not model:
            raise PreventUpdate
        layer, head = parse_head(node)
        query = int(click["points"][0]["x"])
        try:
            window = session.query_view(model, text or "", layer, head, query)
        except (ValueError, OSError) as err:
            return figures.empty_figure(f"error: {err}")
        return figures.query_figure(window.p.to_numpy(), list(window.token), int(window.position.iloc[0]), query,
                                    f"{node}: attention of query {query} over its last {len(window)} keys")

    @app.callback(Output("edit-heads", "value"), Output("tabs", "value", allow_duplicate=True),
                  Input("edit-this-head", "n_clicks"), State("head", "value"), State("edit-heads", "value"),
                  prevent_initial_call=True)
    def edit_this_head(_, node, chosen):
        if not node:
            raise PreventUpdate
        return list(dict.fromkeys([*(chosen or []), node])), "intervene"

    @app.callback(Output("loss", "children"), Output("next-token", "figure"), Input("apply", "n_clicks"),
                  State("edit-heads", "value"), State("edit", "value"), State("edit-value", "value"),
                  State("head-model", "data"), State("text", "value"), prevent_initial_call=True)
    def intervene(_, heads, edit, value, model, text):
        if not model:
            return _error(ValueError("run a trace first")), no_update
        try:
            outcome = session.intervene(model, text or "", [parse_head(h) for h in heads or []], edit,
                                        float(value if value is not None else 1.0))
        except (ValueError, OSError) as err:
            return _error(err), no_update
        label = f"{EDITS[edit]} on {', '.join(heads)}" + ("" if edit.startswith("ablate") else f" ({value})")
        loss = html.Span(f"loss on the text: {outcome.loss_before:.4f} before, {outcome.loss_after:.4f} after "
                         f"({outcome.loss_after - outcome.loss_before:+.4f} nats/token)", id="loss-values")
        return loss, figures.next_token_figure(outcome.tokens, outcome.before, outcome.after,
                                               f"next-token distribution: {label}")

    @app.callback(Output("circuit-run", "options"), Input("tabs", "value"))
    def list_circuits(tab):
        if tab != "circuits":
            raise PreventUpdate
        runs = circuit_runs(session.store)
        return [{"label": f"{r.created:%Y-%m-%d %H:%M} {r.model_id} ({r.run_id})", "value": r.path}
                for r in runs.itertuples()]

    @app.callback(Output(head_source("circuits", "circuit"), "figure"), Output("circuit-info", "children"),
                  Input("load-circuit", "n_clicks"), Input("circuit-run", "value"), Input("circuit-only", "value"),
                  State("circuit-path", "value"), prevent_initial_call=True)
    def show_circuit(_, run_path, only, typed_path):
        path = (typed_path or "").strip() or run_path
        if not path:
            raise PreventUpdate
        try:
            circuit = read_circuit(path)
        except (ValueError, OSError) as err:
            return no_update, _error(err)
        heads = ", ".join(head_name(*h) for h in circuit.heads())
        return (figures.circuit_figure(circuit, only_circuit="only" in (only or [])),
                f"{path}: heads in the circuit: {heads or 'none'}. Click a head to open its view.")

    @app.callback(Output("runs-select", "options"), Output("runs-info", "children"),
                  Input("runs-refresh", "n_clicks"), Input("tabs", "value"))
    def list_runs(_, tab):
        if tab != "runs" and ctx.triggered_id != "runs-refresh":
            raise PreventUpdate
        return run_options(session)

    @app.callback(Output("runs-metric", "options"), Output("runs-metric", "value"),
                  Input("runs-select", "value"), State("runs-metric", "value"), prevent_initial_call=True)
    def run_metrics(run_ids, metric):
        metrics = sorted({m for r in run_ids or [] for m in session.run_table(r).metric.unique()})
        return metrics, metric if metric in metrics else (metrics[0] if metrics else None)

    @app.callback(Output("runs-figure", "figure"), Input("runs-metric", "value"),
                  Input("runs-select", "value"), prevent_initial_call=True)
    def compare_runs(metric, run_ids):
        if not metric or not run_ids:
            return figures.empty_figure("select runs and a metric")
        return figures.runs_figure({r: session.run_table(r) for r in run_ids[:3]}, metric)


def run_options(session: Session) -> tuple:
    """The Runs tab's checklist options and its info line; while another process holds the store longer than the
    app waits, the options stay as they are and the line says so (never a server error)."""
    try:
        runs = session.runs()
    except WorkbenchError as err:
        return no_update, _error(err)
    return [{"label": f"{r.created:%Y-%m-%d %H:%M:%S}  {r.kind:<16} {r.model_id:<16} {r.run_id}  {r.command}",
             "value": r.run_id} for r in runs.itertuples()], f"{len(runs)} runs in {session.store_path}"


def _head_options(session: Session, model: str | None) -> list[str]:
    if not model:
        return []
    adapter = session.subject(model).adapter
    return [head_name(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]


def _received_spans(labels: list[str], received) -> list[html.Span]:
    """The text with each token's background as dark as the attention it receives (the first token, often a
    sink, is left out of the scale so that it does not wash out the rest)."""
    top = max(float(max(received[1:], default=0.0)), 1e-9)
    return [html.Span(label, title=f"{i}: {value:.3f}",
                      style={"backgroundColor": f"rgba(220, 50, 32, {min(1.0, float(value) / top):.2f})",
                             "whiteSpace": "pre-wrap"})
            for i, (label, value) in enumerate(zip(labels, received, strict=True))]
