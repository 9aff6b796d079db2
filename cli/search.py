"""`workbench search`: grow the head set whose edit moves a task's metric most (greedy or beam), print the curve
of the metric against the heads chosen, save the tables and store the run."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.ablate import ExamplesOption, SeedOption, TaskOption
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
    preflight,
    save_result,
)
from workbench.errors import WorkbenchError


def search_command(
    model: ModelOption = None,
    task: TaskOption = "ioi",
    edit: Annotated[str, typer.Option(help="ablate (zero), mean-ablate, scale or soft_pag.")] = "ablate",
    strength: Annotated[float, typer.Option(help="The factor of scale, the identity mix of soft_pag.")] = 1.0,
    heads: Annotated[int, typer.Option(min=1, help="How many heads to choose.")] = 4,
    beam: Annotated[int, typer.Option(min=1, help="Sets kept at each size (1: greedy).")] = 1,
    goal: Annotated[str, typer.Option(help="decrease or increase the metric.")] = "decrease",
    metric: Annotated[str | None, typer.Option(help="logit_diff, accuracy or loss (default: the task's).")] = None,
    candidates: Annotated[str, typer.Option(help="all, or comma-separated L.H pairs to choose from.")] = "all",
    examples: ExamplesOption = None,
    seed: SeedOption = 0,
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
) -> None:
    """Choose, one head at a time, the heads whose edit moves a task's metric most (HeadHunter, Ahn et al. 2025)."""
    from workbench.interventions.search import GOALS, head_search, task_edit, task_objective
    from workbench.interventions.sweep import parse_heads
    from workbench.probes.tasks import load_task

    out = out or default_out("searches")
    try:
        if goal not in GOALS:
            raise WorkbenchError(f"--goal {goal!r}: use one of {list(GOALS)}")
        preflight(out, overwrite, store, no_store)
        subject = load_subject(model, device)
        pool = parse_heads(subject, candidates)
        the_task = load_task(subject, task, n=examples, seed=seed)
        objective = task_objective(subject, the_task, metric)
        console.print(f"{subject.name}: {edit} search for {heads} of {len(pool)} heads on {the_task.name} "
                      f"({len(the_task.examples)} examples, {goal} {metric or the_task.metric}, beam {beam})")
        result = head_search(subject, objective, task_edit(subject, the_task, edit, strength), heads,
                             candidates=pool, goal=goal, beam=beam)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    table = Table(title=f"{metric or the_task.metric} against the heads chosen")
    for column in ("heads", "added", "value"):
        table.add_column(column, justify="right")
    table.add_row("0", "", f"{result.params['plain']:.4f}")
    for i, ((layer, head), value) in enumerate(zip(result.arrays["chosen"], result.arrays["curve"][1:], strict=True)):
        table.add_row(str(i + 1), f"L{layer}.H{head}", f"{value:.4f}")
    console.print(table)
    save_result(result, out, overwrite, store, no_store, "search", subject.name,
                params={**result.params, "task": the_task.name, "edit": edit, "strength": strength})
