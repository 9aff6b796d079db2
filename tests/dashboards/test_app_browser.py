"""The Dash app driven in a real headless Chromium (Debian's chromium + chromedriver, through Selenium).

One browser session walks the app as a user would: open it on a fresh store, trace the zoo model `organism` on
the sample paragraph, read the overview heatmaps, click a head, read its view, ablate it, browse the store's
runs, open a circuit and click one of its heads, change the text without tracing it, trace a long text, move
the head view's window, ask for a text longer than the model's context, cancel a trace. Every figure's numbers,
read back from the browser's Plotly objects, are checked against the same public API called here directly
(probes, workbench.trace, interventions). No step may answer a server error.
"""

import json
import random
import re

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from workbench import zoo
from workbench.dashboards import browser
from workbench.dashboards.app import session_app
from workbench.dashboards.browser import (
    choose,
    click,
    click_point,
    graph_note,
    selected_tab,
    server_errors,
    text,
    type_text,
    wait,
    wait_graph,
)
from workbench.dashboards.session import Session
from workbench.interventions import ablate
from workbench.interventions.masking import document_loss
from workbench.probes.entropy import entropy_profile
from workbench.probes.heads import head_types
from workbench.probes.sinks import sink_scores
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
def session(store):
    return Session("organism", store)


@pytest.fixture(scope="module")
def page(session):
    with browser.served(session_app(session)) as url, browser.chromium() as driver:
        driver.get(url)
        wait(driver, lambda d: text(d, "status"))
        yield driver
        assert server_errors(driver) == []


@pytest.fixture(autouse=True)
def no_server_error(page):
    """Every test ends without a request the app answered with a server error."""
    yield
    assert server_errors(page) == []


def runs_of(store, kind="trace"):
    """The store's run ids of `kind`, newest first."""
    with workbench.Store(store) as db:
        runs = db.runs()
    return runs[runs.kind == kind].run_id.tolist()


def overview_id(metric):
    return {"type": "head-source", "page": "overview", "metric": metric}


def test_a_fresh_store_says_what_fills_each_page(page):
    driver = page
    for metric in ("sink_score", "retrieval_score"):
        assert "press Run trace" in wait(driver, lambda d, m=metric: graph_note(d, overview_id(m)))
    click(driver, "tab-circuits")
    wait(driver, lambda d: "no circuit runs" in text(d, "circuit-info"))
    assert "workbench circuit" in text(driver, "circuit-info")
    graph = {"type": "head-source", "page": "circuits", "metric": "circuit"}
    assert "workbench circuit" in graph_note(driver, graph)
    click(driver, "tab-runs")
    wait(driver, lambda d: "no runs in" in text(d, "runs-info"))
    assert "press Run trace" in text(driver, "runs-info")
    click(driver, "tab-head")
    assert "Run a trace" in text(driver, "head-info")
    click(driver, "tab-intervene")
    click(driver, "apply")
    wait(driver, lambda d: "no trace yet: press Run trace" in text(d, "loss"))
    click(driver, "tab-overview")


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
    value = driver.find_element("id", "edit-value")
    assert not value.is_enabled()  # ablations take no value
    driver.execute_script("document.querySelector('#edit input[value=scale]').click();")
    wait(driver, lambda d: value.is_enabled())
    driver.execute_script("document.querySelector('#edit input[value=\"ablate-zero\"]').click();")
    wait(driver, lambda d: not value.is_enabled())
    # The edit applies to the traced text, whatever the text box holds now.
    type_text(driver, "text", "A different text that was never traced.")
    wait(driver, lambda d: "press Run trace" in text(d, "stale"))
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
    assert f"trace {runs_of(store)[0]} (organism, {n_tokens} tokens)" in loss
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


def test_a_new_text_asks_for_a_trace_and_the_head_view_follows_it(page, subject, store):
    driver = page
    old = runs_of(store)[0]
    n_old = subject.encode(SAMPLE_TEXT)["input_ids"].shape[1]
    choose(driver, "task", "indirect object")
    want = tasks.ioi_prompt(random.Random(0)).text
    wait(driver, lambda d: d.find_element("id", "text").get_attribute("value") == want)
    assert "filled in" in text(driver, "status")
    # The pages still describe the old trace, and say so.
    wait(driver, lambda d: f"trace {old} (organism, {n_old} tokens)" in text(d, "stale"))
    click(driver, "tab-head")
    assert f"on trace {old} (organism, {n_old} tokens)" in text(driver, "head-info")
    click(driver, "run")
    n_new = subject.encode(want)["input_ids"].shape[1]
    wait(driver, lambda d: f"traced {n_new} tokens" in text(d, "status-done"))
    new = runs_of(store)[0]
    assert new != old and text(driver, "stale") == ""
    # The head view shows the new trace without the head being picked again.
    wait(driver, lambda d: f"on trace {new} (organism, {n_new} tokens)" in text(d, "head-info"))
    received = wait_graph(driver, "sequence", lambda g: len(g[0]["y"]) == n_new)[0]["y"]
    layer, head = (int(x) for x in re.match(r"L(\d+)\.H(\d+) on", text(driver, "head-info")).groups())
    own = workbench.trace(subject, want, stats=("received",))
    np.testing.assert_allclose(received, own.sequence("received")[layer, head].numpy(), atol=1e-5)


def long_text(subject, n_tokens: int) -> str:
    """The sample paragraph repeated, paragraph by paragraph, to at least `n_tokens` tokens."""
    paragraphs = [SAMPLE_TEXT]
    while subject.encode("\n\n".join(paragraphs))["input_ids"].shape[1] < n_tokens:
        paragraphs.append(SAMPLE_TEXT)
    return "\n\n".join(paragraphs)


def test_a_long_text_stays_readable_and_its_window_moves(page, subject, store):
    driver = page
    long = long_text(subject, 1500)
    n = subject.encode(long)["input_ids"].shape[1]
    assert 1500 <= n <= 2048  # organism's context
    type_text(driver, "text", long)
    wait(driver, lambda d: text(d, "token-count-value") == f"{n} tokens of organism's 2048")
    click(driver, "run")
    wait(driver, lambda d: f"traced {n} tokens" in text(d, "status-done"))
    click(driver, "tab-head")
    wait(driver, lambda d: f"({'organism'}, {n} tokens)" in text(d, "head-info"))
    pattern = wait_graph(driver, "pattern", lambda g: g[0]["x"][0].startswith(f"{n - 48}:"))[0]
    assert all(label.split(":", 1)[1] for label in pattern["x"])  # no blank token label
    colorbar = driver.execute_script(
        "return document.getElementById('pattern').querySelector('.js-plotly-plot').data[0].colorbar.title.text;")
    assert f"goes to keys<br>before {n - 48}" in colorbar  # what the window leaves out is said
    # The per-token text is folded away: the page stays short.
    assert driver.execute_script("return document.getElementById('received-details').open;") is False
    assert driver.execute_script("return document.body.scrollHeight;") < 3500
    units = driver.execute_script("""const l = document.getElementById('sequence')
        .querySelector('.js-plotly-plot').layout; return [l.yaxis.title.text, l.yaxis3.title.text];""")
    assert units == ["sum of p", "nats"]
    # Moving the window draws the map from the kept layer inputs, equal to a trace of that window.
    start = driver.find_element("id", "window-start")
    start.send_keys("100")
    wait(driver, lambda d: "positions 100..147" in text(d, "head-info"))
    moved = wait_graph(driver, "pattern", lambda g: g[0]["x"][0].startswith("100:"))[0]
    layer, head = (int(x) for x in re.match(r"L(\d+)\.H(\d+) on", text(driver, "head-info")).groups())
    own = workbench.trace(subject, long, stats=(), patterns=[(layer, head)], pattern_window=(100, 148))
    np.testing.assert_allclose(np.array(moved["z"], dtype=float), own.patterns[(layer, head)][0].numpy(), atol=1e-6)
    # Whitespace tokens (the paragraph break) are labelled with visible marks.
    readable = [subject.tokenizer.convert_tokens_to_string([t]) for t in own.real_tokens(0)[100:148]]
    breaks = [i for i, t in enumerate(readable) if t == "\n"]
    assert breaks and all(moved["x"][i] == f"{100 + i}:↵" for i in breaks)


def test_a_text_longer_than_the_context_is_refused_on_entry(page, subject):
    driver = page
    too_long = "x " * 2100
    n = len(subject.tokenizer(too_long)["input_ids"])
    type_text(driver, "text", too_long)
    count = wait(driver, lambda d: d.find_element("id", "token-count-value")
                 if text(d, "token-count-value").startswith(f"{n} tokens") else None)
    assert count.text == f"{n} tokens of organism's 2048" and "176, 0, 32" in count.get_attribute("style")
    click(driver, "run")
    wait(driver, lambda d: "error:" in text(d, "status"))
    assert text(driver, "status") == (f"error: the text has {n} tokens, more than the 2048 of organism's context: "
                                      "shorten it or pick a model with a longer context")
    click(driver, "tab-overview")  # the last trace's maps are gone under the error
    wait(driver, lambda d: "press Run trace" in (graph_note(d, overview_id("sink_score")) or ""))
    click(driver, "tab-head")
    wait(driver, lambda d: "no trace yet" in text(d, "head-info"))


def test_a_queued_trace_shows_progress_can_be_cancelled_and_leaves_the_app_usable(page, session, store):
    driver = page
    before = runs_of(store)
    with workbench.Store(store) as db:
        n_runs = len(db.runs())
    waiting = "A trace that waits for the model, then is cancelled."
    type_text(driver, "text", waiting)
    n = len(session.subject("organism").tokenizer(waiting)["input_ids"])
    wait(driver, lambda d: text(d, "token-count-value") == f"{n} tokens of organism's 2048")
    with session.lock:  # the model is busy: the trace job waits for it
        click(driver, "run")
        wait(driver, lambda d: "trace of organism" in text(d, "trace-job-info"))
        assert driver.find_element("id", "trace-job").is_displayed()
        click(driver, "run")  # the same work again is not queued twice: still one job, still waiting
        click(driver, "tab-runs")  # other pages still answer
        wait(driver, lambda d: f"{n_runs} runs in" in text(d, "runs-info"))
        assert "trace of organism" in text(driver, "trace-job-info")
        click(driver, "trace-cancel")
    wait(driver, lambda d: "cancelled" in text(d, "status"))
    assert not driver.find_element("id", "trace-job").is_displayed()
    assert runs_of(store) == before  # nothing of the cancelled trace was stored


def test_runs_rows_say_what_was_traced_and_at_most_three_are_compared(page, store):
    driver = page
    click(driver, "tab-runs")
    click(driver, "runs-refresh")
    labels = wait(driver, lambda d: [e.text for e in d.find_elements("css selector", "#runs-select label")]
                  if len(d.find_elements("css selector", "#runs-select label")) >= 4 else None)
    ioi = tasks.ioi_prompt(random.Random(0)).text
    assert any(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +trace +organism +\d+ tokens", label) for label in labels)
    assert any(f'"{" ".join(ioi.split()[:4])}' in label for label in labels)
    assert sum("<- the pages' trace" in label for label in labels) <= 1
    boxes = "#runs-select input[type=checkbox]"
    checked = f"return Array.from(document.querySelectorAll('{boxes}'), b => b.checked);"
    for i, ticked in enumerate(driver.execute_script(checked)):  # untick the run an earlier step compared
        if ticked:
            driver.execute_script(f"document.querySelectorAll('{boxes}')[{i}].click();")
    wait(driver, lambda d: not any(d.execute_script(checked)))
    for i in range(3):
        driver.execute_script(f"document.querySelectorAll('{boxes}')[{i}].click();")
        wait(driver, lambda d, i=i: d.execute_script(checked)[:i + 1] == [True] * (i + 1))
    wait(driver, lambda d: "3 ticked" in text(d, "runs-info"))
    driver.execute_script(f"document.querySelectorAll('{boxes}')[3].click();")  # a fourth tick is taken back
    wait(driver, lambda d: d.execute_script(checked) == [True] * 3 + [False] * (len(labels) - 3))
    assert "compared at once" in text(driver, "runs-info")
    wait_graph(driver, "runs-figure", lambda g: len(g) >= 2)  # the traces among them (a circuit run has no map)
