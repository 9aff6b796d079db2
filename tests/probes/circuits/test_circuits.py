"""Circuits with known answers on the zoo models, the JSON contract, overlap, the figure and `workbench circuit`."""

import functools
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import workbench
from workbench.cli import app
from workbench.probes import tasks as T
from workbench.probes.circuits.circuit import Circuit, circuit_figure, overlap
from workbench.probes.circuits.discover import find_circuit
from workbench.probes.circuits.eap import attribution_scores, node_scores, spearman
from workbench.probes.circuits.patching import patch_heads
from workbench.probes.circuits.path_patching import path_patch

INDUCTION = {(0, 1), (1, 0), (1, 1), (1, 2), (1, 3)}  # model card: previous-token head L0.H1, induction heads L1.*


@functools.cache
def zoo(name):
    return workbench.load(name, device="cpu")


@functools.cache
def organism_ioi():
    return T.ioi(zoo("organism"), n=8)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_induction_2l_circuit_is_previous_token_head_into_induction_heads(method):
    subject = zoo("induction-2l")
    circuit = find_circuit(subject, T.induction(subject, n=8), method, top_k=10)
    assert set(circuit.heads) == INDUCTION
    chosen = circuit.edges[circuit.edges.in_circuit]
    assert ((chosen.source == "L0.H1") & chosen.target.str.startswith("L1.")).any()  # K-composition edge
    assert set(chosen[chosen.target == "logits"].source) >= {"L1.H0", "L1.H3"}
    assert circuit.faithfulness >= 0.9


@functools.cache
def organism_ioi_patching():
    """Each head's activation-patching effect on organism's IOI prompts (the ground truth EAP is checked against)."""
    return patch_heads(zoo("organism"), organism_ioi())


def test_organism_ioi_circuit_is_faithful_with_few_heads():
    """Issue #7: faithfulness >= 0.8 with at most 20% of the heads, and the circuit holds the head whose
    patching alone hurts the task most (found by activation patching, not taken from the model card).
    Measured: EAP-IG's top 15 edges (4 heads: L2.H1, L3.H0, L3.H3, L3.H4, and MLPs 0, 2, 5) are 0.929 faithful
    on these 8 prompts, 0.881 on 32; top 10 (without L3.H4) 0.865 / 0.816, top 20 (with L1.H5) 0.969. With the
    means over every token instead of per template and position, the previous organism's best circuit of <= 7
    heads reached 0.25."""
    subject = zoo("organism")
    circuit = find_circuit(subject, organism_ioi(), "eap-ig", top_k=15, max_heads=7)
    assert len(circuit.heads) <= 0.2 * 36
    strongest = organism_ioi_patching().top("normalized", 1, largest=False).iloc[0]
    assert (int(strongest.layer), int(strongest["head"])) in circuit.heads
    assert circuit.faithfulness >= 0.8


def test_eap_agrees_with_activation_and_path_patching_on_organism():
    """Issue #7: Spearman >= 0.7 between EAP-IG and patching, on every head's node score (0.824) and on the 16
    strongest edges (path patching): measured 0.897 (0.333 on the top 8, 0.797 on 12, 0.946 on 20). EAP-IG
    underestimates the two edges through the first MLP, input -> M0 and M0 -> L2.H1, by a factor of 3-4 (-1.3
    against a path-patching effect of -4.5), which is what upsets the ranking of a few edges. Plain EAP (one
    gradient at the clean input) ranks the heads well (0.986) but the edges not at all (-0.11 on the top 12):
    it gives input -> L2.H1 the wrong sign (+0.77 against -5.1)."""
    subject, task = zoo("organism"), organism_ioi()
    edges = attribution_scores(subject, task, "eap-ig")
    patched = organism_ioi_patching().metric("effect")
    heads = [f"L{r.layer}.H{r.head}" for r in patched.itertuples()]
    assert spearman(node_scores(edges)[heads], patched.value) >= 0.7
    top = edges.reindex(edges.score.abs().sort_values(ascending=False).index).head(16)
    paths = path_patch(subject, task, list(zip(top.source, top.target, strict=True)))
    assert spearman(top.score, paths.effect) >= 0.7


def circuit(heads, model="m"):
    rows = [("input", h, -1.0, True) for h in heads] + [("input", "L1.H1", 0.1, False)]
    edges = pd.DataFrame(rows, columns=["source", "target", "score", "in_circuit"])
    return Circuit(model, "t", "eap", "logit_diff", 2, 2, edges, {"L0.H0": 0.5, "M1": 0.2})


def test_overlap_of_head_sets():
    a, b = circuit(["L0.H0", "L0.H1"]), circuit(["L0.H1", "L1.H0", "L1.H1"])
    assert overlap(a, a) == {"shared": ["L0.H0", "L0.H1"], "overlap": 1.0, "jaccard": 1.0}
    assert overlap(a, b) == {"shared": ["L0.H1"], "overlap": 0.5, "jaccard": 0.25}


def test_json_follows_the_contract_and_the_figure_draws_it():
    data = circuit(["L0.H0", "M0"]).to_json()
    assert list(data) == ["format", "model_id", "task", "method", "metric", "nodes", "edges", "faithfulness",
                          "n_heads_in_circuit", "n_heads_total", "params"]
    assert data["format"] == 1 and data["n_heads_in_circuit"] == 1 and data["n_heads_total"] == 4
    assert [n["id"] for n in data["nodes"]] == ["input", "L0.H0", "L0.H1", "M0", "L1.H0", "L1.H1", "M1", "logits"]
    for n in data["nodes"]:
        assert set(n) == {"id", "kind", "layer", "head", "score", "in_circuit"}
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id["logits"]["layer"] == 2 and by_id["input"]["layer"] == -1 and by_id["M0"]["in_circuit"]
    assert by_id["L0.H0"]["score"] == 0.5 and by_id["L0.H1"]["score"] is None and not by_id["L1.H1"]["in_circuit"]
    assert data["edges"][0] == {"source": "input", "target": "L0.H0", "score": -1.0, "in_circuit": True}
    json.dumps(data, allow_nan=False)
    fig = circuit_figure(data)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 2  # the two chosen edges; the third is outside the circuit
    inside = next(t for t in fig.data if t.name == "in circuit")
    assert set(inside.text) == {"input", "L0.H0", "M0", "logits"}


def test_circuit_cli_writes_the_json_and_a_store_run(tmp_path):
    out, db = tmp_path / "circuit", tmp_path / "runs.duckdb"
    result = CliRunner().invoke(app, ["circuit", "--model", "induction-2l", "--task", "induction", "-n", "8",
                                      "--method", "eap", "--top-k", "10", "--out", str(out), "--store", str(db)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "circuit.json").read_text())
    assert data["method"] == "eap" and data["model_id"] == "induction-2l" and data["task"] == "induction"
    assert {(n["layer"], n["head"]) for n in data["nodes"] if n["kind"] == "head" and n["in_circuit"]} == INDUCTION
    assert (out / "circuit.html").is_file() and (out / "edges.parquet").is_file()
    with workbench.Store(db) as store:
        runs = store.runs()
        assert runs.kind.tolist() == ["circuit"]
        stored = store.head_metrics(runs.run_id[0])
    scores = stored[(stored.metric == "circuit_score") & (stored["head"] >= 0)]
    by_id = {n["id"]: n["score"] for n in data["nodes"]}
    for r in scores.itertuples():
        assert r.value == pytest.approx(by_id[f"L{r.layer}.H{r.head}"])
    assert str(out.resolve()) in str(runs.iloc[0].to_dict())


@pytest.mark.parametrize("args, message", [
    (["--method", "acdc"], "unknown circuit method 'acdc'"),
    (["--task", "loss"], "has no corrupted prompt"),
])
def test_circuit_cli_reports_bad_input(tmp_path, args, message):
    result = CliRunner().invoke(app, ["circuit", "--model", "induction-2l", "-n", "2", "--task", "induction", *args,
                                      "--out", str(tmp_path / "c"), "--no-store"])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "c").exists()
