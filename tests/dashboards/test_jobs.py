"""The app's jobs: one at a time, the same work never queued twice, progress per layer, a cancel that stops a
real trace at its next layer and leaves nothing in the store."""

import threading

import pytest

from workbench.dashboards.jobs import Cancelled, Jobs
from workbench.dashboards.session import Session


@pytest.fixture
def session(tmp_path):
    return Session("organism", tmp_path / "runs.duckdb")


def test_a_trace_job_reports_each_layer_and_stores_its_run(session):
    jobs, seen = Jobs(), []
    job = jobs.submit(("trace", "x"), "trace", lambda j: session.run_trace("organism", "def f(x): return x", j))
    run = job.future.result(timeout=60)
    assert job.finished and job.outcome() is run and job.state()["finished"]
    assert session.runs().run_id.tolist() == [run.run_id]
    def count(j):
        j.plan(6, "six steps")
        for _ in range(6):
            j.step()
            seen.append(j.state()["fraction"])

    job = jobs.submit(("count",), "count", count)
    job.future.result(timeout=10)
    assert seen == pytest.approx([i / 6 for i in range(1, 7)])


def test_the_same_work_is_not_queued_twice_and_jobs_run_one_at_a_time(session):
    jobs, release, running = Jobs(), threading.Event(), threading.Event()

    def blocked(job):
        running.set()
        release.wait(timeout=30)
        return "first"

    first = jobs.submit(("a",), "a", blocked)
    running.wait(timeout=10)
    assert jobs.submit(("a",), "a", blocked) is first
    second = jobs.submit(("b",), "b", lambda j: "second")
    assert not second.future.running() and jobs.running() is first  # queued behind the first
    second.cancel()
    release.set()
    assert first.future.result(timeout=10) == "first"
    with pytest.raises(Cancelled, match="b: cancelled"):
        second.outcome()
    assert jobs.get(first.id) is first
    with pytest.raises(Exception, match="not known"):
        jobs.get("nope")


def test_a_cancelled_trace_stops_at_the_next_layer_and_stores_nothing(session):
    jobs, layers = Jobs(), []

    def trace(job):
        step = job.step

        def counting(layer=None):
            layers.append(layer)
            if layer == 1:
                job.cancel()  # the user presses Cancel while layer 1 runs
            step(layer)
        job.step = counting
        return session.run_trace("organism", "def f(x): return x", job)

    job = jobs.submit(("trace",), "trace of organism", trace)
    with pytest.raises(Cancelled, match="trace of organism: cancelled"):
        job.future.result(timeout=60)
    assert layers == [0, 1]  # layers 2-5 never ran
    assert session.runs().empty
