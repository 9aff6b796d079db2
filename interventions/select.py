"""Turning a list of (layer, head) pairs and per-head values into per-layer HeadEdits for the kernels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from workbench.kernels import HeadEdits
from workbench.subject import Subject

Head = tuple[int, int]


def check_heads(subject: Subject, heads: Iterable[Head]) -> list[Head]:
    """The heads as a list of (layer, head) int pairs; HeadNotFoundError for one the model lacks."""
    heads = [(int(layer), int(head)) for layer, head in heads]
    for layer, head in heads:
        subject.adapter.check_head(layer, head)
    return heads


def per_head_edits(subject: Subject, field: str, values: Mapping[Head, float], identity: float) -> dict[int, HeadEdits]:
    """HeadEdits with `field` set to values[(layer, head)] on the given heads and `identity` elsewhere."""
    by_layer: dict[int, torch.Tensor] = {}
    for (layer, head), value in values.items():
        subject.adapter.check_head(layer, head)
        row = by_layer.setdefault(layer, torch.full((subject.adapter.n_heads,), float(identity)))
        row[head] = float(value)
    return {layer: HeadEdits(**{field: row}) for layer, row in by_layer.items()}


def key_bias_edits(subject: Subject, biases: Mapping[Head, Mapping[int, float]]) -> dict[int, HeadEdits]:
    """HeadEdits adding `biases[(layer, head)][key_position]` to those heads' logits of those keys."""
    by_layer: dict[int, dict[Head, Mapping[int, float]]] = {}
    for (layer, head), keys in biases.items():
        subject.adapter.check_head(layer, head)
        by_layer.setdefault(layer, {})[(layer, head)] = keys
    edits = {}
    for layer, heads in by_layer.items():
        positions = sorted({int(p) for keys in heads.values() for p in keys})
        bias = torch.zeros(subject.adapter.n_heads, len(positions))
        for (_, head), keys in heads.items():
            for p, value in keys.items():
                bias[head, positions.index(int(p))] = float(value)
        edits[layer] = HeadEdits(key_bias=bias, bias_keys=torch.tensor(positions))
    return edits
