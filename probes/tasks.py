"""Tasks: lists of examples (a clean prompt, a corrupted one, the right and the wrong answer) and their metrics.

The ablation report (`workbench ablate`) and the circuit methods (`workbench.probes.circuits`) score a model on a task:
- `logit_diff`: logit(right) - logit(wrong) at the last position, first token of each answer (Wang et al. 2022);
- `accuracy`: the right answer's first token is the argmax;
- `loss`: -log p(right answer's first token); on the `loss` task, the mean next-token loss over the text;
- `normalized`: (m - m_corrupted) / (m_clean - m_corrupted) on task means, so that the clean run is 1
  and the corrupted run 0.
Built in: `ioi`, `needle`, `induction` (from the zoo's generators in `workbench.zoo.tasks`), `loss`, and any task
from a JSONL file with one {"clean", "corrupted", "answer", "wrong", "group"} object per line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench import zoo
from workbench.errors import WorkbenchError
from workbench.samples import SAMPLE_TEXT
from workbench.subject import Subject
from workbench.textfile import json_lines
from workbench.zoo import tasks as templates

BUILTIN = ("loss", "ioi", "needle", "induction")
JSONL_KEYS = {"clean": True, "corrupted": False, "answer": True, "wrong": False, "group": False}  # key -> required


class TaskError(WorkbenchError):
    """A task that cannot be built: an unknown name, a bad JSONL line, prompts that do not align."""


@dataclass(frozen=True)
class Example:
    """One prompt as token ids (BOS first when the tokenizer has one). answer / wrong are token ids of the
    right and wrong continuations (None on the `loss` task); corrupted is None for tasks without one. group
    names the template a prompt was built from: prompts of one group and length align position by position, so
    a circuit's faithfulness takes its ablation means over them (Wang et al. 2022); None = group by length."""

    clean: tuple[int, ...]
    corrupted: tuple[int, ...] | None
    answer: int | None
    wrong: int | None
    text: str
    group: str | None = None


@dataclass
class Task:
    """A named list of examples; `metric` is the one methods optimize (logit_diff, else loss)."""

    name: str
    examples: list[Example]

    def __post_init__(self) -> None:
        if not self.examples:
            raise TaskError(f"task {self.name!r} has no examples")

    @property
    def metric(self) -> str:
        return "logit_diff" if all(e.wrong is not None for e in self.examples) else "loss"

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "logit_diff"

    def check_pairs(self) -> None:
        """Raise TaskError unless every example has a corrupted prompt of its clean prompt's length
        (position-wise patching needs them aligned)."""
        for i, e in enumerate(self.examples):
            if e.corrupted is None:
                raise TaskError(f"task {self.name!r}: example {i} has no corrupted prompt")
            if len(e.corrupted) != len(e.clean):
                raise TaskError(f"task {self.name!r}: example {i}: the clean prompt has {len(e.clean)} tokens, "
                                f"the corrupted one {len(e.corrupted)}; patching needs equal lengths")


def encode(subject: Subject, which: str, task: Task) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask [n, L] (right-padded) of the clean or corrupted prompts, plus `last` [n]."""
    rows = [e.clean if which == "clean" else e.corrupted for e in task.examples]
    if any(r is None for r in rows):
        raise TaskError(f"task {task.name!r} has examples without a {which} prompt")
    enc = subject.encode([list(r) for r in rows])
    enc["last"] = enc["attention_mask"].sum(-1) - 1
    return enc


def score_logits(task: Task, logits: torch.Tensor, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-example metrics [n] (differentiable) from logits [n, L, V] of `encode`'s batch."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least, float64 kept
    if task.examples[0].answer is None:  # the loss task: mean next-token loss over each text
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), enc["input_ids"][:, 1:],
                                                reduction="none")
        real = enc["attention_mask"][:, 1:].float()
        return {"loss": (nll * real).sum(-1) / real.sum(-1).clamp_min(1)}
    rows = torch.arange(len(task.examples), device=logits.device)
    final = logits[rows, enc["last"].to(logits.device)]  # [n, V]
    answer = torch.tensor([e.answer for e in task.examples], device=logits.device)
    out = {"loss": -final.log_softmax(-1)[rows, answer],
           "accuracy": (final.argmax(-1) == answer).float()}
    if task.metric == "logit_diff":
        wrong = torch.tensor([e.wrong for e in task.examples], device=logits.device)
        out["logit_diff"] = final[rows, answer] - final[rows, wrong]
    return out


def evaluate(subject: Subject, task: Task, which: str = "clean") -> dict[str, np.ndarray]:
    """Run the model on the task's clean (or corrupted) prompts; per-example metrics as float arrays [n].
    Runs under whatever edits are active, so `with ablate(...): evaluate(...)` scores the edited model."""
    enc = encode(subject, which, task)
    with torch.no_grad():
        logits = subject.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False).logits
    return {k: v.detach().cpu().double().numpy() for k, v in score_logits(task, logits, enc).items()}


def normalized(value: float, clean: float, corrupted: float) -> float:
    """(value - corrupted) / (clean - corrupted): 1 = the clean run's score, 0 = the corrupted run's; NaN where
    the two runs score alike (then there is no scale, e.g. a prompt patched with itself)."""
    return float("nan") if clean == corrupted else (value - corrupted) / (clean - corrupted)


def _ids(subject: Subject, text: str, bos: bool = True) -> tuple[int, ...]:
    if subject.tokenizer is None:
        raise TaskError(f"model {subject.name!r} has no tokenizer: text tasks need one")
    ids = subject.tokenizer.encode(text, add_special_tokens=False)
    first = [subject.tokenizer.bos_token_id] if bos and subject.tokenizer.bos_token_id is not None else []
    return tuple(first + list(ids))


def _first(subject: Subject, text: str) -> int:
    ids = _ids(subject, text, bos=False)
    if not ids:
        raise TaskError(f"answer {text!r} has no tokens")
    return ids[0]


def ioi(subject: Subject, n: int = 32, seed: int = 0) -> Task:
    """Indirect-object sentences (`workbench.zoo.tasks.ioi_prompt`): right = the IO name, wrong = the subject;
    corrupted = the subject's second mention replaced by a third name. Pairs of unequal length are skipped."""
    rng, examples = random.Random(seed), []
    for _ in range(20 * n):
        p = templates.ioi_prompt(rng)
        clean, corrupted = _ids(subject, p.text), _ids(subject, p.corrupted)
        if len(clean) == len(corrupted):
            examples.append(Example(clean, corrupted, _first(subject, " " + p.io), _first(subject, " " + p.s),
                                    p.text, f"template {p.template}"))
        if len(examples) == n:
            break
    return Task("ioi", examples)


def heldout_text(subject: Subject) -> str | None:
    """The zoo model's held-out text (`heldout.txt`), None for models without one."""
    if subject.name not in zoo.names() or not (zoo.model_dir(subject.name) / "heldout.txt").is_file():
        return None
    return (zoo.model_dir(subject.name) / "heldout.txt").read_text()[:400_000]


def haystack_text(subject: Subject) -> str:
    """Distractor text: the zoo model's held-out text when it has one, else the standard library's prose."""
    from workbench.probes.haystack import stdlib_prose

    return heldout_text(subject) or stdlib_prose()


def needle(subject: Subject, n: int = 16, seed: int = 0, length: int = 192) -> Task:
    """Needle retrieval (`workbench.zoo.tasks.needle_line`) in about `length` tokens of distractor text: right =
    the value's first token; corrupted = the same prompt with the value's first digit changed (wrong = it)."""
    rng, examples = random.Random(seed), []
    hay_ids = _ids(subject, haystack_text(subject)[:200_000], bos=False)
    for _ in range(20 * n):
        line, question, answer = templates.needle_line(rng)
        value = answer.strip()
        other = str((int(value[0]) + 1 + rng.randrange(9)) % 10) + value[1:]
        pieces = [_ids(subject, s, bos=False) for s in (line, line.replace(value, other), question)]
        room = length - 1 - len(pieces[0]) - len(pieces[2])
        if room < 8 or len(hay_ids) <= room:
            raise TaskError(f"needle length {length} is too short for the needle and the question")
        start = rng.randrange(len(hay_ids) - room)
        hay, cut = hay_ids[start:start + room], rng.randrange(room + 1)
        bos = _ids(subject, "")
        clean, corrupted = (bos + hay[:cut] + p + hay[cut:] + pieces[2] for p in pieces[:2])
        right, wrong = _first(subject, " " + value), _first(subject, " " + other)
        if len(clean) == len(corrupted) and right != wrong:
            examples.append(Example(clean, corrupted, right, wrong, line.strip() + " ..." + question.strip()))
        if len(examples) == n:
            break
    return Task("needle", examples)


def induction(subject: Subject, n: int = 32, seed: int = 0, span: int = 20) -> Task:
    """Repeated random spans (`workbench.zoo.tasks.repeated_span`) cut inside the repeat: right = the token that
    followed the current one in the first copy (the copied token). corrupted = the first copy replaced by fresh
    random tokens, so there is nothing to copy from (wrong = the fresh copy's token at the same place); both the
    previous-token and the induction step see the change (K- and V-composition)."""
    special = set(getattr(subject.tokenizer, "all_special_ids", None) or [])
    vocab = [t for t in range(subject.model.config.vocab_size) if t not in special]
    rng, bos, examples = random.Random(seed), _ids(subject, "") if subject.tokenizer else (), []
    while len(examples) < n:
        tokens = templates.repeated_span(rng, vocab, span)
        k = rng.randrange(1, span)  # the prompt ends after k tokens of the repeat
        fresh = rng.sample([t for t in vocab[:4 * span] if t not in tokens], span)
        examples.append(Example(bos + tuple(tokens[:span + k]), bos + tuple(fresh + tokens[span:span + k]),
                                tokens[k], fresh[k], f"span of {span}, repeat cut after {k}"))
    return Task("induction", examples)


def loss(subject: Subject, n: int = 8, seed: int = 0, length: int = 128, text: str | None = None) -> Task:
    """Plain next-token loss on up to n chunks of `length` tokens of `text` (default: the zoo model's held-out
    text, else the CLI's sample paragraph); no corrupted prompts, no answers."""
    text = text or heldout_text(subject) or SAMPLE_TEXT
    ids, bos = _ids(subject, text[:20 * n * length], bos=False), _ids(subject, "")
    body = length - len(bos)
    chunks = [ids[i:i + body] for i in range(0, len(ids), body)][:n]
    chunks = [c for c in chunks if len(c) > 1] or [ids]
    return Task("loss", [Example(bos + tuple(c), None, None, None, f"{len(c)} tokens") for c in chunks])


def from_jsonl(subject: Subject, path: Path) -> Task:
    """A task from a JSONL file: one object per line with "clean" and "answer" (strings) and optionally
    "corrupted", "wrong" and "group" (the prompt's template; strings or null). A bad line raises TaskError naming
    the file and line."""
    path = Path(path)
    examples = []
    for where, row in json_lines(path, "task file", TaskError):
        if not isinstance(row, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
        unknown = sorted(set(row) - set(JSONL_KEYS))
        if unknown:
            raise TaskError(f"{where}: unknown key(s) {unknown}; expected {sorted(JSONL_KEYS)}")
        for key, required in JSONL_KEYS.items():
            value = row.get(key)
            if (required and value is None) or (value is not None and not isinstance(value, str)):
                raise TaskError(f"{where}: {key!r} must be a string{'' if required else ' or null'}, got {value!r}")
        corrupted = row.get("corrupted")
        wrong = row.get("wrong")
        examples.append(Example(_ids(subject, row["clean"]), None if corrupted is None else _ids(subject, corrupted),
                                _first(subject, row["answer"]), None if wrong is None else _first(subject, wrong),
                                row["clean"], row.get("group")))
    if not examples:
        raise TaskError(f"task file {str(path)!r} has no examples")
    return Task(path.stem, examples)


def load_task(subject: Subject, spec: str, n: int | None = None, seed: int = 0) -> Task:
    """A built-in task by name (n examples) or a task from a .jsonl file; TaskError naming an unknown one."""
    builders = {"loss": loss, "ioi": ioi, "needle": needle, "induction": induction}
    if spec in builders:
        return builders[spec](subject, seed=seed, **({} if n is None else {"n": n}))
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return from_jsonl(subject, Path(spec))
    raise TaskError(f"unknown task {spec!r}; use one of {list(BUILTIN)} or a .jsonl file")
