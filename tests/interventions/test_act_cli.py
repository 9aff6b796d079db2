"""`workbench scan act`: ACT's head search from the command line equals the Python call, and is stored."""

import numpy as np
from typer.testing import CliRunner

import workbench
from workbench.cli import app
from workbench.interventions.calibration import search_heads
from workbench.probes.tasks import load_task


def test_scan_act_stores_what_the_search_finds(tiny_folder, tmp_path):
    out, db = tmp_path / "out", tmp_path / "runs.duckdb"
    args = ["scan", "act", "--model", str(tiny_folder), "--task", "induction", "-n", "3", "--out", str(out),
            "--store", str(db)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "act_heads.parquet").is_file()
    subject = workbench.load(str(tiny_folder))
    pairs = [(list(e.clean), [e.answer]) for e in load_task(subject, "induction", n=3).examples]
    want = search_heads(subject, pairs).head_metrics()
    with workbench.Store(db) as store:
        stored = store.head_metrics(store.runs().run_id[0])
    merged = stored.merge(want, on=["layer", "head", "metric"], suffixes=("", "_want"))
    assert len(merged) == len(want) > 1
    np.testing.assert_allclose(merged.value, merged.value_want, atol=1e-9)
    refused = CliRunner().invoke(app, ["scan", "act", "--model", str(tiny_folder), "--task", "loss", "--no-store",
                                       "--out", str(tmp_path / "other")])
    assert refused.exit_code == 2 and "no answers" in refused.output
