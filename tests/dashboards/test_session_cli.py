"""`workbench dash` serves the app on 127.0.0.1; the Session turns bad input into errors that name it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

import workbench
from workbench.dashboards.session import Session
from workbench.errors import HeadNotFoundError, WorkbenchError
from workbench.interventions import ablate, calibrate, scale, scale_initial
from workbench.interventions.calibration import find_hidden_sinks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_workbench_dash_serves_the_app(tmp_path):
    port = _free_port()
    command = [sys.executable, "-m", "workbench.cli", "dash", "--model", "organism", "--port", str(port),
               "--store", str(tmp_path / "runs.duckdb")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline, page = time.monotonic() + 60, None
        while page is None and time.monotonic() < deadline and process.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
        assert page is not None, process.stdout.read().decode() if process.poll() is not None else "no answer"
        assert "<title>Attention Workbench</title>" in page
        layout = urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=5).read().decode()
        assert '"value":"organism"' in layout.replace(" ", "")  # the --model is preselected
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session("organism", tmp_path_factory.mktemp("session") / "runs.duckdb")


@pytest.fixture(scope="module")
def traced(session):
    """The store run id of a trace of a short text."""
    return session.run_trace("organism", "def f(x):").run_id


@pytest.mark.parametrize("call, error, message", [
    (lambda s: s.run_trace("organism", "   "), WorkbenchError, "the text is empty"),
    (lambda s: s.run_trace(str(os.sep) + "no/such/folder", "text"), WorkbenchError, "does not exist"),
    (lambda s: s.run_trace("organism", "x " * 2100), WorkbenchError,
     r"the text has \d+ tokens, more than the 2048 of organism's context"),
    (lambda s, r: s.head_view(r, 6, 0), HeadNotFoundError, r"head \(6, 0\)"),
    (lambda s, r: s.intervene(r, [], "ablate-zero", 1.0), WorkbenchError, "at least one head"),
    (lambda s, r: s.intervene(r, [(0, 0)], "melt", 1.0), WorkbenchError, "unknown edit 'melt'"),
    (lambda s, r: s.intervene(r, [(0, 0)], "calibrate", 2.0), WorkbenchError, "beta 2.0"),
    (lambda s: s.task_text("organism", "poetry"), WorkbenchError, "unknown task 'poetry'"),
    (lambda s: s.trace_run("nope"), WorkbenchError, "trace 'nope'"),
    (lambda s: s.head_view(None, 0, 0), WorkbenchError, "no trace yet: press Run trace"),
])
def test_session_names_bad_input(session, traced, call, error, message):
    with pytest.raises(error, match=message):
        call(session, traced) if call.__code__.co_argcount == 2 else call(session)


def test_head_view_window_is_bounded_and_tasks_fill_text(session):
    text = session.task_text("organism", "needle")
    assert "code is" in text and session.task_text("organism", "ioi").count(" ") > 5
    run = session.run_trace("organism", text)
    view = session.head_view(run.run_id, 5, 3, start=0)
    assert view.pattern.shape == (48, 48) and view.start == 0 and len(view.received) == len(view.labels) > 48
    late = session.head_view(run.run_id, 5, 3, start=10_000)  # clamped to the last full window
    assert late.start == len(late.labels) - 48
    full = workbench.trace(session.subject("organism"), text, stats=(), patterns=[(5, 3)])
    n = len(late.labels)
    np.testing.assert_allclose(late.pattern, full.patterns[(5, 3)][0, n - 48:, n - 48:].numpy(), atol=1e-6)
    np.testing.assert_array_equal(view.received, run.trace.sequence("received")[5, 3].numpy())



def test_a_local_folder_traces_and_writes_a_store_run(tiny_folder, tmp_path):
    session = Session(str(tiny_folder), tmp_path / "runs.duckdb")
    run = session.run_trace(str(tiny_folder), "the cat sat on the mat")
    assert session.overview(run.run_id, "sink_score").shape == (run.trace.n_layers, run.trace.n_heads)
    assert session.runs().run_id.tolist() == [run.run_id]


@pytest.mark.parametrize("edit, value", [("ablate-mean", 0.0), ("scale", 2.0), ("calibrate", 0.4),
                                         ("zerotuning", 0.5)])
def test_each_edit_gives_what_the_intervention_gives(session, edit, value):
    text = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))"
    subject = session.subject("organism")
    heads = list(find_hidden_sinks(subject, text))[-2:]  # heads that have hidden sinks here, for ACT to act on
    assert len(heads) == 2
    editing = {"ablate-mean": lambda: ablate(subject, heads, mode="mean", reference=[text]),
               "scale": lambda: scale(subject, heads, value),
               "calibrate": lambda: calibrate(subject, text, heads, beta=value),
               "zerotuning": lambda: scale_initial(subject, dict.fromkeys(heads, value))}[edit]
    outcome = session.intervene(session.run_trace("organism", text).run_id, heads, edit, value)
    enc = subject.encode(text)
    with torch.no_grad():
        plain = torch.softmax(subject.model(**enc).logits[0, -1].float(), -1)
        with editing():
            edited = torch.softmax(subject.model(**enc).logits[0, -1].float(), -1)
    top = torch.argsort(plain, descending=True)[:8]
    np.testing.assert_allclose(outcome.before[:8], plain[top].numpy(), atol=1e-6)
    assert not np.allclose(outcome.before, outcome.after, atol=1e-5), f"{edit} changed nothing"
    np.testing.assert_allclose(np.sort(outcome.after)[::-1][:3], np.sort(edited.numpy())[::-1][:3], atol=1e-6)
