"""Circuit reuse against counting by hand on made-up circuits, and its known answer on organism: the IOI and the
induction circuits share exactly the card's induction heads; `workbench reuse`."""

import functools

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import workbench
from workbench.cli import app
from workbench.probes import tasks as T
from workbench.probes.circuits.circuit import Circuit
from workbench.probes.circuits.discover import find_circuit
from workbench.probes.circuits.reuse import circuit_reuse


def made_up(heads, model="m", task="t"):
    """A 3-layer x 4-head circuit whose chosen edges run from the input to `heads`."""
    edges = pd.DataFrame({"source": "input", "target": heads, "score": 1.0, "in_circuit": True})
    return Circuit(model, task, "eap", "logit_diff", 3, 4, edges, {})


def test_reuse_counts_shared_heads_and_what_chance_would_share():
    circuits = {"a": made_up(["L0.H0", "L1.H2", "L2.H3"]), "b": made_up(["L1.H2", "L2.H3", "L2.H0", "L0.H1"]),
                "c": made_up(["L0.H2"])}
    result = circuit_reuse(circuits)
    np.testing.assert_array_equal(result.arrays["shared"], [[3, 2, 0], [2, 4, 0], [0, 0, 1]])
    np.testing.assert_allclose(result.arrays["expected_shared"][0, 1], 3 * 4 / 12)
    assert result.arrays["overlap"][0, 1] == pytest.approx(2 / 3) and result.arrays["jaccard"][0, 1] == 0.4
    assert result.params["shared_heads"] == {"a & b": ["L1.H2", "L2.H3"], "a & c": [], "b & c": []}
    n = result.head_matrix("n_circuits")
    assert n[1, 2] == 2 and n[0, 2] == 1 and n.sum() == 8
    assert result.head_matrix("in_b")[2, 0] == 1 and result.head_matrix("in_a")[2, 0] == 0
    with pytest.raises(workbench.WorkbenchError, match="at least two"):
        circuit_reuse({"a": circuits["a"]})
    with pytest.raises(workbench.WorkbenchError, match="'other'"):
        circuit_reuse({"a": circuits["a"], "x": made_up(["L0.H0"], model="other")})


@functools.cache
def organism():
    return workbench.load("organism", device="cpu")


def test_organism_ioi_and_induction_circuits_share_the_induction_heads():
    """organism's card: induction heads L3.H0 and L3.H3 (0.794, 0.792). EAP-IG circuits (top 15 edges, at most 7
    heads) on 8 prompts: IOI L2.H1, L3.H0, L3.H3, L3.H4; induction L0.H1, L1.H1, L2.H3, L3.H0, L3.H3 (its
    previous-token head L1.H1 among them). They share exactly L3.H0 and L3.H3, where chance would share 0.56."""
    subject = organism()
    circuits = {name: find_circuit(subject, build(subject, n=8), "eap-ig", top_k=15, max_heads=7, measure=False)
                for name, build in (("ioi", T.ioi), ("induction", T.induction))}
    result = circuit_reuse(circuits)
    assert result.params["shared_heads"] == {"ioi & induction": ["L3.H0", "L3.H3"]}
    assert result.arrays["shared"][0, 1] > 3 * result.arrays["expected_shared"][0, 1]


def test_reuse_cli_prints_the_shared_heads_and_writes_every_circuit(tmp_path):
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["reuse", "--model", "organism", "--tasks", "ioi,induction", "-n", "4",
                                   "--top-k", "15", "--max-heads", "7", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "ioi & induction" in run.output and "L3.H0" in run.output
    assert {p.name for p in out.iterdir()} == {"reuse.parquet", "reuse_arrays.npz", "reuse.json", "ioi", "induction"}
    assert (out / "ioi" / "circuit.json").is_file()
    code = CliRunner().invoke(app, ["reuse", "--model", "organism", "--tasks", "ioi"]).exit_code
    assert code == 2
