"""Jupyter's rich display of a Trace and of a probe's Result."""

import re

import numpy as np
from tiny_models import build, token_ids

import workbench
from workbench.display import heat_map
from workbench.probes.sinks import sink_scores


def cell_values(page: str, metric: str) -> dict[tuple[int, int], float]:
    """The values in the tooltips of the heat map titled `metric`."""
    block = page.split(f">{metric} (layers down")[1].split("</table>")[0]
    return {(int(l), int(h)): float(v) for l, h, v in re.findall(r'title="L(\d+)\.H(\d+): ([-\d.e]+)"', block)}


def test_a_traces_html_shows_its_facts_and_every_heads_mean():
    subject = workbench.load(build("llama"))
    trace = workbench.trace(subject, token_ids(2, 12))
    page = trace._repr_html_()
    assert "LlamaForCausalLM" in page and "2 x 4" in page and "received" in page and "per layer" in page
    table = trace.head_table()
    want = {(r.layer, r.head): r.value for r in table[table.metric == "sink_mass"].itertuples()}
    got = cell_values(page, "sink_mass")
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) <= 1e-3 * abs(want[k]) for k in want)


def test_a_results_html_shows_its_map_and_top_heads():
    subject = workbench.load(build("llama"))
    result = sink_scores(workbench.trace(subject, token_ids(1, 12), stats=("sink_mass",)))
    page = result._repr_html_()
    assert page.count("<table") >= 2 and "top heads by sink_score" in page
    assert len(cell_values(page, "sink_score")) == 8


def test_nan_cells_are_blank_and_constant_maps_do_not_divide_by_zero():
    page = heat_map(np.array([[1.0, np.nan], [1.0, 1.0]]), "m")
    assert page.count("title=") == 3 and "nan" not in page.lower()
