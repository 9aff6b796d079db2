"""`workbench scan PROBE`: run one probe on a model, print its strongest heads, save Parquet and a store run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from probes.result import LAYER_LEVEL, Result
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
from workbench.errors import WorkbenchError

app = typer.Typer(no_args_is_help=True, help="Run a probe and report the heads it finds.")

TOP = 8


def _run(probe: str, model: str | None, device: str | None, make: Callable, out, store, no_store) -> None:
    """Load the model, call make(subject) -> [Result], print, save and store the results."""
    try:
        subject = load_subject(model, device)
        results = make(subject)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    for result in results:
        _print(result)
    out = out or default_out("scans")
    for result in results:
        result.save(out)
    console.print(f"Tables saved to [bold]{out}[/]")
    if not no_store:
        heads = pd.concat([r.head_metrics() for r in results], ignore_index=True)
        params = {r.probe: r.params for r in results}
        store_run(store, f"scan:{probe}", subject.name, heads, params=params, out=out)


def _print(result: Result) -> None:
    """Per metric: the top heads, or the layer-level values when the metric has no per-head rows."""
    table = Table(title=result.probe)
    for column in ("metric", "top heads (layer.head value) / per layer"):
        table.add_column(column)
    for metric in result.table.metric.unique():
        rows = result.metric(metric)
        if "position" in rows and rows.position.notna().any():
            shown = rows.nlargest(TOP, "value")
            cells = [f"L{r.layer} pos {int(r.position)} {getattr(r, 'token', '')!s} {r.value:.3g}"
                     for r in shown.itertuples()]
        elif (rows["head"] != LAYER_LEVEL).any():
            cells = [f"L{r.layer}.H{r.head} {r.value:.3f}" for r in result.top(metric, TOP).itertuples()]
        else:
            cells = [f"L{r.layer} {r.value:.3f}" if r.layer != LAYER_LEVEL else f"all {r.value:.3f}"
                     for r in rows.itertuples()]
        table.add_row(metric, ", ".join(cells))
    console.print(table)
    if result.params:
        console.print(f"[dim]{result.params}[/]")


@app.command()
def sinks(model: ModelOption = None, text: TextOption = None, file: FileOption = None,
          eps: Annotated[float, typer.Option(help="Sink^eps threshold on first-token mass.")] = 0.3,
          ratio: Annotated[float, typer.Option(help="Secondary sinks: times the uniform share.")] = 5.0,
          out: OutOption = None, store: StoreOption = None, no_store: NoStoreOption = False,
          device: DeviceOption = None) -> None:
    """First-token sink scores and Sink^eps, secondary sinks with their levels, massive activations."""
    from probes.sinks import massive_activations, secondary_sinks, sink_scores
    from workbench import trace

    def make(subject):
        t = trace(subject, read_text(text, file), stats=("sink_mass", "received"), hidden_states=True)
        return [sink_scores(t, eps), secondary_sinks(t, ratio), massive_activations(t)]

    _run("sinks", model, device, make, out, store, no_store)


@app.command()
def entropy(model: ModelOption = None, text: TextOption = None, file: FileOption = None,
            window: Annotated[int, typer.Option(help="W of the windowed attention distance.")] = 64,
            out: OutOption = None, store: StoreOption = None, no_store: NoStoreOption = False,
            device: DeviceOption = None) -> None:
    """Entropy per head, layer and position; local versus global heads; future attention influence."""
    from probes.entropy import entropy_profile, future_attention_influence, local_global
    from workbench import trace

    def make(subject):
        t = trace(subject, read_text(text, file), stats=("entropy", "window_distance", "received", "self_mass"),
                  distance_cap=window)
        return [entropy_profile(t), local_global(t), future_attention_influence(t)]

    _run("entropy", model, device, make, out, store, no_store)


@app.command()
def erank(model: ModelOption = None, text: TextOption = None, file: FileOption = None,
          out: OutOption = None, store: StoreOption = None, no_store: NoStoreOption = False,
          device: DeviceOption = None) -> None:
    """Effective rank of the hidden states per layer and of each head's output."""
    from probes.erank import head_output_erank, hidden_state_erank
    from workbench import trace

    def make(subject):
        source = read_text(text, file)
        return [hidden_state_erank(trace(subject, source, stats=(), hidden_states=True)),
                head_output_erank(subject, source)]

    _run("erank", model, device, make, out, store, no_store)


@app.command()
def heads(model: ModelOption = None,
          length: Annotated[int, typer.Option(help="Length of the random span, repeated twice.")] = 50,
          batch: Annotated[int, typer.Option(help="Number of random sequences.")] = 4,
          out: OutOption = None, store: StoreOption = None, no_store: NoStoreOption = False,
          device: DeviceOption = None) -> None:
    """Previous-token, duplicate-token and induction scores on repeated random tokens."""
    from probes.heads import head_types

    _run("heads", model, device, lambda subject: [head_types(subject, length, batch)], out, store, no_store)


@app.command()
def retrieval(model: ModelOption = None,
              lengths: Annotated[str, typer.Option(help="Comma-separated context lengths.")] = "256,512,1024",
              depths: Annotated[str, typer.Option(help="Comma-separated needle depths in [0, 1].")] = "0.1,0.5,0.9",
              seeds: Annotated[int, typer.Option(help="Needles per length and depth.")] = 1,
              out: OutOption = None, store: StoreOption = None, no_store: NoStoreOption = False,
              device: DeviceOption = None) -> None:
    """Retrieval heads by needle-in-a-haystack copy-paste; resumable through OUT/needles.jsonl."""
    from probes.retrieval import retrieval_heads

    out = out or default_out("scans")
    out.mkdir(parents=True, exist_ok=True)

    def make(subject):
        return [retrieval_heads(subject, [int(x) for x in lengths.split(",")],
                                [float(x) for x in depths.split(",")], range(seeds),
                                checkpoint=out / "needles.jsonl")]

    _run("retrieval", model, device, make, out, store, no_store)
