"""`workbench reuse`: find the circuit of each of several tasks on one model, print which heads they share and how
many chance would share, save every circuit and the comparison, store it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from workbench.cli.ablate import ExamplesOption, SeedOption
from workbench.cli.common import (
    DeviceOption,
    ModelOption,
    NoStoreOption,
    OverwriteOption,
    StoreOption,
    console,
    default_out,
    fail,
    load_subject,
    preflight,
    store_run,
)
from workbench.errors import WorkbenchError


def reuse_command(
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks (built-in names or FILE.jsonl), two or more.")]
    = "ioi,needle",
    method: Annotated[str, typer.Option(help="eap, eap-ig or patching.")] = "eap-ig",
    model: ModelOption = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: in the user data dir).")] = None,
    overwrite: OverwriteOption = False,
    top_k: Annotated[int | None, typer.Option(min=1, help="Keep each task's k strongest edges.")] = 20,
    max_heads: Annotated[int | None, typer.Option(min=1, help="At most this many heads per circuit.")] = None,
    examples: ExamplesOption = None,
    seed: SeedOption = 0,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
) -> None:
    """Find each task's circuit and compare their heads (circuit component reuse, Merullo et al. 2023)."""
    from workbench.atomic import output_folder
    from workbench.probes.circuits.circuit import save
    from workbench.probes.circuits.discover import METHODS, find_circuit
    from workbench.probes.circuits.reuse import circuit_reuse
    from workbench.probes.tasks import load_task

    out = out or default_out("reuse")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        if len(names) < 2 or len(set(names)) < len(names):
            raise WorkbenchError(f"--tasks {tasks!r}: name two or more different tasks")
        if method not in METHODS:
            raise WorkbenchError(f"unknown circuit method {method!r}; known: {list(METHODS)}")
        preflight(out, overwrite, store, no_store)
        subject = load_subject(model, device)
        built = [load_task(subject, name, n=examples, seed=seed) for name in names]
        if len({task.name for task in built}) < len(built):
            raise WorkbenchError(f"--tasks {tasks!r}: two of the tasks have the same name {[t.name for t in built]}")
        circuits = {}
        for task in built:
            console.print(f"{subject.name}: {method} on {task.name} ({len(task.examples)} examples)")
            circuits[task.name] = find_circuit(subject, task, method, top_k=top_k, max_heads=max_heads)
        result = circuit_reuse(circuits)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    table = Table(title=f"{subject.name}: heads shared by the circuits ({method}, top {top_k} edges)")
    for column in ("tasks", "shared heads", "overlap", "jaccard", "by chance"):
        table.add_column(column)
    order = result.params["tasks"]
    for i, a in enumerate(order):
        for j in range(i + 1, len(order)):
            table.add_row(f"{a} & {order[j]}", ", ".join(result.params["shared_heads"][f"{a} & {order[j]}"]) or "-",
                          f"{result.arrays['overlap'][i, j]:.2f}", f"{result.arrays['jaccard'][i, j]:.2f}",
                          f"{result.arrays['expected_shared'][i, j]:.2f} heads")
    console.print(table)
    for name, c in circuits.items():
        console.print(f"  {name}: {', '.join(f'L{l}.H{h}' for l, h in c.heads)}; faithfulness {c.faithfulness:.3f}")
    try:
        with output_folder(out, overwrite) as staged:
            result.save(staged)
            (staged / "reuse.json").write_text(json.dumps(result.params, indent=1))
            for name, c in circuits.items():
                (staged / name).mkdir()
                save(c, staged / name)
        console.print(f"Comparison and circuits written to [bold]{escape(str(out))}[/]", soft_wrap=True)
        if not no_store:
            store_run(store, "reuse", subject.name, result.head_metrics(),
                      params={**result.params, "top_k": top_k, "max_heads": max_heads, "seed": seed}, out=out)
    except WorkbenchError as err:
        raise fail(err) from err
