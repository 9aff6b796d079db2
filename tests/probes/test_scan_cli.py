"""`workbench scan` end to end on a tiny saved model: exit code, Parquet files, and the store run's numbers
equal to the probe called from Python."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import workbench
from workbench.cli import app
from workbench.probes.heads import head_types

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


def test_scan_sparsity_writes_its_tables_and_the_budget_sweep(tmp_path):
    """organism on 300 tokens in blocks of 64, with the loss task at two budgets: the tables equal the probes
    called from Python, the store holds the per-head rows."""
    from workbench import zoo
    from workbench.probes.sparsity import coverage

    text = (zoo.model_dir("organism") / "heldout.txt").read_text()[:1500]
    out, db = tmp_path / "out", tmp_path / "runs.duckdb"
    result = runner.invoke(app, ["scan", "sparsity", "--model", "organism", "--text", text, "--block-size", "64",
                                 "--task", "loss", "--examples", "2", "--budgets", "1,0.5", "--out", str(out),
                                 "--store", str(db)])
    assert result.exit_code == 0, result.output
    for name in ("coverage", "head_groups", "layer_similarity", "sparsity_sweep"):
        assert (out / f"{name}.parquet").is_file(), name
    subject = workbench.load("organism")
    want = coverage(workbench.trace(subject, text, stats=("block_mass",), block_size=64), 0.9, (1, 4, 16)).table
    pd.testing.assert_frame_equal(pd.read_parquet(out / "coverage.parquet"), want)
    sweep = pd.read_parquet(out / "sparsity_sweep.parquet")
    assert sorted(sweep.kept_fraction.unique()) == [0.5, 1.0]
    with workbench.Store(db) as store:
        stored = store.head_metrics(store.runs().run_id[0])
    assert {"blocks_for_gamma", "own_missed_mass", "proxy_missed_mass", "next_layer_similarity"} <= set(stored.metric)


@pytest.mark.parametrize("args, message", [(["--block-size", "32"], "block_size 32"),
                                           (["--budgets", "0,0.5"], "kept fraction must be above 0"),
                                           (["--top-k", "0"], "--top-k 0 is below 1")])
def test_scan_sparsity_refuses_bad_options_before_loading(args, message, tmp_path):
    result = runner.invoke(app, ["scan", "sparsity", "--model", str(tmp_path / "missing"), "--text", "x", *args,
                                 "--no-store"])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
