"""What the app's callbacks ask of the workbench: the loaded models, the traces taken, and the calls into the
public API (workbench.trace, probes, interventions, the store) that a notebook would make.

One lock guards every model run: the tracer's captures and the head-output hooks are per model, and the
Dash server answers callbacks from several threads.
"""

from __future__ import annotations

import functools
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import workbench
from workbench.interventions import ablate, calibrate, scale, scale_initial
from workbench.interventions.masking import logits_and_loss
from workbench.probes.entropy import entropy_profile
from workbench.probes.heads import head_types, repeated_random_tokens
from workbench.probes.result import Result
from workbench.probes.retrieval import retrieval_heads
from workbench.probes.sinks import sink_scores
from workbench.probes.windows import query_window
from workbench import zoo
from workbench.samples import SAMPLE_TEXT
from workbench.errors import WorkbenchError
from workbench.subject import Subject
from workbench.zoo import tasks

WINDOW = 48  # the most positions a head's attention map is drawn over (the app never draws an L x L map)
QUERY_WIDTH = 256  # keys shown for a query clicked on the long-sequence view
RETRIEVAL_LENGTH = 256  # needle prompt length of the app's retrieval scan (capped by the model's context)
ANSWER_ROOM = 16  # positions left free after the needle prompt for the generated answer
MAX_MODELS = 2
MAX_TRACES = 8  # traces kept for the overview and head clicks; older ones must be run again
EDITS = {
    "ablate-zero": "ablate (zero)", "ablate-mean": "ablate (mean over the text)", "scale": "scale outputs",
    "calibrate": "calibrate hidden sinks (ACT)", "zerotuning": "ZeroTuning: scale first-token attention",
}
TASKS = {"paragraph": "a paragraph of prose", "ioi": "indirect object (IOI)", "needle": "needle in a haystack",
         "repeated": "repeated random tokens (induction)"}
# Overview metric -> (title, which probe result, metric name in it)
OVERVIEW = {
    "sink_score": ("first-token sink score", "sinks", "sink_score"),
    "entropy_norm": ("entropy / log keys", "entropy", "entropy_norm"),
    "retrieval_score": ("retrieval score (needle copy-paste)", "retrieval", "retrieval_score"),
    "induction": ("induction score (repeated random tokens)", "heads", "induction"),
    "prev_token": ("previous-token score", "heads", "prev_token"),
}


@dataclass
class TraceRun:
    """One trace the app took, with the per-text probes read from it."""

    model: str
    text: str
    trace: workbench.Trace
    results: dict[str, Result]
    run_id: str


@dataclass
class HeadView:
    """What the head view draws: the window's attention map and the whole text's per-token statistics."""

    tokens: list[str]
    labels: list[str]  # the tokens as text (byte-level BPE marks decoded)
    start: int
    pattern: np.ndarray  # [window, window]
    received: np.ndarray  # [n] attention each token receives from the head
    sink_mass: np.ndarray  # [n] each query row's attention on the first token
    entropy: np.ndarray  # [n] entropy of each query row (nats)


@dataclass
class EditOutcome:
    """Next-token probabilities of the top tokens and the text's loss, before and after an edit."""

    tokens: list[str]
    before: np.ndarray
    after: np.ndarray
    loss_before: float
    loss_after: float


READ_TIMEOUT = 10.0  # seconds the app waits to read the store while another process writes to it


class Session:
    """The app's models and traces; `default_model` is preselected, `store` is the results store."""

    def __init__(self, default_model: str | None = None, store: str | Path | None = None) -> None:
        self.default_model = default_model or workbench.DEFAULT_MODEL
        self.store = store
        self._reader = workbench.Store(store, timeout=READ_TIMEOUT)  # checks the store before the app serves
        self.store_path = self._reader.path
        self.lock = threading.RLock()
        self._subjects: OrderedDict[str, Subject] = OrderedDict()
        self._model_results: dict[tuple[str, str], Result] = {}
        self._traces: OrderedDict[str, TraceRun] = OrderedDict()

    def subject(self, name: str) -> Subject:
        """The loaded model `name` (kept for reuse; the least recently used is dropped past MAX_MODELS)."""
        with self.lock:
            if name not in self._subjects:
                self._subjects[name] = workbench.load(name)
                while len(self._subjects) > MAX_MODELS:
                    self._subjects.popitem(last=False)
            self._subjects.move_to_end(name)
            return self._subjects[name]

    def run_trace(self, model: str, text: str) -> TraceRun:
        """Trace `text` through `model`, read its sink and entropy probes, write a store run; keep it by id."""
        if not text.strip():
            raise WorkbenchError("the text is empty: type a text or pick a task")
        with self.lock:
            subject = self.subject(model)
            trace = workbench.trace(subject, text)
            results = {"sinks": sink_scores(trace), "entropy": entropy_profile(trace)}
            with workbench.Store(self.store) as db:
                run_id = db.write_run("trace", subject.name, trace.head_table(), command="workbench dash",
                                      params={"n_tokens": len(trace.tokens[0]), "source": "dashboard"})
        run = TraceRun(model, text, trace, results, run_id)
        self._traces[run_id] = run
        while len(self._traces) > MAX_TRACES:
            self._traces.popitem(last=False)
        return run

    def trace_run(self, run_id: str) -> TraceRun:
        if run_id not in self._traces:
            raise WorkbenchError(f"trace {run_id!r} is not in this session: run the trace again")
        return self._traces[run_id]

    def model_result(self, model: str, probe: str) -> Result:
        """A probe that drives the model on its own inputs (head types, retrieval), run once per model."""
        key = (model, probe)
        with self.lock:
            if key not in self._model_results:
                subject = self.subject(model)
                if probe == "heads":
                    result = head_types(subject, length=min(50, (subject.adapter.context_length - 1) // 2))
                else:
                    length = min(RETRIEVAL_LENGTH, subject.adapter.context_length - ANSWER_ROOM)
                    result = retrieval_heads(subject, lengths=(length,), depths=(0.5,), builder=_needles(model))
                self._model_results[key] = result
            return self._model_results[key]

    def task_text(self, model: str, task: str, seed: int = 0) -> str:
        """A prompt of a built-in task (`TASKS`) from `workbench.zoo.tasks`; repeated tokens come from `model`'s
        own vocabulary (`workbench.probes.heads.repeated_random_tokens`)."""
        rng = random.Random(seed)
        if task == "paragraph":
            return SAMPLE_TEXT
        if task == "ioi":
            return tasks.ioi_prompt(rng).text
        if task == "needle":
            needle, question, _ = tasks.needle_line(rng)
            cut = SAMPLE_TEXT.index(". ") + 1
            return SAMPLE_TEXT[:cut] + needle + SAMPLE_TEXT[cut:] + question
        if task == "repeated":
            with self.lock:
                subject = self.subject(model)
                ids = repeated_random_tokens(subject, length=20, batch=1, seed=seed)[0]
            return subject.tokenizer.decode(ids, skip_special_tokens=True)
        raise WorkbenchError(f"unknown task {task!r}; known: {list(TASKS)}")

    def overview(self, run_id: str, metric: str) -> np.ndarray:
        """The [layer, head] matrix of an overview metric for the trace `run_id` (model-level probes run once)."""
        run = self.trace_run(run_id)
        _, probe, name = OVERVIEW[metric]
        result = run.results[probe] if probe in run.results else self.model_result(run.model, probe)
        return result.head_matrix(name)

    def head_view(self, model: str, text: str, layer: int, head: int, start: int | None = None) -> HeadView:
        """Trace `text` keeping head (layer, head)'s map over WINDOW positions from `start` (default: the end)."""
        with self.lock:
            subject = self.subject(model)
            n = int(subject.encode(text)["attention_mask"].sum())
            start = max(0, n - WINDOW) if start is None else min(max(0, int(start)), max(0, n - WINDOW))
            stop = min(n, start + WINDOW)
            trace = workbench.trace(subject, text, stats=("entropy", "sink_mass", "received"),
                                    patterns=[(layer, head)], pattern_window=(start, stop))
        tokens = trace.real_tokens(0)
        per_token = {name: trace.sequence(name)[layer, head].float().numpy()
                     for name in ("received", "sink_mass", "entropy")}
        return HeadView(tokens=tokens, labels=_readable(subject, tokens), start=start,
                        pattern=trace.patterns[(layer, head)][0].float().numpy(), **per_token)

    def query_view(self, model: str, text: str, layer: int, head: int, query: int) -> pd.DataFrame:
        """Head (layer, head)'s attention from position `query` over the QUERY_WIDTH keys that end at it."""
        with self.lock:
            subject = self.subject(model)
            window = query_window(subject, text, layer, head, int(query), QUERY_WIDTH)
        window["token"] = _readable(subject, list(window.token))
        return window

    def intervene(self, model: str, text: str, heads: list[tuple[int, int]], edit: str, value: float,
                  top: int = 8) -> EditOutcome:
        """The next-token distribution after `text` and the text's loss, plain and with `edit` on `heads`."""
        if not heads:
            raise WorkbenchError("pick at least one head to edit")
        with self.lock:
            subject = self.subject(model)
            before, loss_before = _next_token(subject, text)
            with _edit(subject, text, heads, edit, value):
                after, loss_after = _next_token(subject, text)
        ids = list(dict.fromkeys(np.argsort(-before)[:top].tolist() + np.argsort(-after)[:top].tolist()))
        tokens = _readable(subject, subject.token_strings(torch.tensor([ids]))[0])
        return EditOutcome(tokens, before[ids], after[ids], loss_before, loss_after)

    def runs(self) -> pd.DataFrame:
        """The store's runs, newest first."""
        return self._reader.runs()

    def run_table(self, run_id: str) -> pd.DataFrame:
        """A stored run's per-head table."""
        return self._reader.head_metrics(run_id)


def _readable(subject: Subject, tokens: list[str]) -> list[str]:
    """Each token as the text it stands for (byte-level marks such as 'Ġ' decoded)."""
    if subject.tokenizer is None:
        return tokens
    return [subject.tokenizer.convert_tokens_to_string([t]) for t in tokens]


def _next_token(subject: Subject, text: str) -> tuple[np.ndarray, float]:
    """The model's next-token probabilities after `text` [vocab] and its loss on `text`, from one forward."""
    logits, loss = logits_and_loss(subject, text)
    return torch.softmax(logits, -1).cpu().numpy(), loss


def _needles(model: str):
    """The needle prompts of the retrieval scan: the zoo organism's own held-out needles (its model card's
    retrieval heads were measured on them), else the generic standard-library haystacks."""
    if model == "organism":
        from workbench.zoo.organism import needle_case

        return functools.partial(needle_case, haystack=(zoo.model_dir(model) / "heldout.txt").read_text())
    from workbench.probes.haystack import needle_case

    return needle_case


def _edit(subject: Subject, text: str, heads: list[tuple[int, int]], edit: str, value: float):
    """The intervention context manager for an app edit name (see EDITS)."""
    if edit == "ablate-zero":
        return ablate(subject, heads, mode="zero")
    if edit == "ablate-mean":
        return ablate(subject, heads, mode="mean", reference=[text])
    if edit == "scale":
        return scale(subject, heads, value)
    if edit == "calibrate":
        return calibrate(subject, text, heads, beta=value)
    if edit == "zerotuning":
        return scale_initial(subject, dict.fromkeys(heads, value))
    raise WorkbenchError(f"unknown edit {edit!r}; known: {list(EDITS)}")

