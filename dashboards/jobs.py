"""Long model work (a trace, an intervention) run off the request threads, with progress and a cancel.

Jobs run one at a time on a single worker thread (`concurrent.futures`): the models are shared, and a second
model run would only slow the first on a small machine. The app's other callbacks keep answering while a job
runs, and the browser polls a job's progress (`Job.state`). A job is asked to stop with `Job.cancel`: the work
checks `Job.step` once per attention layer (the tracer's `on_layer`), so a cancelled forward stops at the next
layer and nothing of it is kept. Work already running or queued under the same key is not queued again: the
request gets the job that is already there.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from workbench.errors import WorkbenchError

MAX_JOBS = 32  # finished jobs remembered for the browser's last poll


class Cancelled(WorkbenchError):
    """The user cancelled the job."""


@dataclass(eq=False)
class Job:
    """One unit of long work: its label, progress (`done` of `total` steps) and outcome."""

    key: Hashable
    label: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    done: int = 0
    total: int = 0
    stage: str = "waiting for the model"
    started: float = field(default_factory=time.perf_counter)
    future: Future | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)

    def plan(self, total: int, stage: str) -> None:
        """Start counting `total` steps of `stage` (one per attention layer of each forward to come)."""
        self.done, self.total, self.stage = 0, total, stage
        self.check()

    def step(self, _layer: int | None = None) -> None:
        """One more step done (the tracer's on_layer); raise Cancelled when the user asked to stop."""
        self.done = min(self.done + 1, self.total)
        self.check()

    def check(self) -> None:
        """Raise Cancelled when the user asked to stop."""
        if self._cancel.is_set():
            raise Cancelled(f"{self.label}: cancelled")

    def cancel(self) -> None:
        """Ask the job to stop (at its next step), or drop it if it has not started."""
        self._cancel.set()
        if self.future is not None:
            self.future.cancel()

    @property
    def finished(self) -> bool:
        return self.future is not None and self.future.done()

    def outcome(self):
        """The work's result; Cancelled when it was cancelled; the work's own exception when it failed."""
        try:
            return self.future.result(timeout=0)
        except CancelledError as err:
            raise Cancelled(f"{self.label}: cancelled") from err

    def state(self) -> dict:
        """What the browser shows: finished or not, the stage, the progress as a fraction, seconds elapsed."""
        return {"finished": self.finished, "stage": self.stage, "label": self.label,
                "fraction": self.done / self.total if self.total else 0.0,
                "seconds": time.perf_counter() - self.started}


class Jobs:
    """The app's job queue: `submit` work, find a job again by id with `get`."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, key: Hashable, label: str, work: Callable[[Job], object]) -> Job:
        """Run work(job) on the worker thread; the job already running or queued under `key`, if any."""
        with self._lock:
            for job in self._jobs.values():
                if job.key == key and not job.finished and not job._cancel.is_set():
                    return job
            job = Job(key, label)
            job.future = self._pool.submit(self._run, job, work)
            self._jobs[job.id] = job
            finished = [i for i, j in self._jobs.items() if j.finished]
            for old in finished[:max(0, len(self._jobs) - MAX_JOBS)]:
                del self._jobs[old]
            return job

    @staticmethod
    def _run(job: Job, work: Callable[[Job], object]):
        job.started = time.perf_counter()
        job.check()
        return work(job)

    def get(self, job_id: str | None) -> Job:
        """The job `job_id` (WorkbenchError when it is not known, e.g. after the app restarted)."""
        with self._lock:
            if job_id not in self._jobs:
                raise WorkbenchError(f"job {job_id!r} is not known to this app: start it again")
            return self._jobs[job_id]

    def running(self) -> Job | None:
        """The job the worker is on now, if any."""
        with self._lock:
            return next((j for j in self._jobs.values() if j.future.running()), None)
