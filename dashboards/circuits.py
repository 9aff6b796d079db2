"""Reading circuit.json files (format 1, written by `workbench circuit --out DIR`) and finding them in the store.

The file holds the model, task, method and metric of a circuit search, its nodes (input, heads `L{l}.H{h}`,
MLPs `M{l}`, logits) and scored edges, each marked in or out of the circuit. Runs of kind "circuit" in the
results store name the folder (their `trace_dir`) that holds the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.errors import WorkbenchError
from workbench.store import Store

FORMAT = 1
KINDS = ("input", "head", "mlp", "logits")
FILE_NAME = "circuit.json"


@dataclass(frozen=True)
class Circuit:
    """A circuit as read from circuit.json: plain dicts for nodes and edges, as the file has them."""

    model_id: str
    task: str
    method: str
    metric: str
    nodes: list[dict]
    edges: list[dict]
    faithfulness: float | None
    n_heads_in_circuit: int
    n_heads_total: int
    params: dict

    @property
    def n_heads(self) -> int:
        """Heads per layer (1 + the largest head index among the nodes)."""
        return 1 + max((n["head"] for n in self.nodes if n["kind"] == "head"), default=0)

    def heads(self, in_circuit: bool = True) -> list[tuple[int, int]]:
        """The (layer, head) pairs of head nodes (only those in the circuit by default)."""
        return [(n["layer"], n["head"]) for n in self.nodes
                if n["kind"] == "head" and (n["in_circuit"] or not in_circuit)]


def read_circuit(path: str | Path) -> Circuit:
    """Read and check a circuit.json (or the folder holding one); WorkbenchError naming what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise WorkbenchError(f"no circuit file at {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WorkbenchError(f"{str(path)!r} is not valid JSON: {err}") from err
    if data.get("format") != FORMAT:
        raise WorkbenchError(f"{str(path)!r} has circuit format {data.get('format')!r}, expected {FORMAT}")
    missing = [k for k in ("model_id", "task", "method", "metric", "nodes", "edges") if k not in data]
    if missing:
        raise WorkbenchError(f"{str(path)!r} lacks {missing}")
    ids = set()
    for node in data["nodes"]:
        if node.get("kind") not in KINDS:
            raise WorkbenchError(f"node {node.get('id')!r} in {str(path)!r} has kind {node.get('kind')!r}; "
                                 f"known: {list(KINDS)}")
        if node["kind"] == "head" and node["id"] != f"L{node['layer']}.H{node['head']}":
            raise WorkbenchError(f"head node {node['id']!r} does not match its layer {node['layer']} and head "
                                 f"{node['head']}")
        ids.add(node["id"])
    for edge in data["edges"]:
        unknown = [end for end in (edge["source"], edge["target"]) if end not in ids]
        if unknown:
            raise WorkbenchError(f"edge {edge['source']} -> {edge['target']} in {str(path)!r} names unknown "
                                 f"node(s) {unknown}")
    heads = [n for n in data["nodes"] if n["kind"] == "head"]
    return Circuit(
        model_id=data["model_id"], task=data["task"], method=data["method"], metric=data["metric"],
        nodes=data["nodes"], edges=data["edges"], faithfulness=data.get("faithfulness"),
        n_heads_in_circuit=int(data.get("n_heads_in_circuit", sum(n["in_circuit"] for n in heads))),
        n_heads_total=int(data.get("n_heads_total", len(heads))), params=data.get("params", {}),
    )


def circuit_runs(store: str | Path | None) -> pd.DataFrame:
    """The store's runs of kind "circuit" whose folder still holds a circuit.json: run_id, created, model_id,
    path; newest first."""
    with Store(store) as db:
        runs = db.runs()
    runs = runs[(runs.kind == "circuit") & runs.trace_dir.notna()].copy()
    runs["path"] = pd.Series([str(Path(d) / FILE_NAME) for d in runs.trace_dir], index=runs.index, dtype=object)
    runs = runs[runs.path.map(lambda p: Path(p).is_file()).astype(bool)]
    return runs[["run_id", "created", "model_id", "path"]].reset_index(drop=True)
