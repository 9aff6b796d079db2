"""`workbench attribute`: direct logit attribution of every head and MLP on a task (with factual-recall tasks, which
heads attend to the subject); print the strongest, save the tables and a store run."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli.ablate import ExamplesOption, SeedOption
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

TOP = 8


def attribute_command(
    model: ModelOption = None,
    task: Annotated[str, typer.Option(help="capitals, birthplace, ioi, needle, induction, or a FILE.jsonl of "
                                           '{"clean", "answer", "wrong"} lines.')] = "capitals",
    examples: ExamplesOption = None,
    seed: SeedOption = 0,
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
) -> None:
    """Each head's and MLP's direct contribution to the answer's logit (difference) at the last position."""
    from workbench.probes.attribution import direct_logit_attribution
    from workbench.probes.factual import TEMPLATES, factual_recall
    from workbench.probes.tasks import load_task

    out = out or default_out("attributions")
    try:
        preflight(out, overwrite, store, no_store)
        subject = load_subject(model, device)
        if task in TEMPLATES:
            result = factual_recall(subject, task, examples)
        else:
            result = direct_logit_attribution(subject, load_task(subject, task, n=examples, seed=seed))
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    totals = result.table[result.table.layer == -1].set_index("metric").value
    console.print(f"{subject.name} on {task} ({result.params['examples']} prompts), logit of "
                  f"{result.params['direction']}: {totals['logit']:.3f}; the terms sum to it within "
                  f"{totals['reconstruction_error']:.1e}")
    mlp = result.metric("mlp_dla").nlargest(TOP // 2, "value")
    lines = {"heads writing the answer": [f"L{r.layer}.H{r.head} {r.value:+.3f}" for r in result.top("dla", TOP)
                                          .itertuples()],
             "MLPs writing the answer": [f"L{r.layer} {r.value:+.3f}" for r in mlp.itertuples()]}
    if "subject_attention" in set(result.table.metric):
        lines["heads attending to the subject"] = [f"L{r.layer}.H{r.head} {r.value:.3f}" for r in
                                                   result.top("subject_attention", TOP).itertuples()]
        console.print(f"the model knows {totals['accuracy']:.0%} of the facts (answer's first token is the argmax)")
    for title, cells in lines.items():
        console.print(f"{title}: {', '.join(cells)}")
    save_result(result, out, overwrite, store, no_store, "attribute", subject.name,
                params={**result.params, "task": task})
