"""The Dash app driven in a real headless Chromium (Debian's chromium + chromedriver, through Selenium).

One browser session walks the app as a user would: trace the zoo model `organism` on the sample paragraph,
read the overview heatmaps, click a head, read its view, ablate it, browse the store's runs, open a circuit
and click one of its heads. Every figure's numbers, read back from the browser's Plotly objects, are checked
against the same public API called here directly (probes, workbench.trace, interventions).
"""

import json
import random
import re

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from workbench.dashboards import browser
from workbench.dashboards.app import create_app
from workbench.dashboards.browser import choose, click, click_point, selected_tab, text, wait, wait_graph
from workbench.interventions import ablate
from workbench.interventions.masking import document_loss
from workbench.probes.entropy import entropy_profile
from workbench.probes.heads import head_types
from workbench.probes.sinks import sink_scores
from workbench import zoo
from workbench.samples import SAMPLE_TEXT
from workbench.zoo import tasks

CARD = json.loads((zoo.model_dir("organism") / "metrics.json").read_text())  # the model card's measurements
RETRIEVAL = sorted((layer, head) for layer, head, score in CARD["retrieval_top_heads"] if score > 0.9)
HEAD = tuple(CARD["retrieval_top_heads"][0][:2])  # the card's strongest retrieval head, opened and ablated

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=f"no headless browser: {browser.missing()}")

@pytest.fixture(scope="module")
def subject():
    return workbench.load("organism")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("app-store") / "runs.duckdb"


@pytest.fixture(scope="module")
def page(store):
    with browser.served(create_app("organism", store)) as url, browser.chromium() as driver:
        driver.get(url)
        wait(driver, lambda d: text(d, "status"))
        yield driver


def overview_id(metric):
    return {"type": "head-source", "page": "overview", "metric": metric}


def test_trace_click_a_head_ablate_it_and_browse_runs(page, subject, store):
    driver = page
    click(driver, "run")
    wait(driver, lambda d: "traced" in text(d, "status-done"))
    n_tokens = subject.encode(SAMPLE_TEXT)["input_ids"].shape[1]  # <|bos|> and the paragraph
    assert re.match(rf"organism: traced {n_tokens} tokens through 6 layers x 6 heads", text(driver, "status-done"))

    # Overview: the heatmaps hold the probes' numbers.
    trace = workbench.trace(subject, SAMPLE_TEXT)
    want = {"sink_score": sink_scores(trace).head_matrix("sink_score"),
            "entropy_norm": entropy_profile(trace).head_matrix("entropy_norm")}
    types = head_types(subject, length=50)
    want.update(induction=types.head_matrix("induction"), prev_token=types.head_matrix("prev_token"))
    for metric, matrix in want.items():
        shown = np.array(wait_graph(driver, overview_id(metric))[0]["z"], dtype=float)
        np.testing.assert_allclose(shown, matrix, atol=1e-6, err_msg=metric)
    retrieval = np.array(wait_graph(driver, overview_id("retrieval_score"))[0]["z"], dtype=float)
    top = sorted(zip(*np.unravel_index(np.argsort(-retrieval, axis=None)[:len(RETRIEVAL)], retrieval.shape),
                     strict=True))
    assert len(RETRIEVAL) >= 2 and top == RETRIEVAL  # the model card's retrieval heads, found again by the app
    assert all(retrieval[h] > 0.9 for h in RETRIEVAL) and np.sort(retrieval, axis=None)[-len(RETRIEVAL) - 1] < 0.5

    # Clicking the card's retrieval head on the sink map opens its head view: the last 48 positions' map and
    # the per-position view (received, sink mass, entropy) of the whole text.
    name = f"L{HEAD[0]}.H{HEAD[1]}"
    click_point(driver, overview_id("sink_score"), HEAD[1], HEAD[0])
    wait(driver, lambda d: name in text(d, "head-info"))
    assert selected_tab(driver) == "tab-head"
    own = workbench.trace(subject, SAMPLE_TEXT, stats=("entropy", "received"), patterns=[HEAD],
                          pattern_window=(n_tokens - 48, n_tokens))
    pattern = np.array(wait_graph(driver, "pattern")[0]["z"], dtype=float)
    np.testing.assert_allclose(pattern, own.patterns[HEAD][0].numpy(), atol=1e-6)
    assert pattern.shape == (48, 48) and np.all(pattern.sum(1) <= 1 + 1e-5)
    sequence = wait_graph(driver, "sequence")  # received, sink mass, entropy of the head along the whole text
    np.testing.assert_allclose(sequence[0]["y"], own.sequence("received")[HEAD].numpy(), atol=1e-5)
    np.testing.assert_allclose(sequence[2]["y"], own.sequence("entropy")[HEAD].numpy(), atol=1e-5)
    # Clicking a position of the per-position view shows that query's attention over the keys that end at it.
    query = n_tokens // 2
    click_point(driver, "sequence", query, sequence[0]["y"][query])
    window = wait_graph(driver, "query-window", lambda data: data and data[0].get("x"))
    assert window[0]["x"][-1] == query and len(window[0]["x"]) == min(query + 1, 256)
    full = workbench.trace(subject, SAMPLE_TEXT, stats=(), patterns=[HEAD])
    np.testing.assert_allclose(window[0]["y"], full.patterns[HEAD][0, query, :query + 1].numpy(), atol=1e-6)

    # Edit this head: zero-ablate it and read the next-token distributions and losses before and after.
    click(driver, "edit-this-head")
    wait(driver, lambda d: selected_tab(d) == "tab-intervene")
    click(driver, "apply")
    wait(driver, lambda d: "after" in text(d, "loss-values"))
    before, after = wait_graph(driver, "next-token", lambda g: len(g) == 2)
    enc = subject.encode(SAMPLE_TEXT)
    with torch.no_grad():
        plain = torch.softmax(subject.model(**enc).logits[0, -1].float(), -1).numpy()
        with ablate(subject, [HEAD]):
            edited = torch.softmax(subject.model(**enc).logits[0, -1].float(), -1).numpy()
            loss_after = document_loss(subject, SAMPLE_TEXT)
    ids = list(dict.fromkeys(np.argsort(-plain)[:8].tolist() + np.argsort(-edited)[:8].tolist()))
    tok = subject.tokenizer
    tokens = [repr(tok.convert_tokens_to_string(tok.convert_ids_to_tokens([i]))) for i in ids]
    assert before["x"] == tokens and after["x"] == tokens
    np.testing.assert_allclose(before["y"], plain[ids], atol=1e-6)
    np.testing.assert_allclose(after["y"], edited[ids], atol=1e-6)
    assert np.abs(edited - plain).max() > 1e-4  # the ablation changed the prediction
    loss = text(driver, "loss-values")
    assert f"{document_loss(subject, SAMPLE_TEXT):.4f} before" in loss and f"{loss_after:.4f} after" in loss

    # Runs: the app's trace is in the store; selecting it draws its per-head table.
    click(driver, "tab-runs")
    checkbox = "#runs-select input[type=checkbox]"
    wait(driver, lambda d: d.execute_script(f"return document.querySelectorAll('{checkbox}').length") >= 1)
    driver.execute_script(f"document.querySelector('{checkbox}').click();")
    shown = np.array(wait_graph(driver, "runs-figure", lambda g: g[0].get("z"))[0]["z"], dtype=float)
    with workbench.Store(store) as db:
        runs = db.runs()
        assert runs.kind.tolist() == ["trace"] and runs.model_id.tolist() == ["organism"]
        table = db.head_metrics(runs.run_id[0])
    entropy_means = table[table.metric == "entropy"].pivot_table(index="layer", columns="head", values="value")
    np.testing.assert_allclose(shown, entropy_means.to_numpy(), atol=1e-9)


def test_a_circuit_from_the_store_opens_its_heads(page, store, write_circuit):
    driver = page
    folder = write_circuit("found")
    with workbench.Store(store) as db:
        db.write_run("circuit", "organism", pd.DataFrame(columns=["layer", "head", "metric", "value"]),
                     trace_dir=folder)
    click(driver, "tab-circuits")
    choose(driver, "circuit-run", "organism")
    graph = {"type": "head-source", "page": "circuits", "metric": "circuit"}
    data = wait_graph(driver, graph, lambda g: any(t["name"] == "head" for t in g))
    heads = next(t for t in data if t["name"] == "head")
    assert len(heads["text"]) == 36
    assert "heads in the circuit: L2.H1, L5.H2, L5.H3" in text(driver, "circuit-info")
    click_point(driver, graph, 5, -2)  # the node L5.H2
    wait(driver, lambda d: "L5.H2" in text(d, "head-info"))
    assert selected_tab(driver) == "tab-head"


def test_a_built_in_task_fills_the_text(page):
    driver = page
    choose(driver, "task", "indirect object")
    want = tasks.ioi_prompt(random.Random(0)).text
    wait(driver, lambda d: d.find_element("id", "text").get_attribute("value") == want)
    assert "filled in" in text(driver, "status")
