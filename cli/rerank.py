"""`workbench rerank`: rank each query's documents by in-context re-ranking (ICR), print the rankings and, with
relevance labels, nDCG / accuracy and the heads that rank best; save the tables and a store run."""

from __future__ import annotations

from pathlib import Path
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
    preflight,
    save_result,
)
from workbench.errors import WorkbenchError

TOP_HEADS = 8


def rerank_command(
    file: Annotated[Path, typer.Option("--file", "-f", help='JSONL, one {"query", "documents": [...], '
                                       '"relevance": [...] (optional)} object per line.')],
    model: ModelOption = None,
    no_calibration: Annotated[bool, typer.Option("--no-calibration", help='Do not subtract the scores under the '
                                                 'content-free query "N/A".')] = False,
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    store: StoreOption = None,
    no_store: NoStoreOption = False,
    device: DeviceOption = None,
) -> None:
    """Rank documents by the attention the query pays them (ICR, Chen et al. 2025), per model and per head."""
    from workbench.probes.rerank import read_cases, rerank

    out = out or default_out("rerank")
    try:
        cases = read_cases(file)
        preflight(out, overwrite, store, no_store)
        subject = load_subject(model, device)
        result = rerank(subject, cases, calibrate=not no_calibration)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    ranks = result.metric("rank")
    for c, case in enumerate(cases):
        order = ranks[ranks.case == c].sort_values("value").document.astype(int).tolist()
        table = Table(title=f"query {c + 1}: {case.query[:70]}")
        for column in ("rank", "document", "score") + (("relevance",) if case.relevance else ()):
            table.add_column(column)
        scores = result.metric("icr_score")
        for rank, d in enumerate(order, start=1):
            score = float(scores[(scores.case == c) & (scores.document == d)].value.iloc[0])
            cells = [str(rank), f"{d + 1}: {case.documents[d][:60]!r}", f"{score:.4f}"]
            table.add_row(*cells, *([f"{case.relevance[d]:g}"] if case.relevance else []))
        console.print(table)
    if result.params["labelled"]:
        model_rows = result.table[(result.table.layer == -1) & result.table.document.isna()].set_index("metric")
        console.print(f"nDCG {model_rows.value['ndcg']:.3f}, accuracy {model_rows.value['accuracy']:.3f} over "
                      f"{result.params['labelled']} labelled queries; heads that rank best (nDCG): " + ", ".join(
                          f"L{r.layer}.H{r.head} {r.value:.3f}" for r in result.top("ndcg", TOP_HEADS).itertuples()))
    save_result(result, out, overwrite, store, no_store, "rerank", subject.name,
                params={**result.params, "file": str(file)})
