"""Ablate heads one at a time on a task and rank them by what that does to the task's metric.

Each head (or each head of a given set) is ablated alone (`workbench.interventions.heads.ablate`: zero, mean or
resample, with the task's own clean prompts as the reference) and the task is scored again
(`workbench.probes.tasks.evaluate`).
Under `accelerate launch` or `torchrun` the heads are split across the processes (`workbench.parallel`) and every
process gets the whole result, equal to the one-process one.
A head's `importance` is the change of the task's metric in the direction that hurts: the rise in loss, or the
fall in logit difference, so the heads the task leans on rank first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from workbench import parallel
from workbench.errors import WorkbenchError
from workbench.interventions.heads import MODES, ablate, record_reference
from workbench.interventions.select import Head, check_heads
from workbench.probes.result import Result
from workbench.probes.tasks import Task, evaluate
from workbench.subject import Subject


def parse_heads(subject: Subject, spec: str) -> list[Head]:
    """`all` or comma-separated `L.H` pairs as (layer, head) pairs; WorkbenchError naming a bad one."""
    adapter = subject.adapter
    if spec.strip() == "all":
        return [(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
    heads = []
    for part in (p.strip() for p in spec.split(",")):
        layer, dot, head = part.partition(".")
        if not (dot and layer.isdigit() and head.isdigit()):
            raise WorkbenchError(f"bad head {part!r} in --heads {spec!r}: write `all` or L.H pairs like 0.1,1.0")
        heads.append((int(layer), int(head)))
    return check_heads(subject, heads)


def ablation_sweep(subject: Subject, task: Task, heads: Sequence[Head] | None = None, mode: str = "zero",
                   seed: int = 0, on_start: Callable[[float], None] | None = None) -> Result:
    """Ablate each head alone on `task`.

    Table rows per head: `ablated_<m>` (mean of metric m with the head ablated), `delta_<m>` (ablated - plain)
    for every metric of the task, and `importance` (the change of task.metric in its bad direction).
    Arrays: `heads` [k, 2], `base` [n] and `delta` [k, n] (the task metric per example), `importance` [k].
    on_start(seconds): called with the estimated duration once the plain run has been timed (of this
    process's share of the heads, under a launcher).
    """
    if mode not in MODES:
        raise WorkbenchError(f"unknown ablation mode {mode!r}; known: {list(MODES)}")
    heads = check_heads(subject, heads if heads is not None else parse_heads(subject, "all"))
    if not heads:
        raise WorkbenchError("no heads to ablate")
    start = time.perf_counter()
    base = evaluate(subject, task)
    if on_start is not None:
        on_start((time.perf_counter() - start) * len(parallel.share(heads)))
    # the heads' outputs on the task's own clean prompts, recorded once for every head's mean/resample ablation
    reference = None if mode == "zero" else record_reference(subject, [list(e.clean) for e in task.examples])
    sign = 1.0 if task.higher_is_better else -1.0

    def one(head: Head) -> tuple[list[tuple], np.ndarray]:
        """The head's table rows and the per-example change of the task metric when it is ablated."""
        layer, index = head
        with ablate(subject, [head], mode=mode, reference=reference, seed=seed):
            ablated = evaluate(subject, task)
        rows = []
        for name, values in ablated.items():
            rows.append((layer, index, f"ablated_{name}", float(values.mean())))
            rows.append((layer, index, f"delta_{name}", float((values - base[name]).mean())))
        delta = ablated[task.metric] - base[task.metric]
        rows.append((layer, index, "importance", float(-sign * delta.mean())))
        return rows, delta

    done = parallel.map_items(one, heads, desc=f"{mode}-ablating heads on {task.name}", unit="head")
    rows = [row for head_rows, _ in done for row in head_rows]
    deltas = [delta for _, delta in done]
    table = pd.DataFrame(rows, columns=["layer", "head", "metric", "value"])
    delta = np.stack(deltas)
    return Result("ablate", table,
                  {"heads": np.array(heads), "base": base[task.metric], "delta": delta,
                   "importance": -sign * delta.mean(axis=1)},
                  {"task": task.name, "mode": mode, "metric": task.metric, "n_examples": len(task.examples),
                   "seed": seed, "baseline": {k: float(v.mean()) for k, v in base.items()}})
