"""What the app's callbacks ask of the workbench: the loaded models, the traces taken, and the calls into the
public API (workbench.trace, probes, interventions, the store) that a notebook would make.

Every page reads one trace (a TraceRun, by its store run id): its tokens and statistics, never the text box.
One lock guards every model run: the tracer's captures and the head-output hooks are per model, and the
Dash server answers callbacks from several threads; the long runs come through `workbench.dashboards.jobs`.
"""

from __future__ import annotations

import contextlib
import functools
import random
import textwrap
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import workbench
from workbench import zoo
from workbench.dashboards.jobs import Job
from workbench.errors import WorkbenchError
from workbench.interventions import ablate, calibrate, scale, scale_initial
from workbench.interventions.masking import logits_and_loss
from workbench.probes.entropy import entropy_profile
from workbench.probes.heads import head_types, repeated_random_tokens
from workbench.probes.result import Result
from workbench.probes.retrieval import retrieval_heads
from workbench.probes.sinks import sink_scores
from workbench.probes.windows import layer_inputs, query_window
from workbench.samples import SAMPLE_TEXT
from workbench.subject import Subject
from workbench.tracer import AttentionInputs, capture
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
    """One trace the app took, with the per-text probes read from it: the state every page reads."""

    model: str
    text: str
    trace: workbench.Trace
    results: dict[str, Result]
    run_id: str
    seconds: float

    @property
    def n_tokens(self) -> int:
        return int(self.trace.attention_mask[0].sum())


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
MAX_LAYER_INPUTS = 4  # layers whose attention inputs are kept for moving a head view's window
SNIPPET = 60  # at most this many characters of the text's first words go into an app trace's store run


class Session:
    """The app's models and traces; `default_model` is preselected, `store` is the results store."""

    def __init__(self, default_model: str | None = None, store: str | Path | None = None) -> None:
        self.default_model = default_model or workbench.DEFAULT_MODEL
        self.store = store
        self._reader = workbench.Store(store, timeout=READ_TIMEOUT)  # checks the store before the app serves
        self.store_path = self._reader.path
        self.lock = threading.RLock()  # held by every model run
        self._loading = threading.Lock()  # held while a model loads (a token count does not wait for a run)
        self._subjects: OrderedDict[str, Subject] = OrderedDict()
        self._model_results: dict[tuple[str, str], Result | WorkbenchError] = {}
        self._traces: OrderedDict[str, TraceRun] = OrderedDict()
        self._inputs: OrderedDict[tuple[str, int], AttentionInputs] = OrderedDict()

    def subject(self, name: str) -> Subject:
        """The loaded model `name` (kept for reuse; the least recently used is dropped past MAX_MODELS)."""
        with self._loading:
            if name not in self._subjects:
                self._subjects[name] = workbench.load(name)
                while len(self._subjects) > MAX_MODELS:
                    self._subjects.popitem(last=False)
            self._subjects.move_to_end(name)
            return self._subjects[name]

    def token_count(self, model: str, text: str) -> tuple[int, int]:
        """(tokens of `text`, the model's context length), without running the model."""
        subject = self.subject(model)
        if subject.tokenizer is None:
            raise WorkbenchError(f"model {model!r} has no tokenizer")
        return len(subject.tokenizer(text)["input_ids"]), subject.adapter.context_length

    def check_text(self, model: str, text: str) -> None:
        """Refuse an empty text or one longer than the model's context, before any work is queued."""
        if not text.strip():
            raise WorkbenchError("the text is empty: type a text or pick a task")
        n, context = self.token_count(model, text)
        if n > context:
            raise WorkbenchError(f"the text has {n} tokens, more than the {context} of {model}'s context: "
                                 "shorten it or pick a model with a longer context")

    def run_trace(self, model: str, text: str, job: Job | None = None) -> TraceRun:
        """Trace `text` through `model`, read its sink and entropy probes, run the model-level probes of the
        overview (once per model), write a store run; keep it by id. `job` gets the progress and may cancel."""
        self.check_text(model, text)
        begin = time.perf_counter()
        with self.lock:
            subject = self.subject(model)
            if job is not None:
                job.plan(subject.adapter.n_layers, f"tracing {model}")
            trace = workbench.trace(subject, text, on_layer=job.step if job is not None else None)
            results = {"sinks": sink_scores(trace), "entropy": entropy_profile(trace)}
            for probe in ("heads", "retrieval"):
                if job is not None:
                    job.plan(0, f"{model}: {probe} probe (once per model)")
                try:
                    self.model_result(model, probe)
                except WorkbenchError:
                    pass  # the overview says why that map is missing; the trace itself is fine
            with workbench.Store(self.store) as db:
                run_id = db.write_run("trace", subject.name, trace.head_table(), command="workbench dash",
                                      params={"n_tokens": int(trace.attention_mask[0].sum()), "source": "dashboard",
                                              "text": textwrap.shorten(text, SNIPPET, placeholder=" ...")})
        run = TraceRun(model, text, trace, results, run_id, time.perf_counter() - begin)
        self._traces[run_id] = run
        while len(self._traces) > MAX_TRACES:
            self._traces.popitem(last=False)
        return run

    def trace_run(self, run_id: str | None) -> TraceRun:
        if not run_id:
            raise WorkbenchError("no trace yet: press Run trace")
        if run_id not in self._traces:
            raise WorkbenchError(f"trace {run_id!r} is not in this session: run the trace again")
        return self._traces[run_id]

    def model_result(self, model: str, probe: str) -> Result:
        """A probe that drives the model on its own inputs (head types, retrieval), run once per model (a probe
        the model cannot take, e.g. a context too short for a needle prompt, fails once and then at once)."""
        key = (model, probe)
        with self.lock:
            if key not in self._model_results:
                subject = self.subject(model)
                try:
                    if probe == "heads":
                        result = head_types(subject, length=min(50, (subject.adapter.context_length - 1) // 2))
                    else:
                        length = min(RETRIEVAL_LENGTH, subject.adapter.context_length - ANSWER_ROOM)
                        result = retrieval_heads(subject, lengths=(length,), depths=(0.5,), builder=_needles(model))
                except WorkbenchError as err:
                    result = err
                self._model_results[key] = result
        result = self._model_results[key]
        if isinstance(result, WorkbenchError):
            raise result
        return result

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

    def layer_inputs(self, run_id: str, layer: int) -> AttentionInputs:
        """The attention inputs of `layer` for the trace `run_id`, from a forward stopped at that layer; the
        last MAX_LAYER_INPUTS layers asked for are kept, so that moving a window runs no model."""
        key = (run_id, layer)
        if key not in self._inputs:
            run = self.trace_run(run_id)
            with self.lock:
                self._inputs[key] = layer_inputs(self.subject(run.model), run.trace.token_ids, layer)
            while len(self._inputs) > MAX_LAYER_INPUTS:
                self._inputs.popitem(last=False)
        self._inputs.move_to_end(key)
        return self._inputs[key]

    def head_view(self, run_id: str, layer: int, head: int, start: int | None = None) -> HeadView:
        """Head (layer, head) on the trace `run_id`: its map over WINDOW positions from `start` (default: the
        end) and its per-token statistics, read from the trace."""
        run = self.trace_run(run_id)
        self.subject(run.model).adapter.check_head(layer, head)
        n = run.n_tokens
        start = max(0, n - WINDOW) if start is None else min(max(0, int(start)), max(0, n - WINDOW))
        stop = min(n, start + WINDOW)
        pattern = self.layer_inputs(run_id, layer).pattern([head], (start, stop))[0, 0]
        tokens = run.trace.real_tokens(0)
        per_token = {name: run.trace.sequence(name)[layer, head].float().numpy()
                     for name in ("received", "sink_mass", "entropy")}
        return HeadView(tokens=tokens, labels=_readable(self.subject(run.model), tokens), start=start,
                        pattern=pattern.cpu().numpy(), **per_token)

    def query_view(self, run_id: str, layer: int, head: int, query: int) -> pd.DataFrame:
        """Head (layer, head)'s attention from position `query` of the trace `run_id` over the QUERY_WIDTH keys
        that end at it (from the layer's kept inputs)."""
        run = self.trace_run(run_id)
        subject = self.subject(run.model)
        window = query_window(subject, run.trace.token_ids, layer, head, int(query), QUERY_WIDTH,
                              kept=self.layer_inputs(run_id, layer))
        window["token"] = _readable(subject, list(window.token))
        return window

    def intervene(self, run_id: str, heads: list[tuple[int, int]], edit: str, value: float,
                  job: Job | None = None, top: int = 8) -> EditOutcome:
        """The next-token distribution after the traced text and the text's loss, plain and with `edit` on
        `heads`. `job` gets the progress (two forwards, three for a mean ablation) and may cancel."""
        if not heads:
            raise WorkbenchError("pick at least one head to edit")
        run = self.trace_run(run_id)
        text = run.text
        with self.lock:
            subject = self.subject(run.model)
            for layer, head in heads:
                subject.adapter.check_head(layer, head)
            forwards = 3 if edit in ("ablate-mean", "calibrate") else 2
            if job is not None:
                job.plan(forwards * subject.adapter.n_layers, f"{EDITS.get(edit, edit)} on {run.model}")
            with _progress(subject, job):
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


def _progress(subject: Subject, job: Job | None):
    """A capture that only counts layers into `job` (and lets it cancel); nothing when there is no job."""
    if job is None:
        return contextlib.nullcontext()
    return capture(subject, stats=(), on_layer=job.step)


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

