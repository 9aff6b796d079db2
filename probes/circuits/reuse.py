"""Circuit component reuse: which heads the circuits of several tasks share, against what chance would share.

Merullo, Eickhoff and Pavlick 2023 ("Circuit Component Reuse Across Tasks") find that the IOI circuit and the
circuit of a different task (Colored Objects: recall an attribute bound to a key earlier in the prompt) share
most of their heads, in the same roles. The built-in equivalent for the zoo's `organism` is the needle task (recall
the value bound to a colour key earlier in the prompt), beside IOI and induction. For every pair of circuits:
the shared heads, `overlap` (their share of the smaller circuit) and `jaccard` (`circuit.overlap`), and the
number of shared heads expected if the second circuit's heads were drawn at random, |A| |B| / n_heads (the mean
of the hypergeometric distribution).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.probes.circuits.circuit import Circuit, overlap
from workbench.probes.result import Result, head_rows


def circuit_reuse(circuits: Mapping[str, Circuit]) -> Result:
    """Head sharing among circuits found on one model, keyed by task name.

    Table: per head, `in_<task>` (1 if the task's circuit holds it) and `n_circuits` (how many do).
    Arrays: `membership` [task, layer, head] (0/1), and [task, task] `shared` (heads in both), `overlap`,
    `jaccard` and `expected_shared` (by chance). Params: `tasks` (the order of the arrays' task axes) and
    `shared_heads` ({"a & b": ["L3.H0", ...]}).
    """
    names = list(circuits)
    if len(names) < 2:
        raise WorkbenchError(f"circuit reuse compares at least two circuits; got {names}")
    first = circuits[names[0]]
    shape = (first.n_layers, first.n_heads)
    for name, c in circuits.items():
        if (c.model_id, c.n_layers, c.n_heads) != (first.model_id, *shape):
            raise WorkbenchError(f"circuit {name!r} is of {c.model_id!r} ({c.n_layers} x {c.n_heads} heads), not "
                                 f"of {first.model_id!r} ({shape[0]} x {shape[1]}) like {names[0]!r}")
    membership = np.zeros((len(names), *shape))
    for i, name in enumerate(names):
        for layer, head in circuits[name].heads:
            membership[i, layer, head] = 1.0
    n = len(names)
    arrays = {"membership": membership, **{k: np.zeros((n, n)) for k in ("shared", "overlap", "jaccard",
                                                                          "expected_shared")}}
    shared_heads = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            pair = overlap(circuits[a], circuits[b])
            arrays["shared"][i, j] = len(pair["shared"])
            arrays["overlap"][i, j], arrays["jaccard"][i, j] = pair["overlap"], pair["jaccard"]
            arrays["expected_shared"][i, j] = membership[i].sum() * membership[j].sum() / membership[i].size
            if i < j:
                shared_heads[f"{a} & {b}"] = pair["shared"]
    rows = [head_rows(membership[i], f"in_{name}") for i, name in enumerate(names)]
    rows.append(head_rows(membership.sum(0), "n_circuits"))
    return Result("reuse", pd.concat(rows, ignore_index=True), arrays,
                  {"tasks": names, "shared_heads": shared_heads, "model_id": first.model_id,
                   "methods": {name: c.method for name, c in circuits.items()}})
