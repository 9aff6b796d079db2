"""Sweeps split over 2 processes (gloo ranks, seen by accelerate's PartialState as a launcher's) equal the
one-process sweeps item for item: the ablation sweep, activation and path patching, the retrieval scan (whose
processes share one checkpoint); `workbench ablate` on 2 processes writes one report and one store run."""

import functools
import json

import numpy as np
import pandas as pd
from gloo_ranks import spawn
from tiny_models import build, tokenizer
from typer.testing import CliRunner

import workbench
from workbench import parallel
from workbench.cli import app
from workbench.interventions.sweep import ablation_sweep
from workbench.probes import tasks as T
from workbench.probes.circuits.patching import patch_heads
from workbench.probes.circuits.path_patching import path_patch
from workbench.probes.retrieval import retrieval_heads

EDGES = [("L0.H1", "L1.H0"), ("L0.H1", "L1.H3"), ("L1.H0", "logits"), ("input", "L1.H2"), ("L0.H0", "logits")]
GRID = dict(lengths=(56, 64), depths=(0.2, 0.5, 0.8), seeds=(0,))


@functools.cache
def subject():
    return workbench.load("induction-2l", device="cpu")


def _sweeps(checkpoint: str | None = None) -> dict:
    task = T.induction(subject(), n=4)
    llama = workbench.load(build("llama"), tokenizer=tokenizer(), device="cpu")
    return {"share": parallel.share(range(8)),
            **{mode: ablation_sweep(subject(), task, mode=mode) for mode in ("zero", "resample")},
            "patching": patch_heads(subject(), task).table,
            "path": path_patch(subject(), task, EDGES),
            "retrieval": retrieval_heads(llama, checkpoint=checkpoint, **GRID).arrays}


def _cli(folder: str) -> None:
    result = CliRunner().invoke(app, ["ablate", "-m", "induction-2l", "--task", "induction", "-n", "4",
                                      "--out", f"{folder}/report.html", "--store", f"{folder}/runs.duckdb"])
    assert result.exit_code == 0, result.output


def _ranks(folder: str) -> dict:
    """What each rank does (spawning ranks is the slow part, so one spawn serves every check): the sweeps, then
    `workbench ablate`."""
    sweeps = _sweeps(f"{folder}/needles.jsonl")
    _cli(folder)
    return sweeps


def test_two_process_sweeps_equal_one_process_and_write_one_run(tmp_path):
    ranks = spawn(_ranks, 2, tmp_path / "ranks", str(tmp_path))
    assert [got["share"] for got in ranks] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the work really is split
    want = _sweeps()
    for got in ranks:
        for mode in ("zero", "resample"):
            pd.testing.assert_frame_equal(got[mode].table, want[mode].table)
            for name, array in want[mode].arrays.items():
                np.testing.assert_array_equal(got[mode].arrays[name], array)
        pd.testing.assert_frame_equal(got["patching"], want["patching"])
        pd.testing.assert_frame_equal(got["path"], want["path"])
        for name, array in want["retrieval"].items():
            np.testing.assert_array_equal(got["retrieval"][name], array)
    rows = [json.loads(line) for line in (tmp_path / "needles.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({row["key"] for row in rows}) == 6  # each case once, whole lines
    with workbench.Store(tmp_path / "runs.duckdb") as db:
        runs = db.runs()
    assert len(runs) == 1 and runs.kind.tolist() == ["ablate"]
    assert (tmp_path / "report.html").is_file()
