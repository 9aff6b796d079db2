"""`workbench trace` and `workbench info`: trace a text through every head and report it; a model's facts."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.table import Table

from workbench.cli.common import (
    DeviceMapOption,
    DeviceOption,
    FileOption,
    MaxMemoryOption,
    ModelOption,
    NoStoreOption,
    OffloadOption,
    OutOption,
    OverwriteOption,
    StoreOption,
    TextOption,
    console,
    default_out,
    fail,
    load_subject,
    numbers,
    preflight,
    read_text,
    store_run,
)
from workbench.errors import WorkbenchError
from workbench.kernels import check_stats
from workbench.trace import TOKENS_FILE


def trace_command(
    model: ModelOption = None,
    text: TextOption = None,
    file: FileOption = None,
    stats: Annotated[str | None, typer.Option(
        help="Comma-separated statistics (default: entropy, sink_mass, max_prob, argmax_key, lse, received, "
             "window_distance, self_mass, and learned_sink_mass on a model with learned sinks).")] = None,
    sink_keys: Annotated[str, typer.Option(help="Comma-separated sink key positions.")] = "0",
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    offload_folder: OffloadOption = None,
    backend: Annotated[str, typer.Option(help="auto, cpu, reference or triton.")] = "auto",
    context_parallel: Annotated[bool, typer.Option(
        "--context-parallel", help="Split the sequence across the ranks of torchrun (rank 0 writes).")] = False,
) -> None:
    """Trace a text through every attention head; print the per-layer sink/entropy report; save the Trace."""
    import workbench

    try:
        text = read_text(text, file)
        stat_names = None if stats is None else check_stats(tuple(s.strip() for s in stats.split(",") if s.strip()))
        sinks = numbers(sink_keys, int, "--sink-keys", low=0)
        out = out or default_out("traces")
        preflight(out, overwrite, store, no_store)
        if context_parallel:
            from workbench import context_parallel as cp

            device = cp.start(device)
        subject = load_subject(model, device, device_map, max_memory, offload_folder)
        with console.status(f"Tracing {len(text)} characters..."):
            trace = workbench.trace(subject, text, stats=stat_names, sink_keys=sinks, backend=backend,
                                    context_parallel=context_parallel)
        if context_parallel and torch.distributed.get_rank() != 0:
            return  # every rank holds the whole trace; rank 0 reports and writes it
        _print_report(trace)
        trace.save(out, overwrite=overwrite)
        console.print(f"Trace saved to [bold]{escape(str(out))}[/]", soft_wrap=True)
        if not no_store:
            store_run(store, "trace", trace.model_id, trace.head_table(),
                      params={"stats": list(trace.stats), "sink_keys": list(sinks),
                              "n_tokens": len(trace.tokens[0])}, out=out,
                      token_file=out / TOKENS_FILE if trace.token_stats() else None)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err


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
