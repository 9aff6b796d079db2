"""The `workbench` command: trace a model and report its heads, show a model's facts, manage named models."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from interventions.ablate_cli import ablate_command
from kernels import check_stats
from probes.circuits.cli import circuit_command
from probes.cli import app as scan_app
from probes.report_cli import app as report_app
from workbench.cli_common import (
    DeviceOption,
    FileOption,
    ModelOption,
    NoStoreOption,
    OutOption,
    StoreOption,
    TextOption,
    console,
    default_out,
    fail,
    load_subject,
    read_text,
    store_run,
)
from workbench.cli_dash import dash_command
from workbench.errors import WorkbenchError
from workbench.registry.cli import app as models_app

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Look inside transformer language models through their attention heads.")
app.add_typer(models_app, name="models", help="List and install the named real models (SmolLM2, Gemma-3, MiniLM).")
app.add_typer(report_app, name="report", help="Write a model's findings page (docs/models/NAME.md) from the probes.")
app.add_typer(scan_app, name="scan", help="Run a probe (sinks, entropy, erank, heads, retrieval) and report its heads.")
app.command("ablate")(ablate_command)
app.command("circuit")(circuit_command)
app.command("dash")(dash_command)


@app.command("trace")
def trace_command(
    model: ModelOption = None,
    text: TextOption = None,
    file: FileOption = None,
    stats: Annotated[str, typer.Option(help="Comma-separated statistics.")] = ",".join(
        ("entropy", "sink_mass", "max_prob", "argmax_key", "lse", "received", "window_distance", "self_mass")),
    sink_keys: Annotated[str, typer.Option(help="Comma-separated sink key positions.")] = "0",
    out: OutOption = None,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
    backend: Annotated[str, typer.Option(help="auto, reference or triton.")] = "auto",
) -> None:
    """Trace a text through every attention head; print the per-layer sink/entropy report; save the Trace."""
    import workbench

    try:
        text = read_text(text, file)
        stat_names = check_stats(tuple(s.strip() for s in stats.split(",") if s.strip()))
        sinks = tuple(int(s) for s in sink_keys.split(",") if s.strip())
        subject = load_subject(model, device)
        with console.status(f"Tracing {len(text)} characters..."):
            trace = workbench.trace(subject, text, stats=stat_names, sink_keys=sinks, backend=backend)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    _print_report(trace)
    out = out or default_out("traces")
    trace.save(out)
    console.print(f"Trace saved to [bold]{out}[/]")
    if not no_store:
        store_run(store, "trace", trace.model_id, trace.head_table(), trace.token_table(),
                  params={"stats": list(stat_names), "sink_keys": list(sinks), "n_tokens": len(trace.tokens[0])},
                  out=out)


def _print_report(trace) -> None:
    """Per-layer sink/entropy table, then the strongest sink heads and the most focused heads."""
    import workbench

    n_tokens = int(trace.attention_mask[0].sum())
    summary = workbench.layer_summary(trace)
    table = Table(title=f"{trace.model_id}: {n_tokens} tokens, {trace.n_layers} layers x {trace.n_heads} heads")
    columns = [("layer", "layer", "{:.0f}"), ("entropy", "entropy (nats)", "{:.3f}"),
               ("entropy_norm", "entropy / log keys", "{:.3f}"), ("sink_mass", "sink mass", "{:.3f}"),
               ("sink_heads", "heads sink>0.3", "{:.0%}"), ("max_prob", "max prob", "{:.3f}"),
               ("window_distance", "mean distance", "{:.1f}")]
    columns = [c for c in columns if c[0] in summary.columns]
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for _, row in summary.iterrows():
        table.add_row(*(fmt.format(row[key]) for key, _, fmt in columns))
    console.print(table)
    heads = trace.head_table()
    for metric, label, largest in (("sink_mass", "strongest first-token sinks", True),
                                   ("entropy", "most focused heads (lowest entropy)", False)):
        rows = heads[heads.metric == metric]
        if rows.empty:
            continue
        top = rows.nlargest(5, "value") if largest else rows.nsmallest(5, "value")
        console.print(f"{label}: " + ", ".join(f"L{r.layer}.H{r.head} {r.value:.3f}" for r in top.itertuples()))


@app.command("info")
def info_command(model: ModelOption = None, device: DeviceOption = None) -> None:
    """Print a model's architecture facts: layers, heads, key-value heads, head_dim, context, windows."""
    import workbench

    try:
        subject = workbench.load(model, device=device)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    table = Table(title=subject.name, show_header=False)
    for key, value in subject.adapter.facts().items():
        if key == "layer_types":
            value = ", ".join(f"{t.split('_')[0]} x{value.count(t)}" for t in dict.fromkeys(value))
        table.add_row(key, str(value))
    table.add_row("parameters", f"{sum(p.numel() for p in subject.model.parameters()):,}")
    table.add_row("device / dtype", f"{subject.device} / {next(subject.model.parameters()).dtype}")
    console.print(table)


if __name__ == "__main__":
    app()
