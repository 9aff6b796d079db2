"""`workbench circuit`: find a task's circuit, print it, write DIR/circuit.json (+ figure, edge table), store it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workbench.cli.ablate import ExamplesOption, SeedOption, TaskOption
from workbench.cli.common import (
    DeviceMapOption,
    DeviceOption,
    MaxMemoryOption,
    ModelOption,
    NoStoreOption,
    OffloadOption,
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


def circuit_command(
    task: TaskOption = "ioi",
    method: Annotated[str, typer.Option(help="eap, eap-ig or patching.")] = "eap-ig",
    model: ModelOption = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: in the user data dir).")] = None,
    overwrite: OverwriteOption = False,
    top_k: Annotated[int | None, typer.Option(min=1, help="Keep the k strongest edges.")] = 20,
    threshold: Annotated[float | None, typer.Option(min=0.0, help="Keep edges with |score| at least this.")] = None,
    max_heads: Annotated[int | None, typer.Option(min=1, help="At most this many heads in the circuit.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Integration steps of EAP-IG.")] = 5,
    examples: ExamplesOption = None,
    seed: SeedOption = 0,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    offload_folder: OffloadOption = None,
) -> None:
    """Score every edge between heads and MLPs on a clean/corrupted task, keep the strongest as the circuit,
    and measure its faithfulness (everything outside it mean-ablated).

    Under `accelerate launch` or `torchrun`, patching splits its runs across the processes; the first writes."""
    from workbench import parallel
    from workbench.atomic import output_folder
    from workbench.probes.circuits.circuit import save
    from workbench.probes.circuits.discover import find_circuit
    from workbench.probes.tasks import load_task

    out = out or default_out("circuits")
    try:
        preflight(out, overwrite, store, no_store)
        subject = load_subject(model, device, device_map, max_memory, offload_folder)
        the_task = load_task(subject, task, n=examples, seed=seed)
        console.print(f"{subject.name}: {method} on {the_task.name} ({len(the_task.examples)} examples, "
                      f"metric {the_task.metric})")
        circuit = find_circuit(subject, the_task, method, top_k=top_k, threshold=threshold, max_heads=max_heads,
                               steps=steps)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    if not parallel.is_main():
        return
    circuit.params["seed"] = seed
    chosen = circuit.edges[circuit.edges.in_circuit].sort_values("score", key=abs, ascending=False)
    console.print(f"circuit: {len(circuit.heads)} of {circuit.n_layers * circuit.n_heads} heads "
                  f"({', '.join(sorted(circuit.nodes))}); faithfulness {circuit.faithfulness:.3f}")
    for r in chosen.head(12).itertuples():
        console.print(f"  {r.source:>7} -> {r.target:<7} {r.score:+.4f}")
    try:
        with output_folder(out, overwrite) as tmp:
            save(circuit, tmp)
        console.print(f"Circuit written to [bold]{escape(str(out / 'circuit.json'))}[/] (figure: circuit.html)",
                      soft_wrap=True)
        if not no_store:
            store_run(store, "circuit", subject.name, circuit.head_metrics(),
                      params={"task": the_task.name, "method": method, **circuit.params}, out=out)
    except WorkbenchError as err:
        raise fail(err) from err
