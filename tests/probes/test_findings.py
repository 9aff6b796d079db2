"""`workbench report model` on the zoo's organism: the page's numbers are the probes' own (called directly from
Python), a bad model name or option fails clearly, and an interrupt leaves no half-written page."""

import json
import os
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import workbench
import workbench.probes.findings
import workbench.probes.findings_page
from workbench import probes
from workbench.atomic import OutputExistsError
from workbench.cli import app
from workbench.probes.entropy import entropy_profile
from workbench.probes.erank import head_output_erank, hidden_state_erank
from workbench.probes.findings import prose_inputs
from workbench.probes.heads import head_types
from workbench.probes.retrieval import retrieval_heads
from workbench.probes.sinks import secondary_sinks, sink_scores
from workbench.probes.sparsity import coverage
from workbench.zoo.organism import ioi_scores

runner = CliRunner()
OPTIONS = ["--text-tokens", "96", "--texts", "2", "--min-queries", "16", "--induction-length", "12",
           "--induction-batch", "2", "--retrieval-lengths", "96,128", "--retrieval-depths", "0.5", "--ioi-prompts", "6",
           "--block-size", "64"]
FIGURES = ["entropy.png", "erank.png", "induction.png", "retrieval.png", "sinks.png", "sparsity.png"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(out folder, the Findings the command computed) of one `workbench report model organism` run."""
    out = tmp_path_factory.mktemp("pages")
    seen = []
    real = probes.findings.compute_findings
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probes.findings, "compute_findings", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
        result = runner.invoke(app, ["report", "model", "organism", "--out", str(out), *OPTIONS])
    assert result.exit_code == 0, result.output
    return out, seen[0]


@pytest.fixture(scope="module")
def organism():
    return workbench.load("organism", device="cpu")


def rows(page: str, heading: str) -> list[list[str]]:
    """The cells of the first table under `heading`."""
    section = page.split(f"## {heading}\n", 1)[1]
    table = re.search(r"\n(\|.*\|\n)+", section).group(0).strip().splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table]


def test_page_figures_and_json_are_written_and_nothing_else(report):
    out, _ = report
    assert sorted(p.name for p in out.iterdir()) == ["organism", "organism.md"]
    assert sorted(p.name for p in (out / "organism").iterdir()) == sorted(FIGURES + ["findings.json"])
    page = (out / "organism.md").read_text()
    for name in FIGURES:
        assert f"(organism/{name})" in page
    command = "workbench report model organism --out " + str(out)
    assert page.count(f"*Reproduce:* `{command}") == 7  # every table and figure carries the command
    assert f"on {os.cpu_count()} CPU cores" in page
    assert "not run" in page and "--device cuda" in page  # the GPU section lists a command, not numbers


def test_page_numbers_equal_the_probes_called_directly(report, organism):
    out, findings = report
    page = (out / "organism.md").read_text()
    saved = json.loads((out / "organism" / "findings.json").read_text())
    inputs = prose_inputs(organism, 96, 2)
    t = workbench.trace(organism, inputs, stats=("sink_mass", "received", "entropy"), hidden_states=True)

    score = sink_scores(t, 0.3).arrays["sink_score"]
    np.testing.assert_allclose(saved["sections"]["text"]["results"]["sinks"]["arrays"]["sink_score"], score,
                               rtol=1e-9)
    hits = secondary_sinks(t, 5.0, 16).table
    hits = hits[hits.metric == "received_ratio"]
    for layer, row in enumerate(rows(page, "Attention sinks")):
        assert row[0] == str(layer) and row[2] == f"{np.nanmean(score[layer]):.3f}"
        assert row[3] == f"{(score[layer] > 0.3).mean():.2f}"
        n_hits = int((hits.layer == layer).sum())
        assert (row[5] == "none") if n_hits == 0 else row[5].startswith(f"{n_hits} in ")

    norm = entropy_profile(t).arrays["entropy_norm"]
    assert [r[2] for r in rows(page, "Entropy profile")] == [f"{np.nanmean(n):.3f}" for n in norm]

    hidden = hidden_state_erank(t).arrays["erank"]
    heads = head_output_erank(organism, inputs).arrays["erank"]
    table = rows(page, "Effective rank")
    assert [r[1] for r in table] == [f"{x:.1f}" for x in hidden]
    assert [r[2] for r in table[1:]] == [f"{x:.1f}" for x in heads.mean(axis=1)]

    blocks = workbench.trace(organism, inputs, stats=("block_mass",), block_size=64)
    kept = coverage(blocks).arrays["kept_fraction"]
    assert [r[1] for r in rows(page, "Block sparsity")] == [f"{k.mean():.3f}" for k in kept]

    induction = head_types(organism, 12, 2, 0).arrays["induction"]
    for row in rows(page, "Induction heads"):
        layer, head = map(int, re.fullmatch(r"L(\d+)\.H(\d+)", row[1]).groups())
        assert row[2] == f"{induction[layer, head]:.3f}"
    assert rows(page, "Induction heads")[0][2] == f"{induction.max():.3f}"

    retrieval = retrieval_heads(organism, (96, 128), (0.5,), range(1)).arrays["retrieval_score"]
    np.testing.assert_allclose(probes.findings.retrieval_scores(findings.sections["retrieval"]), retrieval,
                               atol=1e-12)

    ioi = ioi_scores(organism, n=6, seed=777)
    assert rows(page, "Indirect-object identification")[0] == [
        "6", f"{ioi['ioi_logit_diff']:.3f}", f"{ioi['ioi_accuracy']:.3f}"]


def test_bad_model_name_and_bad_options_fail_clearly(tmp_path):
    result = runner.invoke(app, ["report", "model", "no-such-model", "--out", str(tmp_path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "'no-such-model'" in text and "smollm2-135m" in text
    result = runner.invoke(app, ["report", "model", "organism", "--out", str(tmp_path), "--retrieval-lengths", "x"])
    assert result.exit_code == 2 and "--retrieval-lengths 'x'" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_computation_writes_no_page(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(probes.findings, "induction_section", interrupted)
    result = runner.invoke(app, ["report", "model", "organism", "--out", str(tmp_path), *OPTIONS])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert not any(tmp_path.iterdir())


def test_interrupted_rendering_keeps_the_previous_page(report, tmp_path, monkeypatch):
    _, findings = report
    page = probes.findings_page.write_page(findings, tmp_path, "workbench report model organism")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(probes.findings_page, "markdown", interrupted)
    with pytest.raises(OutputExistsError, match="--overwrite"):  # an existing page is replaced only when asked
        probes.findings_page.write_page(findings, tmp_path, "workbench report model organism")
    with pytest.raises(KeyboardInterrupt):
        probes.findings_page.write_page(findings, tmp_path, "workbench report model organism", overwrite=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and page.name in {p.name for p in tmp_path.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["organism", "organism.md"]
