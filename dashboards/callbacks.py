"""The app's callbacks: each reads the controls, calls the Session (the workbench's public API) and draws
with `workbench.dashboards.figures`. User errors (WorkbenchError, ValueError) are shown beside the control that caused
them, never raised into the browser.

One trace is the state: the store run id of the last trace (`trace-id`) is what the head view, Intervene and
the Runs tab read; the text box is read only by Run trace. Traces and edits run as jobs
(`workbench.dashboards.jobs`): a start callback queues one, a poll callback shows its progress and draws its
result, a Cancel button stops it.
"""

from __future__ import annotations

import json

from dash import ALL, Dash, Input, Output, State, ctx, html, no_update
from dash.exceptions import PreventUpdate

from workbench.dashboards import figures
from workbench.dashboards.circuits import circuit_runs, read_circuit
from workbench.dashboards.jobs import Job, Jobs
from workbench.dashboards.layout import MAX_COMPARED, NO_CIRCUIT, NO_TRACE, head_source
from workbench.dashboards.session import EDITS, OVERVIEW, Session, TraceRun
from workbench.errors import WorkbenchError
from workbench.probes.circuits.graph import head_name, parse_head

ERROR_STYLE = {"color": "#b00020"}
SHOWN = {"display": "flex", "gap": "12px", "alignItems": "center", "margin": "6px 0"}
HIDDEN = {"display": "none"}
NO_VALUE = ("ablate-zero", "ablate-mean")  # edits that take no Value


def _error(err: Exception) -> html.Span:
    return html.Span(f"error: {err}", className="error", style=ERROR_STYLE)


def _model(model: str | None, path: str | None) -> str:
    """The model to use: a typed folder / hub id wins over the dropdown."""
    return (path or "").strip() or model


def _describe(run: TraceRun) -> str:
    """How every page names the trace it shows."""
    return f"trace {run.run_id} ({run.model}, {run.n_tokens} tokens)"


def register(app: Dash, session: Session) -> None:
    """Attach every callback of the app to `app`."""
    jobs = Jobs()
    _register_controls(app, session, jobs)
    _register_head(app, session)
    _register_intervene(app, session, jobs)
    _register_circuits(app, session)
    _register_runs(app, session)


def _job_progress(job: Job) -> tuple:
    """The job box's style, progress value, line and Cancel state of a running or queued job."""
    state = job.state()
    waiting = job.future is not None and not job.future.running()
    line = f"{state['label']}: {'queued behind the running job' if waiting else state['stage']} " \
           f"({state['seconds']:.0f} s)"
    return SHOWN, f"{state['fraction']:.3f}", line, False


def _register_jobs(app: Dash, kind: str, jobs: Jobs) -> None:
    """The Cancel button of the `kind` job box."""
    @app.callback(Output(f"{kind}-job-info", "children", allow_duplicate=True), Input(f"{kind}-cancel", "n_clicks"),
                  State(f"{kind}-job-id", "data"), prevent_initial_call=True)
    def cancel(_, job_id):
        try:
            jobs.get(job_id).cancel()
        except WorkbenchError as err:
            return str(err)
        return "cancelling at the next layer..."


def _register_controls(app: Dash, session: Session, jobs: Jobs) -> None:
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

    @app.callback(Output("token-count", "children"), Output("stale", "children"),
                  Input("text", "value"), Input("model", "value"), Input("model-path", "value"),
                  Input("trace-id", "data"))
    def check_entry(text, model, path, run_id):
        """The text's token count against the model's context, and whether the shown trace is of this text."""
        name = _model(model, path)
        try:
            n, context = session.token_count(name, text or "")
        except (ValueError, OSError) as err:
            return _error(err), ""
        count = html.Span(f"{n} tokens of {name}'s {context}", id="token-count-value",
                          style=ERROR_STYLE if n > context else {})
        try:
            run = session.trace_run(run_id)
        except WorkbenchError:
            return count, ""
        if (run.text, run.model) == (text, name):
            return count, ""
        return count, f"the pages show {_describe(run)}; the text or model changed: press Run trace to trace it"

    @app.callback(Output("trace-job-id", "data"), Output("trace-poll", "disabled"),
                  Output("status", "children"), Output("trace-id", "data", allow_duplicate=True),
                  Input("run", "n_clicks"), State("model", "value"), State("model-path", "value"),
                  State("text", "value"), State("trace-job-id", "data"), prevent_initial_call=True)
    def start_trace(_, model, path, text, previous):
        name, text = _model(model, path), text or ""
        try:
            session.check_text(name, text)
        except (ValueError, OSError) as err:  # refused before any work: the old trace's pages are cleared
            return no_update, no_update, _error(err), None
        job = jobs.submit(("trace", name, text), f"trace of {name}", lambda j: session.run_trace(name, text, j))
        if previous and previous != job.id:
            try:
                jobs.get(previous).cancel()  # a new text replaces a trace still under way
            except WorkbenchError:
                pass
        return job.id, False, no_update, no_update

    _register_jobs(app, "trace", jobs)

    @app.callback(Output("trace-job", "style"), Output("trace-progress", "value"), Output("trace-job-info", "children"),
                  Output("trace-cancel", "disabled"), Output("trace-poll", "disabled", allow_duplicate=True),
                  Output("trace-id", "data"), Output("status", "children", allow_duplicate=True),
                  Input("trace-poll", "n_intervals"), State("trace-job-id", "data"), prevent_initial_call=True)
    def poll_trace(_, job_id):
        try:
            job = jobs.get(job_id)
        except WorkbenchError as err:
            return HIDDEN, "0", "", True, True, no_update, _error(err)
        if not job.finished:
            return (*_job_progress(job), False, no_update, no_update)
        try:
            run = job.outcome()
        except (ValueError, OSError) as err:
            return HIDDEN, "0", "", True, True, no_update, _error(err)
        return HIDDEN, "1", "", True, True, run.run_id, html.Span(
            f"{run.model}: traced {run.n_tokens} tokens through {run.trace.n_layers} layers x "
            f"{run.trace.n_heads} heads in {run.seconds:.1f} s; store run {run.run_id}", id="status-done")

    @app.callback(Output(head_source("overview", ALL), "figure"), Input("trace-id", "data"),
                  prevent_initial_call=True)
    def overview(run_id):
        try:
            run = session.trace_run(run_id)
        except WorkbenchError:
            return [figures.empty_figure(NO_TRACE)] * len(ctx.outputs_list)
        out = []
        for spec in ctx.outputs_list:
            metric = spec["id"]["metric"]
            title = f"{OVERVIEW[metric][0]} ({_describe(run)})"
            try:
                out.append(figures.head_heatmap(session.overview(run_id, metric), title, run.model))
            except (ValueError, OSError) as err:
                out.append(figures.empty_figure(f"{title}: {err}"))
        return out

    @app.callback(Output("head", "options"), Output("edit-heads", "options"), Input("trace-id", "data"),
                  prevent_initial_call=True)
    def head_options(run_id):
        try:
            run = session.trace_run(run_id)
        except WorkbenchError:
            return [], []
        options = [head_name(layer, head) for layer in range(run.trace.n_layers)
                   for head in range(run.trace.n_heads)]
        return options, options


def _register_head(app: Dash, session: Session) -> None:
    @app.callback(Output("head", "value"), Output("tabs", "value"), Output("head-info", "children",
                                                                          allow_duplicate=True),
                  Input(head_source(ALL, ALL), "clickData"), State("trace-id", "data"), prevent_initial_call=True)
    def open_head(_, run_id):
        click = ctx.triggered[0]["value"] if ctx.triggered else None
        if not click or not click.get("points"):
            raise PreventUpdate
        point = click["points"][0]
        try:
            run = session.trace_run(run_id)
        except WorkbenchError as err:
            return no_update, "head", _error(err)
        if "customdata" in point:  # a circuit node: [layer, head, model]
            layer, head, model = point["customdata"]
        else:  # a heatmap cell of the traced model (Plotly does not pass a heatmap's customdata on)
            layer, head, model = point["y"], point["x"], run.model
        if head is None:  # an input, MLP or logits node of a circuit
            raise PreventUpdate
        if model != run.model:
            return no_update, "head", _error(WorkbenchError(
                f"this circuit is of {model}, the trace of {run.model}: trace a text with {model} to see its heads"))
        return head_name(layer, head), "head", no_update

    @app.callback(Output("head-info", "children"), Output("pattern", "figure"), Output("received-text", "children"),
                  Output("received-summary", "children"), Output("sequence", "figure"),
                  Output("query-window", "figure"),
                  Input("head", "value"), Input("window-start", "value"), Input("trace-id", "data"),
                  prevent_initial_call=True)
    def head_view(node, start, run_id):
        try:
            run = session.trace_run(run_id)  # no trace (or a refused one): the old head's view is cleared
            if not node:
                raise WorkbenchError(f"pick a head of {_describe(run)}: click one on the Overview or choose it above")
            layer, head = parse_head(node)
            view = session.head_view(run_id, layer, head, start)
        except (ValueError, OSError) as err:
            blank = figures.empty_figure(str(err))
            return _error(err), blank, [], "Text coloured by the attention each token receives", blank, blank
        stop = view.start + view.pattern.shape[0]
        info = html.Span(f"{node} on {_describe(run)}: the map shows positions {view.start}..{stop - 1}; the "
                         f"per-position view below covers the whole text (click a position for its query's "
                         f"attention)", id="head-info-value")
        series = {name: {node: getattr(view, name)} for name in ("received", "sink_mass", "entropy")}
        labels = figures.token_labels(view.labels)
        keep = no_update if ctx.triggered_id == "window-start" else figures.empty_figure(
            "click a position on the view above for its query's attention over the keys before it")
        return (info,
                figures.pattern_figure(view.pattern, labels[view.start:stop], view.start, f"{node} attention map"),
                _received_spans(view.labels, view.received),
                f"Text coloured by the attention each token receives from {node} ({len(view.labels)} tokens)",
                figures.sequence_figure(series, labels, f"{node} along the text"), keep)

    @app.callback(Output("query-window", "figure", allow_duplicate=True), Input("sequence", "clickData"),
                  State("head", "value"), State("trace-id", "data"), prevent_initial_call=True)
    def query_view(click, node, run_id):
        if not click or not node:
            raise PreventUpdate
        query = int(click["points"][0]["x"])
        try:
            layer, head = parse_head(node)
            window = session.query_view(run_id, layer, head, query)
        except (ValueError, OSError) as err:
            return figures.empty_figure(f"error: {err}")
        return figures.query_figure(window.p.to_numpy(), figures.token_labels(list(window.token)),
                                    int(window.position.iloc[0]), query,
                                    f"{node}: attention of query {query} over its last {len(window)} keys")


def _register_intervene(app: Dash, session: Session, jobs: Jobs) -> None:
    @app.callback(Output("edit-heads", "value"), Output("tabs", "value", allow_duplicate=True),
                  Input("edit-this-head", "n_clicks"), State("head", "value"), State("edit-heads", "value"),
                  prevent_initial_call=True)
    def edit_this_head(_, node, chosen):
        if not node:
            raise PreventUpdate
        return list(dict.fromkeys([*(chosen or []), node])), "intervene"

    @app.callback(Output("edit-value", "disabled"), Input("edit", "value"))
    def value_field(edit):
        return edit in NO_VALUE

    @app.callback(Output("edit-job-id", "data"), Output("edit-poll", "disabled"), Output("loss", "children"),
                  Input("apply", "n_clicks"), State("edit-heads", "value"), State("edit", "value"),
                  State("edit-value", "value"), State("trace-id", "data"), prevent_initial_call=True)
    def start_edit(_, heads, edit, value, run_id):
        try:
            run = session.trace_run(run_id)
            if not heads:
                raise WorkbenchError("pick at least one head to edit")
            chosen = [parse_head(h) for h in heads]
        except (ValueError, OSError) as err:
            return no_update, True, _error(err)
        amount = 1.0 if edit in NO_VALUE or value is None else float(value)
        job = jobs.submit(("edit", run.run_id, tuple(chosen), edit, amount), f"{EDITS[edit]} on {', '.join(heads)}",
                          lambda j: (run, heads, edit, amount, session.intervene(run.run_id, chosen, edit, amount, j)))
        return job.id, False, f"{job.label} on {_describe(run)}: queued"

    _register_jobs(app, "edit", jobs)

    @app.callback(Output("edit-job", "style"), Output("edit-progress", "value"), Output("edit-job-info", "children"),
                  Output("edit-cancel", "disabled"), Output("edit-poll", "disabled", allow_duplicate=True),
                  Output("loss", "children", allow_duplicate=True), Output("next-token", "figure"),
                  Input("edit-poll", "n_intervals"), State("edit-job-id", "data"), prevent_initial_call=True)
    def poll_edit(_, job_id):
        try:
            job = jobs.get(job_id)
        except WorkbenchError as err:
            return HIDDEN, "0", "", True, True, _error(err), no_update
        if not job.finished:
            return (*_job_progress(job), False, no_update, no_update)
        try:
            run, heads, edit, value, outcome = job.outcome()
        except (ValueError, OSError) as err:
            return HIDDEN, "0", "", True, True, _error(err), no_update
        label = f"{EDITS[edit]} on {', '.join(heads)}" + ("" if edit in NO_VALUE else f" ({value})")
        loss = html.Span(f"{_describe(run)}: loss on the text {outcome.loss_before:.4f} before, "
                         f"{outcome.loss_after:.4f} after ({outcome.loss_after - outcome.loss_before:+.4f} "
                         "nats/token)", id="loss-values")
        return HIDDEN, "1", "", True, True, loss, figures.next_token_figure(
            outcome.tokens, outcome.before, outcome.after, f"next-token distribution: {label}")


def _register_circuits(app: Dash, session: Session) -> None:
    @app.callback(Output("circuit-run", "options"), Output("circuit-info", "children", allow_duplicate=True),
                  Input("tabs", "value"), prevent_initial_call="initial_duplicate")
    def list_circuits(tab):
        if tab != "circuits":
            raise PreventUpdate
        try:
            runs = circuit_runs(session.store)
        except WorkbenchError as err:
            return no_update, _error(err)
        options = [{"label": f"{r.created:%Y-%m-%d %H:%M} {r.model_id} ({r.run_id})", "value": r.path}
                   for r in runs.itertuples()]
        return options, (f"{len(options)} circuit runs in {session.store_path}" if options else
                         f"no circuit runs in {session.store_path} yet. {NO_CIRCUIT}.")

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
            return figures.empty_figure(NO_CIRCUIT), _error(err)
        heads = ", ".join(head_name(*h) for h in circuit.heads())
        return (figures.circuit_figure(circuit, only_circuit="only" in (only or [])),
                f"{path}: heads in the circuit: {heads or 'none'}. Click a head to open its view.")


def _register_runs(app: Dash, session: Session) -> None:
    @app.callback(Output("runs-select", "options"), Output("runs-info", "children"), Output("runs-select", "value"),
                  Input("runs-refresh", "n_clicks"), Input("tabs", "value"), Input("runs-select", "value"),
                  State("trace-id", "data"))
    def list_runs(_, tab, chosen, run_id):
        if tab != "runs" and ctx.triggered_id not in ("runs-refresh", "runs-select"):
            raise PreventUpdate
        chosen = chosen or []
        options, info = run_options(session, chosen[:MAX_COMPARED], run_id)
        if len(chosen) > MAX_COMPARED:  # a tick past the limit is taken back
            return options, _error(WorkbenchError(f"at most {MAX_COMPARED} runs are compared at once: untick one "
                                                  "to pick another")), chosen[:MAX_COMPARED]
        return options, info, no_update

    @app.callback(Output("runs-metric", "options"), Output("runs-metric", "value"),
                  Input("runs-select", "value"), State("runs-metric", "value"), prevent_initial_call=True)
    def run_metrics(run_ids, metric):
        metrics = sorted({m for r in (run_ids or [])[:MAX_COMPARED] for m in session.run_table(r).metric.unique()})
        return metrics, metric if metric in metrics else (metrics[0] if metrics else None)

    @app.callback(Output("runs-figure", "figure"), Input("runs-metric", "value"),
                  Input("runs-select", "value"), prevent_initial_call=True)
    def compare_runs(metric, run_ids):
        if not metric or not run_ids:
            return figures.empty_figure("tick runs above to compare them")
        return figures.runs_figure({r: session.run_table(r) for r in run_ids[:MAX_COMPARED]}, metric)


def run_label(run, current: str | None) -> str:
    """A Runs row: date, kind, model, token count and the text's first words (or the command), run id."""
    params = json.loads(run.params) if isinstance(run.params, str) and run.params else {}
    tokens = f"{params['n_tokens']} tokens" if "n_tokens" in params else ""
    what = f'"{params["text"]}"' if params.get("text") else run.command
    mark = "  <- the pages' trace" if run.run_id == current else ""
    return f"{run.created:%Y-%m-%d %H:%M:%S}  {run.kind:<9} {run.model_id:<16} {tokens:>11}  {run.run_id}  {what}{mark}"


def run_options(session: Session, chosen: list[str] = (), current: str | None = None) -> tuple:
    """The Runs tab's checklist options and its info line (which says when MAX_COMPARED runs are ticked). While
    another process holds the store longer than the app waits, the options stay as they are and the line says
    so (never a server error)."""
    try:
        runs = session.runs()
    except WorkbenchError as err:
        return no_update, _error(err)
    if runs.empty:
        return [], (f"no runs in {session.store_path} yet: press Run trace above, or run `workbench trace` and the "
                    "other commands, which store their runs there")
    full = len(chosen) >= MAX_COMPARED
    options = [{"label": run_label(r, current), "value": r.run_id} for r in runs.itertuples()]
    limit = f"; {MAX_COMPARED} ticked, the most compared at once: untick one to pick another" if full else ""
    return options, f"{len(runs)} runs in {session.store_path}{limit}"


def _received_spans(labels: list[str], received) -> list[html.Span]:
    """The text with each token's background as dark as the attention it receives (the first token, often a
    sink, is left out of the scale so that it does not wash out the rest)."""
    top = max(float(max(received[1:], default=0.0)), 1e-9)
    return [html.Span(label, title=f"{i}: {figures.token_label(label)} received {value:.3f}",
                      style={"backgroundColor": f"rgba(220, 50, 32, {min(1.0, float(value) / top):.2f})",
                             "whiteSpace": "pre-wrap"})
            for i, (label, value) in enumerate(zip(labels, received, strict=True))]
