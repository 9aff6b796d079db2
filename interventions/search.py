"""Head search: the set of heads whose edit moves an objective most, grown one head at a time (greedy or beam).

HeadHunter (Ahn et al. 2025, "Fine-Grained Perturbation Guidance via Attention Head Selection") chooses the heads
a perturbation acts on by iterative search on an objective instead of perturbing whole layers: start from no
heads, try adding each candidate to the current set, keep the one that scores best, repeat; the objective after
each step is the curve of objective vs heads chosen. Beam search keeps the `beam` best sets of each size instead
of one (beam 1 is greedy; a beam as wide as every set of a size is exhaustive search).

The edit is one of this package's interventions applied to the whole set at once: `ablate` (zero or mean, the
mean over the task's own clean prompts), `scale` (the heads' outputs times a factor) or `soft_pag` (attention
interpolated toward the identity). The objective is a metric of a task (`workbench.probes.tasks`): the heads
that hurt the task most when edited are found with `goal="decrease"` on its logit difference, for example.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.errors import WorkbenchError
from workbench.interventions.heads import ablate, record_reference, scale
from workbench.interventions.perturbation import soft_pag
from workbench.interventions.select import Head, check_heads
from workbench.probes.result import Result
from workbench.probes.tasks import Task, evaluate
from workbench.subject import Subject

EDITS = ("ablate", "mean-ablate", "scale", "soft_pag")
GOALS = ("decrease", "increase")
Edit = Callable[[list[Head]], contextlib.AbstractContextManager]


def task_edit(subject: Subject, task: Task, edit: str, strength: float = 1.0) -> Edit:
    """heads -> the context manager of `edit` on those heads: `ablate` (zero), `mean-ablate` (mean over the task's
    clean prompts), `scale` (outputs times `strength`), `soft_pag` (identity mix of `strength` in [0, 1])."""
    if edit not in EDITS:
        raise WorkbenchError(f"unknown edit {edit!r}; known: {list(EDITS)}")
    if edit == "soft_pag" and not 0.0 <= strength <= 1.0:
        raise WorkbenchError(f"SoftPAG strength {strength} is outside [0, 1]")
    if edit == "ablate":
        return lambda heads: ablate(subject, heads)
    if edit == "mean-ablate":
        reference = record_reference(subject, [list(e.clean) for e in task.examples])
        return lambda heads: ablate(subject, heads, mode="mean", reference=reference)
    if edit == "scale":
        return lambda heads: scale(subject, heads, strength)
    return lambda heads: soft_pag(subject, heads, strength)


def task_objective(subject: Subject, task: Task, metric: str | None = None) -> Callable[[], float]:
    """() -> the mean of `metric` (default: the task's own) on the task's clean prompts, under the active edits."""
    metric = metric or task.metric
    known = ("logit_diff", "accuracy", "loss") if task.metric == "logit_diff" else ("loss",) if \
        task.examples[0].answer is None else ("accuracy", "loss")
    if metric not in known:
        raise WorkbenchError(f"task {task.name!r} has no metric {metric!r}; known: {list(known)}")
    return lambda: float(evaluate(subject, task)[metric].mean())


def head_search(subject: Subject, objective: Callable[[], float], edit: Edit, n_heads: int,
                candidates: Sequence[Head] | None = None, goal: str = "decrease", beam: int = 1) -> Result:
    """Grow a head set of up to `n_heads` heads whose `edit` moves `objective` most in the direction `goal`.

    objective() is evaluated under edit(heads) for every candidate extension of every kept set: about
    beam x n_heads x len(candidates) evaluations. Table rows (columns layer, head, metric, value, step): for each
    step the head added to the best set and `objective` after it; `objective_alone` per candidate (the first
    step's scores: each head edited alone). Arrays: `curve` [n_heads + 1] (the best set's objective at each size,
    no heads first), `chosen` [n_heads, 2] (the best final set in the order it grew), `alone` [layer, head].
    """
    if goal not in GOALS:
        raise WorkbenchError(f"unknown goal {goal!r}; known: {list(GOALS)}")
    a = subject.adapter
    pool = check_heads(subject, candidates if candidates is not None else
                       [(l, h) for l in range(a.n_layers) for h in range(a.n_heads)])
    if not 1 <= n_heads <= len(pool):
        raise WorkbenchError(f"cannot choose {n_heads} heads: choose between 1 and the {len(pool)} candidates")
    if beam < 1:
        raise WorkbenchError(f"beam width {beam} must be at least 1")
    sign = -1.0 if goal == "decrease" else 1.0
    plain = objective()
    beams: list[tuple[tuple[Head, ...], float]] = [((), plain)]
    history: list[list[tuple[tuple[Head, ...], float]]] = [beams]
    alone = np.full((a.n_layers, a.n_heads), np.nan)
    with tqdm(total=n_heads, desc="head search", unit="step") as bar:
        for step in range(n_heads):
            scored: dict[frozenset, tuple[tuple[Head, ...], float]] = {}
            for heads, _ in beams:
                for head in pool:
                    key = frozenset((*heads, head))
                    if head in heads or key in scored:
                        continue
                    with edit([*heads, head]):
                        value = objective()
                    scored[key] = ((*heads, head), value)
                    if step == 0:
                        alone[head] = value
            beams = sorted(scored.values(), key=lambda item: -sign * item[1])[:beam]
            history.append(beams)
            bar.update()
    best = beams[0][0]
    curve = [plain] + [_value_of(history[i + 1], best[:i + 1]) for i in range(n_heads)]
    rows = [(l, h, "objective", curve[i + 1], i + 1) for i, (l, h) in enumerate(best)]
    rows += [(l, h, "objective_alone", float(alone[l, h]), 1) for l, h in pool]
    table = pd.DataFrame(rows, columns=["layer", "head", "metric", "value", "step"])
    return Result("search", table, {"curve": np.array(curve), "chosen": np.array(best), "alone": alone},
                  {"goal": goal, "beam": beam, "n_heads": n_heads, "candidates": len(pool), "plain": plain})


def _value_of(kept: list[tuple[tuple[Head, ...], float]], prefix: tuple[Head, ...]) -> float:
    """The objective of the set `prefix` among the sets kept at its size (a best final set grew from kept ones)."""
    for heads, value in kept:
        if set(heads) == set(prefix):
            return value
    raise AssertionError(f"{prefix} was not kept")  # beam search only extends kept sets

