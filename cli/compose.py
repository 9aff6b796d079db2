"""`workbench compose`: weight-based Q-, K- and V-composition between heads; print the strongest pairs, save the
tables and arrays, store each head's strongest incoming score."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.common import (
    DeviceOption,
    ModelOption,
    NoStoreOption,
    OutOption,
    OverwriteOption,
    StoreOption,
    console,
    default_out,
    fail,
    load_subject,
    numbers,
    preflight,
    save_result,
)
from workbench.errors import WorkbenchError


def compose_command(
    model: ModelOption = None,
    distances: Annotated[str, typer.Option(help="Comma-separated query-key distances the RoPE scores are averaged "
                                                "over (0 alone: RoPE ignored).")] = ",".join(map(str, range(32))),
    top: Annotated[int, typer.Option(min=1, help="Pairs to print per kind of composition.")] = 8,
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
) -> None:
    """Score how much each earlier head's output can move each later head's query, key or value, from the weights
    alone (Elhage et al. 2021), with the singular directions that carry it (Merullo et al. 2024)."""
    from workbench.probes.composition import KINDS, composition_scores

    out = out or default_out("composition")
    try:
        steps = numbers(distances, int, "--distances", low=0)
        preflight(out, overwrite, store, no_store)
        subject = load_subject(model, device)
        with console.status("Scoring every pair of heads..."):
            result = composition_scores(subject, steps)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    table = Table(title=f"{subject.name}: strongest composition (sender -> receiver)")
    for kind in KINDS:
        table.add_column(f"{kind.upper()}-composition")
    columns = [result.top(f"{kind}_composition", top) for kind in KINDS]
    cell = lambda r: f"L{r.source_layer}.H{r.source_head} -> L{r.layer}.H{r['head']}  {r.value:.3f}"  # noqa: E731
    for i in range(top):
        table.add_row(*(cell(rows.iloc[i]) if i < len(rows) else "" for rows in columns))
    console.print(table)
    summary = result.table[result.table.source_layer < 0]
    save_result(result, out, overwrite, store, no_store, "compose", subject.name,
                heads=summary[["layer", "head", "metric", "value"]])
