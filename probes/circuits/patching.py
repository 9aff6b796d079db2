"""Activation patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022): run the model on one prompt of each
pair with one activation taken from the other prompt, and score the task.

- `patch_heads`: each head's output (the input of the output projection, `workbench.head_outputs`);
- `patch_residual`: the residual stream entering each layer, one position at a time (forward pre-hooks on the
  layers);
- `patch_patterns`: each head's attention pattern, on an eager attention entry of transformers'
  AttentionInterface (materializes [batch, head, q, k]: for small inputs).
source="corrupted" (noising, the default) patches corrupted activations into the clean run; source="clean"
(denoising) the reverse. Every table has `patched` (the task metric's mean), `effect` (patched minus the
unpatched run) and `normalized` (clean run = 1, corrupted run = 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from workbench import parallel
from workbench.errors import WorkbenchError
from workbench.head_outputs import head_output_hook, record_head_outputs
from workbench.probes.circuits.graph import sites
from workbench.probes.result import Result
from workbench.probes.tasks import Task, evaluate, normalized
from workbench.subject import Subject

PATTERN_IMPLEMENTATION = "workbench_pattern_patch"


def _sides(task: Task, source: str) -> tuple[str, str]:
    if source not in ("clean", "corrupted"):
        raise WorkbenchError(f"patching source must be 'clean' or 'corrupted', got {source!r}")
    task.check_pairs()
    return source, "clean" if source == "corrupted" else "corrupted"


def _rows(task: Task, which: str) -> list[list[int]]:
    return [list(e.clean if which == "clean" else e.corrupted) for e in task.examples]


def _table(subject: Subject, task: Task, target: str, units: list[tuple], run: Callable[[tuple], float],
           name: str, columns: tuple[str, ...]) -> Result:
    """Score run(unit) for each unit; rows (columns..., metric, value) of patched / effect / normalized."""
    clean = float(evaluate(subject, task, "clean")[task.metric].mean())
    corrupted = float(evaluate(subject, task, "corrupted")[task.metric].mean())
    base = clean if target == "clean" else corrupted
    rows = []
    for unit, patched in zip(units, parallel.map_items(run, units, desc=f"patching {name}", unit="run"), strict=True):
        for metric, value in (("patched", patched), ("effect", patched - base),
                              ("normalized", normalized(patched, clean, corrupted))):
            rows.append((*unit, metric, value))
    table = pd.DataFrame(rows, columns=[*columns, "metric", "value"])
    return Result(name, table, {}, {"task": task.name, "metric": task.metric, "target": target,
                                   "clean": clean, "corrupted": corrupted})


def _per_head(subject: Subject, task: Task, target: str, run: Callable[[tuple], float], name: str) -> Result:
    """_table over every (layer, head), with [layer, head] arrays of patched / effect / normalized."""
    a = subject.adapter
    units = [(l, h) for l in range(a.n_layers) for h in range(a.n_heads)]
    result = _table(subject, task, target, units, run, name, ("layer", "head"))
    result.arrays = {m: result.head_matrix(m) for m in ("patched", "effect", "normalized")}
    return result


def patch_heads(subject: Subject, task: Task, source: str = "corrupted") -> Result:
    """Patch each head's output from `source` prompts into the other run; rows per (layer, head)."""
    source, target = _sides(task, source)
    outputs, _ = record_head_outputs(subject, _rows(task, source))  # [layer, B, L, H, Dh]

    def run(unit: tuple[int, int]) -> float:
        layer, head = unit

        def edit(l: int, x: torch.Tensor) -> torch.Tensor | None:
            if l != layer:
                return None
            x = x.clone()
            x[:, :, head] = outputs[layer, :, :, head].to(x)
            return x

        with head_output_hook(subject, edit):
            return float(evaluate(subject, task, target)[task.metric].mean())

    return _per_head(subject, task, target, run, "patch_heads")


@contextlib.contextmanager
def residual_hooks(subject: Subject, fn: Callable[[int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Call fn(layer, x) with the residual stream x [B, L, d] entering each layer; a tensor it returns replaces x."""
    def make(layer: int):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            new = fn(layer, x)
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        return hook

    handles = [m.register_forward_pre_hook(make(l), with_kwargs=True) for l, m in enumerate(sites(subject).layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def patch_residual(subject: Subject, task: Task, source: str = "corrupted") -> Result:
    """Patch the residual stream entering each layer at each position; rows per (layer, position), head = -1."""
    source, target = _sides(task, source)
    kept: dict[int, torch.Tensor] = {}
    with residual_hooks(subject, lambda layer, x: kept.__setitem__(layer, x.detach().clone())):
        evaluate(subject, task, source)

    def run(unit: tuple[int, int, int]) -> float:
        layer, _, pos = unit

        def edit(l: int, x: torch.Tensor) -> torch.Tensor | None:
            if l != layer:
                return None
            x = x.clone()
            x[:, pos] = kept[layer][:, pos]
            return x

        with residual_hooks(subject, edit):
            return float(evaluate(subject, task, target)[task.metric].mean())

    length = max(len(e.clean) for e in task.examples)
    units = [(l, -1, p) for l in range(subject.adapter.n_layers) for p in range(length)]
    result = _table(subject, task, target, units, run, "patch_residual", ("layer", "head", "position"))
    rows = result.metric("normalized")
    grid = np.full((subject.adapter.n_layers, length), np.nan)
    grid[rows.layer.to_numpy(int), rows.position.to_numpy(int)] = rows.value.to_numpy(float)
    result.arrays = {"normalized": grid}
    return result


_PATTERNS: list[dict] = []  # the active pattern-patching state: {"layer_of", "record", "replace"}


def _pattern_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                       softcap: float | None = None, **kwargs):
    """Eager attention that records each layer's pattern [B, H, q, k] and imposes replaced heads' patterns."""
    state = _PATTERNS[-1]
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = (query @ key.transpose(-1, -2)).float() * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
            else scores + attention_mask.float()
    p = scores.softmax(-1)
    layer = state["layer_of"][id(module)]
    state["record"][layer] = p.detach()
    for head, pattern in state["replace"].get(layer, {}).items():
        p = p.clone()
        p[:, head] = pattern.to(p)
    return (p.to(value.dtype) @ value).transpose(1, 2).contiguous(), p


AttentionInterface.register(PATTERN_IMPLEMENTATION, _pattern_attention)
AttentionMaskInterface.register(PATTERN_IMPLEMENTATION, eager_mask)


@contextlib.contextmanager
def pattern_patching(subject: Subject, replace: dict[int, dict[int, torch.Tensor]] | None = None) -> Iterator[dict]:
    """Run attention eagerly while the block runs: yields {layer: pattern [B, H, q, k]} of the last run and imposes
    `replace[layer][head]` = pattern [B, q, k]. The model's attention implementation is restored on exit."""
    state = {"layer_of": subject.adapter.layer_of(), "record": {}, "replace": replace or {}}
    model = subject.model
    previous = model.config._attn_implementation
    model.set_attn_implementation(PATTERN_IMPLEMENTATION)
    _PATTERNS.append(state)
    try:
        yield state["record"]
    finally:
        _PATTERNS.remove(state)
        model.set_attn_implementation(previous)


def patch_patterns(subject: Subject, task: Task, source: str = "corrupted") -> Result:
    """Patch each head's attention pattern from `source` prompts into the other run; rows per (layer, head)."""
    source, target = _sides(task, source)
    with pattern_patching(subject) as recorded:
        evaluate(subject, task, source)
    patterns = dict(recorded)

    def run(unit: tuple[int, int]) -> float:
        layer, head = unit
        with pattern_patching(subject, {layer: {head: patterns[layer][:, head]}}):
            return float(evaluate(subject, task, target)[task.metric].mean())

    return _per_head(subject, task, target, run, "patch_patterns")
