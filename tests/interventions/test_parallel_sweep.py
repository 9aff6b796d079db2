"""An ablation sweep split over 2 processes (gloo ranks, seen by accelerate's PartialState as a launcher's) equals
the one-process sweep head for head, and `workbench ablate` on 2 processes writes one report and one store run."""

import functools

import numpy as np
import pandas as pd
from gloo_ranks import spawn
from typer.testing import CliRunner

import workbench
from workbench import parallel
from workbench.cli import app
from workbench.interventions.sweep import ablation_sweep
from workbench.probes import tasks as T


@functools.cache
def subject():
    return workbench.load("induction-2l", device="cpu")


def _sweeps() -> dict:
    task = T.induction(subject(), n=4)
    return {"share": parallel.share(range(8)),
            **{mode: ablation_sweep(subject(), task, mode=mode) for mode in ("zero", "resample")}}


def _cli(folder: str) -> None:
    result = CliRunner().invoke(app, ["ablate", "-m", "induction-2l", "--task", "induction", "-n", "4",
                                      "--out", f"{folder}/report.html", "--store", f"{folder}/runs.duckdb"])
    assert result.exit_code == 0, result.output


def _ranks(folder: str) -> dict:
    """What each rank does (spawning ranks is the slow part, so one spawn serves both checks): the sweeps, then
    `workbench ablate`."""
    sweeps = _sweeps()
    _cli(folder)
    return sweeps


def test_two_process_ablation_sweep_equals_one_process_and_writes_one_run(tmp_path):
    ranks = spawn(_ranks, 2, tmp_path / "ranks", str(tmp_path))
    assert [got["share"] for got in ranks] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the work really is split
    want = _sweeps()
    for got in ranks:
        for mode in ("zero", "resample"):
            one = want[mode]
            pd.testing.assert_frame_equal(got[mode].table, one.table)
            for name, array in one.arrays.items():
                np.testing.assert_array_equal(got[mode].arrays[name], array)
    with workbench.Store(tmp_path / "runs.duckdb") as db:
        runs = db.runs()
    assert len(runs) == 1 and runs.kind.tolist() == ["ablate"]
    assert (tmp_path / "report.html").is_file()
