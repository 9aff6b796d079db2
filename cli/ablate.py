"""`workbench ablate`: ablate each head (or a given set) on a task, rank the heads, write the HTML report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from workbench.cli.common import (
    DeviceMapOption,
    DeviceOption,
    MaxMemoryOption,
    ModelOption,
    NoStoreOption,
    OffloadOption,
    StoreOption,
    console,
    default_out,
    fail,
    load_subject,
    preflight,
    store_run,
)
from workbench.errors import WorkbenchError

TaskOption = Annotated[str, typer.Option(help="loss, ioi, needle, induction, or a FILE.jsonl of "
                                              '{"clean", "corrupted", "answer", "wrong"} lines.')]
ExamplesOption = Annotated[int | None, typer.Option("--examples", "-n", min=1, help="Examples of a built-in task.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the task's examples and of resampling.")]


def ablate_command(
    model: ModelOption = None,
    task: TaskOption = "loss",
    heads: Annotated[str, typer.Option(help="all, or comma-separated L.H pairs such as 0.1,1.0.")] = "all",
    mode: Annotated[str, typer.Option(help="zero, mean or resample (over the task's own clean prompts).")] = "zero",
    out: Annotated[Path | None, typer.Option(help="The HTML report (JSON and Parquet are written beside it).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report and its files.")] = False,
    examples: ExamplesOption = None,
    seed: SeedOption = 0,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    offload_folder: OffloadOption = None,
) -> None:
    """Ablate each head alone on a task; rank heads by the change of the task's loss or metric; write a report.

    Under `accelerate launch` or `torchrun` the heads are split across the processes; the first writes."""
    from workbench import parallel
    from workbench.interventions.report import TOP_K, report_data, report_files, write_report
    from workbench.interventions.sweep import ablation_sweep, parse_heads
    from workbench.probes.tasks import load_task

    path = out or default_out("ablations") / "report.html"
    try:
        if path.suffix.lower() not in (".html", ".htm"):
            raise WorkbenchError(f"--out {str(path)!r} is the HTML report: give a file name ending in .html")
        preflight(None, overwrite, store, no_store, files=report_files(path))
        subject = load_subject(model, device, device_map, max_memory, offload_folder)
        chosen = parse_heads(subject, heads)
        the_task = load_task(subject, task, n=examples, seed=seed)
        console.print(f"{subject.name}: {mode}-ablating {len(chosen)} heads on {the_task.name} "
                      f"({len(the_task.examples)} examples, metric {the_task.metric})")
        result = ablation_sweep(subject, the_task, chosen, mode=mode, seed=seed,
                                on_start=lambda s: console.print(f"estimated time: about {s:.0f} s"))
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    if not parallel.is_main():
        return
    adapter = subject.adapter
    command = shlex.join(["workbench", *sys.argv[1:]])
    data = report_data(result, the_task, subject.name, adapter.n_layers, adapter.n_heads, command)
    table = Table(title=f"heads whose ablation hurts {the_task.name} most ({the_task.metric})")
    for column in ("head", "importance", f"ablated {the_task.metric}"):
        table.add_column(column, justify="right")
    for row in data["ranking"][:TOP_K]:
        table.add_row(f"L{row['layer']}.H{row['head']}", f"{row['importance']:.4f}",
                      f"{row[f'ablated_{the_task.metric}']:.4f}")
    console.print(table)
    try:
        files = write_report(path, data, result)
        console.print(f"Report written to [bold]{escape(str(files[-1]))}[/] (numbers in {escape(files[0].name)}, "
                      f"{escape(files[1].name)})", soft_wrap=True)
        if not no_store:
            store_run(store, "ablate", subject.name, result.head_metrics(),
                      params={**result.params, "heads": heads}, out=path)
    except WorkbenchError as err:  # the store busy for longer than the wait, say
        raise fail(err) from err
