"""`workbench scan` end to end on a tiny saved model: exit code, Parquet files, and the store run's numbers
equal to the probe called from Python."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import workbench
from workbench.probes.heads import head_types
from workbench.cli import app

runner = CliRunner()
SHORT = "He wound the clockwork and trimmed the wick. He wound the clockwork again."


@pytest.mark.parametrize("probe, args, files", [
    ("sinks", ["--text", SHORT], ["sinks.parquet", "secondary_sinks.parquet", "massive_activations.parquet"]),
    ("entropy", ["--text", SHORT, "--window", "4"], ["entropy.parquet", "local_global.parquet"]),
    ("erank", ["--text", SHORT], ["erank_hidden.parquet", "erank_heads.parquet"]),
    ("heads", ["--length", "10", "--batch", "2"], ["heads.parquet"]),
])
def test_scan_writes_tables_and_a_store_run(probe, args, files, tiny_folder, tmp_path):
    out, db = tmp_path / "out", tmp_path / "runs.duckdb"
    result = runner.invoke(app, ["scan", probe, "--model", str(tiny_folder), *args, "--out", str(out),
                                 "--store", str(db)])
    assert result.exit_code == 0, result.output
    for name in files:
        assert (out / name).is_file(), name
    with workbench.Store(db) as store:
        runs = store.runs()
        assert runs.kind.tolist() == [f"scan:{probe}"]
        stored = store.head_metrics(runs.run_id[0])
    assert len(stored) > 0
    if probe == "heads":
        want = head_types(workbench.load(str(tiny_folder)), 10, 2).table
        merged = stored.merge(want, on=["layer", "head", "metric"], suffixes=("", "_want"))
        assert len(merged) == len(want)
        np.testing.assert_allclose(merged.value, merged.value_want, atol=1e-12)
        pd.testing.assert_frame_equal(pd.read_parquet(out / "heads.parquet"), want)


def test_scan_retrieval_resumes_from_its_checkpoint(tiny_folder, tmp_path):
    args = ["scan", "retrieval", "--model", str(tiny_folder), "--lengths", "56", "--depths", "0.5",
            "--out", str(tmp_path), "--no-store"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len((tmp_path / "needles.jsonl").read_text().splitlines()) == 1
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and len((tmp_path / "needles.jsonl").read_text().splitlines()) == 1


def test_scan_reports_bad_input(tmp_path):
    result = runner.invoke(app, ["scan", "sinks", "--model", str(tmp_path / "missing"), "--no-store"])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())
