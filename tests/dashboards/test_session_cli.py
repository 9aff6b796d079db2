"""`workbench dash` serves the app on 127.0.0.1; the Session turns bad input into errors that name it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from dashboards.session import Session
from workbench.errors import HeadNotFoundError, WorkbenchError


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


@pytest.mark.parametrize("call, error, message", [
    (lambda s: s.run_trace("organism", "   "), WorkbenchError, "the text is empty"),
    (lambda s: s.run_trace(str(os.sep) + "no/such/folder", "text"), WorkbenchError, "does not exist"),
    (lambda s: s.head_view("organism", "def f(x):", 6, 0), HeadNotFoundError, r"head \(6, 0\)"),
    (lambda s: s.intervene("organism", "def f(x):", [], "ablate-zero", 1.0), WorkbenchError, "at least one head"),
    (lambda s: s.intervene("organism", "def f(x):", [(0, 0)], "melt", 1.0), WorkbenchError, "unknown edit 'melt'"),
    (lambda s: s.intervene("organism", "def f(x):", [(0, 0)], "calibrate", 2.0), WorkbenchError, "beta 2.0"),
    (lambda s: s.task_text("organism", "poetry"), WorkbenchError, "unknown task 'poetry'"),
    (lambda s: s.trace_run("nope"), WorkbenchError, "trace 'nope'"),
])
def test_session_names_bad_input(session, call, error, message):
    with pytest.raises(error, match=message):
        call(session)


def test_head_view_window_is_bounded_and_tasks_fill_text(session):
    text = session.task_text("organism", "needle")
    assert "code is" in text and session.task_text("organism", "ioi").count(" ") > 5
    view = session.head_view("organism", text, 5, 3, start=0)
    assert view.pattern.shape == (48, 48) and view.start == 0 and len(view.received) == len(view.labels) > 48
    late = session.head_view("organism", text, 5, 3, start=10_000)  # clamped to the last full window
    assert late.start == len(late.labels) - 48

