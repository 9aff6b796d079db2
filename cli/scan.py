"""`workbench scan PROBE`: run one probe on a model, print its strongest heads, save Parquet and a store run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from workbench import parallel
from workbench.atomic import check_output, output_folder
from workbench.cli.common import (
    INTERRUPTED,
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
    interruptible,
    load_subject,
    numbers,
    preflight,
    read_text,
    store_run,
)
from workbench.errors import WorkbenchError
from workbench.probes.result import LAYER_LEVEL, Result

app = typer.Typer(no_args_is_help=True, help="Run a probe and report the heads it finds.")

TOP = 8
CHECKPOINT = "needles.jsonl"  # the retrieval scan's finished cases, one JSON line each


def _run(probe: str, model: str | None, device: str | None, make: Callable, out: Path | None, overwrite: bool,
         store, no_store, checked: bool = False, placement: tuple = (None, None, None)) -> None:
    """Check the options, load the model, call make(subject) -> [Result], print, save and store the results.
    `checked`: the caller has checked `out` itself (a resumable scan); placement: the model's --device-map,
    --max-memory and --offload-folder."""
    out = out or default_out("scans")
    try:
        preflight(None if checked else out, overwrite, store, no_store)
        subject = load_subject(model, device, *placement)
        results = make(subject)
        if not parallel.is_main():
            return  # under a launcher, every process holds the results; the first writes them
        interrupted = [r for r in results if r.params.get("interrupted")]
        if interrupted:
            done = interrupted[0].params.get("cases", 0)
            console.print(f"[bold yellow]interrupted[/] after {done} finished case(s): nothing stored; the "
                          f"finished cases are kept in {out}, and the same command resumes from them")
            raise typer.Exit(code=INTERRUPTED)
        for result in results:
            _print(result)
        with output_folder(out, overwrite or checked) as staged:
            for result in results:
                result.save(staged)
        console.print(f"Tables saved to [bold]{escape(str(out))}[/]", soft_wrap=True)
        if not no_store:
            heads = pd.concat([r.head_metrics() for r in results], ignore_index=True)
            params = {r.probe: r.params for r in results}
            store_run(store, f"scan:{probe}", subject.name, heads, params=params, out=out)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err


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
        elif "kept_fraction" in rows and rows.kept_fraction.notna().any():
            cells = [f"kept {r.kept_fraction:g}: {r.value:.4g}" for r in rows.itertuples()]
        elif "other_layer" in rows and rows.other_layer.notna().any():
            cells = [f"L{r.layer}~L{int(r.other_layer)} {r.value:.3f}"
                     for r in rows.nlargest(TOP, "value").itertuples()]
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
@interruptible
def sinks(model: ModelOption = None, text: TextOption = None, file: FileOption = None,
          eps: Annotated[float, typer.Option(min=0.0, max=1.0, help="Sink^eps threshold on first-token mass.")] = 0.3,
          ratio: Annotated[float, typer.Option(min=0.0, help="Secondary sinks: times the uniform share.")] = 5.0,
          out: OutOption = None, overwrite: OverwriteOption = False, store: StoreOption = None,
          no_store: NoStoreOption = False,
          device: DeviceOption = None, device_map: DeviceMapOption = None, max_memory: MaxMemoryOption = None,
          offload_folder: OffloadOption = None) -> None:
    """First-token sink scores and Sink^eps, secondary sinks with their levels, massive activations."""
    from workbench import trace
    from workbench.probes.sinks import massive_activations, secondary_sinks, sink_scores

    source = _text(text, file)

    def make(subject):
        t = trace(subject, source, stats=("sink_mass", "received"), hidden_states=True)
        return [sink_scores(t, eps), secondary_sinks(t, ratio), massive_activations(t)]

    _run("sinks", model, device, make, out, overwrite, store, no_store,
         placement=(device_map, max_memory, offload_folder))


@app.command()
@interruptible
def entropy(model: ModelOption = None, text: TextOption = None, file: FileOption = None,
            window: Annotated[int, typer.Option(min=1, help="W of the windowed attention distance.")] = 64,
            out: OutOption = None, overwrite: OverwriteOption = False, store: StoreOption = None,
            no_store: NoStoreOption = False,
            device: DeviceOption = None, device_map: DeviceMapOption = None, max_memory: MaxMemoryOption = None,
          offload_folder: OffloadOption = None) -> None:
    """Entropy per head, layer and position; local versus global heads; future attention influence."""
    from workbench import trace
    from workbench.probes.entropy import entropy_profile, future_attention_influence, local_global

    source = _text(text, file)

    def make(subject):
        t = trace(subject, source, stats=("entropy", "window_distance", "received", "self_mass"),
                  distance_cap=window)
        return [entropy_profile(t), local_global(t), future_attention_influence(t)]

    _run("entropy", model, device, make, out, overwrite, store, no_store,
         placement=(device_map, max_memory, offload_folder))


@app.command()
@interruptible
def erank(model: ModelOption = None, text: TextOption = None, file: FileOption = None,
          out: OutOption = None, overwrite: OverwriteOption = False, store: StoreOption = None,
          no_store: NoStoreOption = False,
          device: DeviceOption = None, device_map: DeviceMapOption = None, max_memory: MaxMemoryOption = None,
          offload_folder: OffloadOption = None) -> None:
    """Effective rank of the hidden states per layer and of each head's output."""
    from workbench import trace
    from workbench.probes.erank import head_output_erank, hidden_state_erank

    source = _text(text, file)

    def make(subject):
        return [hidden_state_erank(trace(subject, source, stats=(), hidden_states=True)),
                head_output_erank(subject, source)]

    _run("erank", model, device, make, out, overwrite, store, no_store,
         placement=(device_map, max_memory, offload_folder))


@app.command()
@interruptible
def heads(model: ModelOption = None,
          length: Annotated[int, typer.Option(min=1, help="Length of the random span, repeated twice.")] = 50,
          batch: Annotated[int, typer.Option(min=1, help="Number of random sequences.")] = 4,
          out: OutOption = None, overwrite: OverwriteOption = False, store: StoreOption = None,
          no_store: NoStoreOption = False,
          device: DeviceOption = None, device_map: DeviceMapOption = None, max_memory: MaxMemoryOption = None,
          offload_folder: OffloadOption = None) -> None:
    """Previous-token, duplicate-token and induction scores on repeated random tokens."""
    from workbench.probes.heads import head_types

    _run("heads", model, device, lambda subject: [head_types(subject, length, batch)], out, overwrite, store, no_store,
         placement=(device_map, max_memory, offload_folder))


@app.command()
@interruptible
def retrieval(model: ModelOption = None,
              lengths: Annotated[str, typer.Option(help="Comma-separated context lengths.")] = "256,512,1024",
              depths: Annotated[str, typer.Option(help="Comma-separated needle depths in [0, 1].")] = "0.1,0.5,0.9",
              seeds: Annotated[int, typer.Option(min=1, help="Needles per length and depth.")] = 1,
              min_recall: Annotated[float, typer.Option(min=-1.0, max=1.0, help="Score only needles recalled "
                                                        "above this share of their tokens (-1: every needle).")] = 0.5,
              out: OutOption = None, overwrite: OverwriteOption = False, store: StoreOption = None,
              no_store: NoStoreOption = False,
              device: DeviceOption = None, device_map: DeviceMapOption = None, max_memory: MaxMemoryOption = None,
          offload_folder: OffloadOption = None) -> None:
    """Retrieval heads by needle-in-a-haystack copy-paste; resumable through OUT/needles.jsonl."""
    from workbench.probes.retrieval import retrieval_heads

    out = out or default_out("scans")
    try:
        grid = (numbers(lengths, int, "--lengths", low=2), numbers(depths, float, "--depths", low=0.0, high=1.0))
        _check_resumable(out, overwrite)
    except WorkbenchError as err:
        raise fail(err) from err

    def make(subject):
        out.mkdir(parents=True, exist_ok=True)
        return [retrieval_heads(subject, *grid, range(seeds), checkpoint=out / CHECKPOINT,
                                min_recall=None if min_recall < 0 else min_recall)]

    _run("retrieval", model, device, make, out, overwrite, store, no_store, checked=True,
         placement=(device_map, max_memory, offload_folder))


@app.command()
@interruptible
def act(model: ModelOption = None,
        task: Annotated[str, typer.Option(help="ioi, needle, induction, or a FILE.jsonl of "
                                               '{"clean", "answer"} lines.')] = "needle",
        examples: Annotated[int | None, typer.Option("--examples", "-n", min=1, help="Examples of a built-in task.")]
        = 8,
        beta: Annotated[float, typer.Option(min=0.0, max=1.0, help="ACT's scale of the sinks' attention.")] = 0.4,
        alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Sink: mean received attention above it.")] = 0.1,
        out: OutOption = None, overwrite: OverwriteOption = False, store: StoreOption = None,
        no_store: NoStoreOption = False, device: DeviceOption = None, device_map: DeviceMapOption = None,
        max_memory: MaxMemoryOption = None, offload_folder: OffloadOption = None) -> None:
    """ACT's per-head calibration search: the heads whose hidden-sink calibration raises the answers' log-prob."""
    from workbench.interventions.calibration import search_heads
    from workbench.probes.tasks import load_task

    def make(subject):
        the_task = load_task(subject, task, n=examples)
        if the_task.examples[0].answer is None:
            raise WorkbenchError(f"task {the_task.name!r} has no answers for ACT to score")
        pairs = [(list(e.clean), [e.answer]) for e in the_task.examples]
        return [search_heads(subject, pairs, beta=beta, alpha=alpha)]

    _run("act", model, device, make, out, overwrite, store, no_store,
         placement=(device_map, max_memory, offload_folder))


@app.command()
@interruptible
def sparsity(model: ModelOption = None, text: TextOption = None, file: FileOption = None,
             block_size: Annotated[int, typer.Option(help="Positions per block (64-1024).")] = 128,
             gamma: Annotated[float, typer.Option(min=0.0, max=1.0, help="Coverage: the mass to reach.")] = 0.9,
             top_k: Annotated[str, typer.Option(help="Coverage: comma-separated numbers of top blocks.")] = "1,4,16",
             groups: Annotated[int, typer.Option(min=1, help="Head groups per layer (representative heads).")] = 2,
             task: Annotated[str | None, typer.Option(help="Also score this task under block-sparse budgets: loss, "
                                                           "ioi, needle, induction or a FILE.jsonl.")] = None,
             budgets: Annotated[str, typer.Option(help="Kept fractions of the blocks, comma-separated, in (0, 1].")]
             = "1,0.5,0.25,0.125",
             examples: Annotated[int | None, typer.Option("--examples", "-n", min=1,
                                                          help="Examples of a built-in task.")] = None,
             out: OutOption = None, overwrite: OverwriteOption = False, store: StoreOption = None,
             no_store: NoStoreOption = False,
             device: DeviceOption = None) -> None:
    """Block-level attention mass: coverage per head, head groups, cross-layer similarity; budgets on a task."""
    from workbench import trace
    from workbench.interventions.block_sparse import sparsity_sweep
    from workbench.kernels import check_block_size
    from workbench.probes.sparsity import coverage, head_groups, layer_similarity
    from workbench.probes.tasks import load_task

    source = _text(text, file)
    try:
        check_block_size(block_size)
        ks = numbers(top_k, int, "--top-k", low=1)
        fractions = numbers(budgets, float, "--budgets", low=0.0, high=1.0)
        if 0.0 in fractions:
            raise WorkbenchError(f"--budgets {budgets!r}: a kept fraction must be above 0")
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err

    def make(subject):
        if groups > subject.adapter.n_heads:
            raise WorkbenchError(f"--groups {groups} is more than the {subject.adapter.n_heads} heads of a layer")
        t = trace(subject, source, stats=("block_mass",), block_size=block_size, logits=None)
        results = [coverage(t, gamma, ks), head_groups(t, groups, gamma), layer_similarity(t)]
        if task is not None:
            results.append(sparsity_sweep(subject, load_task(subject, task, n=examples), fractions, block_size))
        return results

    _run("sparsity", model, device, make, out, overwrite, store, no_store)


def _text(text: str | None, file) -> str:
    try:
        return read_text(text, file)
    except WorkbenchError as err:
        raise fail(err) from err


def _check_resumable(out: Path, overwrite: bool) -> None:
    """A retrieval scan may write into a folder that holds only its own files (its checkpoint: it resumes)."""
    own = {CHECKPOINT, "retrieval.parquet", "retrieval_arrays.npz"}
    check_output(out, overwrite or (out.is_dir() and {p.name for p in out.iterdir()} <= own))
