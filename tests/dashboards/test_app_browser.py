"""The Dash app driven in a real headless Chromium (Debian's chromium + chromedriver, through Selenium).

One browser session walks the app as a user would: trace the zoo model `organism` on the sample paragraph,
read the overview heatmaps, click a head, read its view, ablate it, browse the store's runs, open a circuit
and click one of its heads. Every figure's numbers, read back from the browser's Plotly objects, are checked
against the same public API called here directly (probes, workbench.trace, interventions).
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from dashboards import browser
from dashboards.app import create_app
from interventions import ablate
from interventions.masking import document_loss
from probes.entropy import entropy_profile
from probes.heads import head_types
from probes.sinks import sink_scores
from workbench.cli_common import SAMPLE_TEXT

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=f"no headless browser: {browser.missing()}")

TIMEOUT = 90  # seconds any one step may take on a loaded 2-core machine


def _dom_id(element_id) -> str:
    """The DOM id Dash gives a component id (pattern-matching ids are JSON with sorted keys)."""
    return element_id if isinstance(element_id, str) else json.dumps(element_id, sort_keys=True, separators=(",", ":"))


def _wait(driver, condition, timeout=TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))


def _graph(driver, element_id):
    """The traces of a dcc.Graph as the browser holds them (None until it has data)."""
    return driver.execute_script("""
        const el = document.getElementById(arguments[0]);
        const gd = el && el.querySelector('.js-plotly-plot');
        if (!gd || !gd.data || !gd.data.length) return null;
        const row = r => (r != null && typeof r === 'object') ? Array.from(r) : r;
        const arr = v => v == null ? null : Array.from(v, row);
        return gd.data.map(t => ({name: t.name, mode: t.mode, x: arr(t.x), y: arr(t.y), z: arr(t.z),
                                  text: t.text ? Array.from(t.text) : null}));""", _dom_id(element_id))


def _wait_graph(driver, element_id, check=lambda data: True):
    return _wait(driver, lambda d: (lambda g: g if g and check(g) else None)(_graph(d, element_id)))


def _click_point(driver, element_id, x, y):
    """Click the plot of a dcc.Graph at data coordinates (x, y) with the mouse."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    px, py = driver.execute_script("""
        const gd = document.getElementById(arguments[0]).querySelector('.js-plotly-plot');
        gd.scrollIntoView({block: 'center'});
        const fl = gd._fullLayout, box = gd.getBoundingClientRect();
        return [box.left + fl._size.l + fl.xaxis.l2p(arguments[1]), box.top + fl._size.t + fl.yaxis.l2p(arguments[2])];
    """, _dom_id(element_id), x, y)
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(px), int(py))
    actions.pointer_action.click()
    actions.perform()


def _click(driver, element_id):
    from selenium.webdriver.common.by import By

    element = _wait(driver, lambda d: d.find_element(By.ID, element_id))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def _text(driver, element_id) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def _selected_tab(driver) -> str:
    return driver.execute_script("const t = document.querySelector('.tab--selected'); return t ? t.id : null;")


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
        _wait(driver, lambda d: _text(d, "status"))
        yield driver


def overview_id(metric):
    return {"type": "head-source", "page": "overview", "metric": metric}


def test_trace_click_a_head_ablate_it_and_browse_runs(page, subject, store):
    driver = page
    _click(driver, "run")
    _wait(driver, lambda d: "traced" in _text(d, "status-done"))
    assert re.match(r"organism: traced 128 tokens through 6 layers x 6 heads", _text(driver, "status-done"))

    # Overview: the heatmaps hold the probes' numbers.
    trace = workbench.trace(subject, SAMPLE_TEXT)
    want = {"sink_score": sink_scores(trace).head_matrix("sink_score"),
            "entropy_norm": entropy_profile(trace).head_matrix("entropy_norm")}
    types = head_types(subject, length=50)
    want.update(induction=types.head_matrix("induction"), prev_token=types.head_matrix("prev_token"))
    for metric, matrix in want.items():
        shown = np.array(_wait_graph(driver, overview_id(metric))[0]["z"], dtype=float)
        np.testing.assert_allclose(shown, matrix, atol=1e-6, err_msg=metric)
    retrieval = np.array(_wait_graph(driver, overview_id("retrieval_score"))[0]["z"], dtype=float)
    top = sorted(zip(*np.unravel_index(np.argsort(-retrieval, axis=None)[:2], retrieval.shape), strict=True))
    assert top == [(5, 2), (5, 3)] and retrieval[5, 2] > 0.9 and retrieval[5, 3] > 0.9  # the model card's heads

    # Clicking L5.H3 on the sink map opens its head view: the last 48 positions' map, received, entropy.
    _click_point(driver, overview_id("sink_score"), 3, 5)
    _wait(driver, lambda d: "L5.H3" in _text(d, "head-info"))
    assert _selected_tab(driver) == "tab-head"
    own = workbench.trace(subject, SAMPLE_TEXT, stats=("entropy", "received"), patterns=[(5, 3)],
                          pattern_window=(80, 128))
    pattern = np.array(_wait_graph(driver, "pattern")[0]["z"], dtype=float)
    np.testing.assert_allclose(pattern, own.patterns[(5, 3)][0].numpy(), atol=1e-6)
    assert pattern.shape == (48, 48) and np.all(pattern.sum(1) <= 1 + 1e-5)
    received = _wait_graph(driver, "received")[0]["y"]
    np.testing.assert_allclose(received, own.sequence("received")[5, 3].numpy(), atol=1e-5)
    entropy = _wait_graph(driver, "query-entropy")[0]["y"]
    np.testing.assert_allclose(entropy, own.sequence("entropy")[5, 3].numpy(), atol=1e-5)

    # Edit this head: zero-ablate it and read the next-token distributions and losses before and after.
    _click(driver, "edit-this-head")
    _wait(driver, lambda d: _selected_tab(d) == "tab-intervene")
    _click(driver, "apply")
    _wait(driver, lambda d: "after" in _text(d, "loss-values"))
    before, after = _wait_graph(driver, "next-token", lambda g: len(g) == 2)
    enc = subject.encode(SAMPLE_TEXT)
    with torch.no_grad():
        plain = torch.softmax(subject.model(**enc).logits[0, -1].float(), -1).numpy()
        with ablate(subject, [(5, 3)]):
            edited = torch.softmax(subject.model(**enc).logits[0, -1].float(), -1).numpy()
            loss_after = document_loss(subject, SAMPLE_TEXT)
    ids = list(dict.fromkeys(np.argsort(-plain)[:8].tolist() + np.argsort(-edited)[:8].tolist()))
    tok = subject.tokenizer
    tokens = [repr(tok.convert_tokens_to_string(tok.convert_ids_to_tokens([i]))) for i in ids]
    assert before["x"] == tokens and after["x"] == tokens
    np.testing.assert_allclose(before["y"], plain[ids], atol=1e-6)
    np.testing.assert_allclose(after["y"], edited[ids], atol=1e-6)
    assert np.abs(edited - plain).max() > 1e-4  # the ablation changed the prediction
    loss = _text(driver, "loss-values")
    assert f"{document_loss(subject, SAMPLE_TEXT):.4f} before" in loss and f"{loss_after:.4f} after" in loss

    # Runs: the app's trace is in the store; selecting it draws its per-head table.
    _click(driver, "tab-runs")
    checkbox = "#runs-select input[type=checkbox]"
    _wait(driver, lambda d: d.execute_script(f"return document.querySelectorAll('{checkbox}').length") >= 1)
    driver.execute_script(f"document.querySelector('{checkbox}').click();")
    shown = np.array(_wait_graph(driver, "runs-figure", lambda g: g[0].get("z"))[0]["z"], dtype=float)
    with workbench.Store(store) as db:
        runs = db.runs()
        assert runs.kind.tolist() == ["trace"] and runs.model_id.tolist() == ["organism"]
        table = db.head_metrics(runs.run_id[0])
    entropy_means = table[table.metric == "entropy"].pivot_table(index="layer", columns="head", values="value")
    np.testing.assert_allclose(shown, entropy_means.to_numpy(), atol=1e-9)


def test_a_circuit_from_the_store_opens_its_heads(page, store, write_circuit):
    from selenium.webdriver.common.by import By

    driver = page
    folder = write_circuit("found")
    with workbench.Store(store) as db:
        db.write_run("circuit", "organism", pd.DataFrame(columns=["layer", "head", "metric", "value"]),
                     trace_dir=folder)
    _click(driver, "tab-circuits")
    _click(driver, "circuit-run")
    option = _wait(driver, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                      if "organism" in o.text])
    option[0].click()
    graph = {"type": "head-source", "page": "circuits", "metric": "circuit"}
    data = _wait_graph(driver, graph, lambda g: any(t["name"] == "head" for t in g))
    heads = next(t for t in data if t["name"] == "head")
    assert len(heads["text"]) == 36
    assert "heads in the circuit: L2.H1, L5.H2, L5.H3" in _text(driver, "circuit-info")
    _click_point(driver, graph, 5, -2)  # the node L5.H2
    _wait(driver, lambda d: "L5.H2" in _text(d, "head-info"))
    assert _selected_tab(driver) == "tab-head"
