"""`workbench ablate` end to end: the induction circuit of induction-2l ranks first, the HTML report's figure
holds the JSON's numbers, the Parquet tables and the store run agree with it; bad options are clear errors."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import workbench
from workbench.cli import app

runner = CliRunner()


def plotly_data(page: str) -> dict[str, list]:
    """div id -> the trace list passed to Plotly.newPlot in the page."""
    decoder, out = json.JSONDecoder(), {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        out[match.group(1)], _ = decoder.raw_decode(page, match.end())
    return out


@pytest.fixture(scope="module")
def induction_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ablate")
    result = runner.invoke(app, ["ablate", "--model", "induction-2l", "--task", "induction", "-n", "32",
                                 "--out", str(folder / "report.html"), "--store", str(folder / "runs.duckdb")])
    assert result.exit_code == 0, result.output
    return folder, json.loads((folder / "report.json").read_text())


def test_ablating_the_induction_circuit_ranks_it_first(induction_report):
    _, data = induction_report
    ranked = [(r["layer"], r["head"]) for r in data["ranking"]]
    # model card: previous-token head L0.H1, induction heads L1.H0-H3; the other layer-0 heads do not matter
    assert ranked[0] == (0, 1)
    assert set(ranked[1:5]) == {(1, 0), (1, 1), (1, 2), (1, 3)}
    assert data["ranking"][0]["importance"] > 5 * data["ranking"][1]["importance"] > 0
    assert all(r["importance"] < 0.05 * data["ranking"][0]["importance"] for r in data["ranking"][5:])


def test_the_report_renders_the_json_numbers(induction_report):
    folder, data = induction_report
    page = (folder / "report.html").read_text()
    assert "<script src" not in page and "plotly.js v" in page.lower()  # JS inlined: opens offline
    figures = plotly_data(page)
    heat = figures["heatmap"][0]
    np.testing.assert_allclose(np.array(heat["z"], dtype=float), np.array(data["matrix"], dtype=float))
    assert heat["y"] == ["L0", "L1"] and heat["x"] == ["H0", "H1", "H2", "H3"]
    top = [f"L{r['layer']}.H{r['head']}" for r in data["ranking"][:8]]
    per_example = figures["examples"][0]
    assert per_example["y"] == top
    np.testing.assert_allclose(per_example["z"], [[ex["delta"][h] for ex in data["examples"]] for h in top])
    assert data["command"] in page.replace("&#x27;", "'") and "induction-2l" in page
    # the matrix is the mean per-example change, and the Parquet tables hold the same numbers
    examples = pd.read_parquet(folder / "report_examples.parquet")
    means = examples.groupby(["layer", "head"]).delta.mean()
    for (layer, head), value in means.items():
        assert data["matrix"][layer][head] == pytest.approx(value, abs=1e-9)
    table = pd.read_parquet(folder / "report.parquet")
    importance = table[table.metric == "importance"].set_index(["layer", "head"]).value
    for row in data["ranking"]:
        assert importance[(row["layer"], row["head"])] == pytest.approx(row["importance"], abs=1e-12)
    with workbench.Store(folder / "runs.duckdb") as store:
        runs = store.runs()
        assert runs.kind.tolist() == ["ablate"]
        stored = store.head_metrics(runs.run_id[0])
    stored = stored[stored.metric == "importance"].set_index(["layer", "head"]).value
    pd.testing.assert_series_equal(stored.sort_index(), importance.sort_index(), check_names=False,
                                   check_index_type=False)


def test_a_jsonl_task_with_mean_ablation_of_chosen_heads(tiny_folder, tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"clean": "The secret code is", "answer": " 12", "wrong": " 34"}) + "\n")
    result = runner.invoke(app, ["ablate", "--model", str(tiny_folder), "--task", str(path), "--heads", "0.1,1.3",
                                 "--mode", "mean", "--out", str(tmp_path / "r.html"), "--no-store"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert {(r["layer"], r["head"]) for r in data["ranking"]} == {(0, 1), (1, 3)}
    assert sum(v is not None for row in data["matrix"] for v in row) == 2


@pytest.mark.parametrize("args, message", [
    (["--heads", "1.x"], "bad head '1.x'"),
    (["--heads", "2.0"], "head (2, 0) does not exist"),
    (["--task", "iio"], "unknown task 'iio'"),
    (["--task", "missing.jsonl"], "does not exist"),
    (["--mode", "median"], "unknown ablation mode 'median'"),
])
def test_bad_options_are_clear_errors(tiny_folder, tmp_path, args, message):
    result = runner.invoke(app, ["ablate", "--model", str(tiny_folder), *args, "--out", str(tmp_path / "r.html"),
                                 "--no-store"])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "r.html").exists()
