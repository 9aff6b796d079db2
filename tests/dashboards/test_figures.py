"""The app's figures and circuit reading, without a browser: the numbers drawn are the numbers given."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import workbench
from workbench.dashboards import figures
from workbench.dashboards.circuits import circuit_runs, read_circuit
from workbench.errors import WorkbenchError


def test_head_heatmap_carries_values_and_heads():
    matrix = np.arange(12, dtype=float).reshape(3, 4) / 10
    matrix[1, 2] = np.nan
    trace = figures.head_heatmap(matrix, "t", "organism").data[0]
    assert list(trace.z[0]) == [0.0, 0.1, 0.2, 0.3] and trace.z[1][2] is None
    assert list(trace.x) == [0, 1, 2, 3] and list(trace.y) == [0, 1, 2] and trace.name == "organism"


def test_pattern_figure_labels_positions_and_checks_shape():
    pattern = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]
    fig = figures.pattern_figure(pattern, ["a", "a", "b"], 10, "map")
    assert list(fig.data[0].x) == ["10:a", "11:a", "12:b"]  # repeated tokens stay distinct categories
    np.testing.assert_allclose(np.array(fig.data[0].z, dtype=float), pattern)
    with pytest.raises(ValueError, match="does not match 2 tokens"):
        figures.pattern_figure(pattern, ["a", "b"], 0, "map")


def test_next_token_figure_puts_before_and_after_side_by_side():
    fig = figures.next_token_figure(["x", " y"], np.array([0.7, 0.2]), np.array([0.1, 0.8]), "edit")
    before, after = fig.data
    assert before.xaxis == "x" and after.xaxis == "x2"
    assert list(before.x) == ["'x'", "' y'"] and list(after.y) == [0.1, 0.8]


def test_read_circuit_follows_the_schema(write_circuit):
    circuit = read_circuit(write_circuit())
    assert (circuit.model_id, circuit.n_heads, circuit.faithfulness) == ("organism", 6, 0.9)
    assert sorted(circuit.heads()) == [(2, 1), (5, 2), (5, 3)]
    positions = figures.circuit_positions(circuit)
    assert positions["input"][0] == -1 and positions["logits"][0] == 6 and positions["L5.H3"] == (5.0, -3.0)


@pytest.mark.parametrize("changes, message", [
    ({"format": 2}, "format 2"),
    ({"nodes": [{"id": "X", "kind": "attention", "layer": 0, "head": 0, "score": 1, "in_circuit": True}]},
     "kind 'attention'"),
    ({"nodes": [{"id": "L0.H1", "kind": "head", "layer": 0, "head": 2, "score": 1, "in_circuit": True}],
      "edges": []}, "does not match"),
    ({"edges": [{"source": "input", "target": "L9.H9", "score": 1.0, "in_circuit": True}]}, "L9.H9"),
])
def test_read_circuit_names_what_is_wrong(write_circuit, changes, message):
    with pytest.raises(WorkbenchError, match=message):
        read_circuit(write_circuit(**changes))


def test_read_circuit_rejects_missing_and_broken_files(tmp_path):
    with pytest.raises(WorkbenchError, match="no circuit file"):
        read_circuit(tmp_path)
    (tmp_path / "circuit.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        read_circuit(tmp_path)


def test_circuit_figure_draws_nodes_and_hides_other_edges(write_circuit):
    circuit = read_circuit(write_circuit())
    full, only = figures.circuit_figure(circuit), figures.circuit_figure(circuit, only_circuit=True)
    heads = next(t for t in full.data if t.name == "head")
    assert len(heads.x) == 36 and ["L5.H3"] == [t for t in heads.text if t == "L5.H3"]
    assert list(heads.customdata[heads.text.index("L5.H3")]) == [5, 3, "organism"]
    lines = lambda fig: [t for t in fig.data if t.mode == "lines"]  # noqa: E731
    assert len(lines(full)) == len(circuit.edges) and len(lines(only)) == len(circuit.edges) - 1
    assert len(next(t for t in only.data if t.name == "head").x) == 3


def test_circuit_runs_lists_store_runs_whose_file_exists(write_circuit, tmp_path):
    db = tmp_path / "store.duckdb"
    empty = pd.DataFrame(columns=["layer", "head", "metric", "value"])
    with workbench.Store(db) as store:
        kept = store.write_run("circuit", "organism", empty, trace_dir=write_circuit("a"))
        store.write_run("circuit", "organism", empty, trace_dir=tmp_path / "gone")
        store.write_run("trace", "organism", empty, trace_dir=write_circuit("b"))
    runs = circuit_runs(db)
    assert runs.run_id.tolist() == [kept]
    assert json.loads(open(runs.path[0]).read())["format"] == 1


def test_runs_figure_puts_runs_side_by_side_on_one_scale():
    table = lambda v: pd.DataFrame({"layer": [0, 0, 1, 1, -1], "head": [0, 1, 0, 1, -1],  # noqa: E731
                                    "metric": "m", "value": [*v, 9.0]})
    fig = figures.runs_figure({"a": table([0.0, 1.0, 2.0, 3.0]), "b": table([4.0, 5.0, 6.0, 7.0])}, "m")
    assert [list(map(list, t.z)) for t in fig.data] == [[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]]
    assert figures.runs_figure({"a": table([0.0] * 4)}, "other").layout.annotations[0].text.startswith("no per-head")


def test_the_cli_imports_dash_only_when_the_app_starts():
    code = ("import sys, workbench.cli; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'dash' or m.startswith('workbench.dashboards')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sequence_figure_draws_each_statistic_of_each_head_along_the_text():
    tokens = [f"t{i}" for i in range(40_000)]  # a long text: WebGL lines, no per-token categories
    series = {"received": {"L1.H0": np.linspace(0, 1, 40_000), "L2.H3": np.ones(40_000)},
              "entropy": {"L1.H0": np.full(40_000, 2.0), "L2.H3": np.zeros(40_000)}}
    fig = figures.sequence_figure(series, tokens, "along the text")
    assert [t.type for t in fig.data] == ["scattergl"] * 4
    assert [t.name for t in fig.data] == ["L1.H0", "L2.H3"] * 2 and [t.showlegend for t in fig.data] == [True, True,
                                                                                                     False, False]
    np.testing.assert_allclose(fig.data[0].y, series["received"]["L1.H0"])
    assert fig.data[2].yaxis == "y2" and fig.layout.dragmode == "zoom"
    with pytest.raises(ValueError, match="3 values for 40000 tokens"):
        figures.sequence_figure({"entropy": {"h": np.zeros(3)}}, tokens, "x")


def test_query_figure_places_keys_at_their_positions():
    fig = figures.query_figure(np.array([0.5, 0.25, 0.25]), ["a", "b", "c"], 7, 9, "q")
    assert list(fig.data[0].x) == [7, 8, 9] and list(fig.data[0].y) == [0.5, 0.25, 0.25]
    with pytest.raises(ValueError):
        figures.query_figure(np.array([1.0]), ["a"], 7, 9, "q")


def test_whitespace_tokens_get_visible_labels_and_the_map_says_what_the_window_hides():
    assert figures.token_labels([" ", "\n", "\t\t", "", " the", "Ġ"]) == ["␣", "↵", "⇥⇥", "∅", " the", "Ġ"]
    pattern = np.array([[0.5, 0.0], [0.2, 0.3]])  # rows hold half of their attention: the rest is before the window
    fig = figures.pattern_figure(pattern, ["a", "b"], 7, "map")
    assert "50% of each row" in fig.data[0].colorbar.title.text and "before 7" in fig.data[0].colorbar.title.text
    np.testing.assert_allclose(np.array(fig.data[0].customdata, dtype=float), [[0.5, 0.5], [0.5, 0.5]])
    whole = figures.pattern_figure(np.tril(np.ones((2, 2))) / [[1], [2]], ["a", "b"], 0, "map")
    assert whole.data[0].colorbar.title.text == "attention p"  # a window from position 0 hides nothing
