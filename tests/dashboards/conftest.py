"""Fixtures of the app's tests: a circuit.json written by the test itself, following the circuit schema."""

import json

import pytest


def circuit_dict(model_id: str = "organism", n_layers: int = 6, n_heads: int = 6,
                 in_circuit: tuple = ((5, 3), (5, 2), (2, 1))) -> dict:
    """A format-1 circuit over every head and MLP of a model: `in_circuit` heads in, chained to the logits."""
    nodes = [{"id": "input", "kind": "input", "layer": -1, "head": None, "score": None, "in_circuit": True}]
    for layer in range(n_layers):
        for head in range(n_heads):
            chosen = (layer, head) in in_circuit
            nodes.append({"id": f"L{layer}.H{head}", "kind": "head", "layer": layer, "head": head,
                          "score": 0.5 if chosen else 0.01 * head, "in_circuit": chosen})
        nodes.append({"id": f"M{layer}", "kind": "mlp", "layer": layer, "head": None, "score": 0.02,
                      "in_circuit": False})
    nodes.append({"id": "logits", "kind": "logits", "layer": n_layers, "head": None, "score": None,
                  "in_circuit": True})
    ordered = sorted(in_circuit)
    chain = ["input", *(f"L{l}.H{h}" for l, h in ordered), "logits"]
    edges = [{"source": a, "target": b, "score": 0.7, "in_circuit": True} 
             for a, b in zip(chain, chain[1:], strict=False)]
    edges.append({"source": "L0.H0", "target": "M1", "score": -0.05, "in_circuit": False})
    return {"format": 1, "model_id": model_id, "task": "needle", "method": "test-fixture", "metric": "logit_diff",
            "nodes": nodes, "edges": edges, "faithfulness": 0.9, "n_heads_in_circuit": len(in_circuit),
            "n_heads_total": n_layers * n_heads, "params": {"seed": 0}}


@pytest.fixture
def write_circuit(tmp_path):
    """write_circuit(folder_name, **changes) -> the folder holding a circuit.json (fields overridden by changes)."""
    def write(name: str = "circuit", **changes):
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "circuit.json").write_text(json.dumps({**circuit_dict(), **changes}))
        return folder
    return write
