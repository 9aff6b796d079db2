"""Take chosen directions out of a head's output: the subspace intervention of Merullo et al. 2024 ("Talking Heads:
Understanding Inter-layer Communication in Transformer Language Models").

A head writes z W_O into the residual stream (z [dh]: its output at the output projection's input). For
orthonormal residual directions D [k, d] in the row space of W_O (such as a head's W_OV output directions,
`workbench.probes.composition.ov_directions`), the edit makes the head write z W_O (I - D^T D) instead, i.e. it
replaces z by z - (z W_O D^T)(D W_O^+), so every other direction of what the head writes is left as it was.
It goes through the output-projection seam (`workbench.head_outputs`), so it composes with every other edit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch

from workbench.errors import WorkbenchError
from workbench.head_outputs import head_output_hook
from workbench.interventions.select import Head, check_heads
from workbench.probes.composition import ov_directions
from workbench.probes.weights import head_weights
from workbench.subject import Subject


@contextlib.contextmanager
def project_out(subject: Subject, directions: Mapping[Head, torch.Tensor]) -> Iterator[None]:
    """While the block runs, remove from each head's residual-stream output its part along directions[head]
    ([k, d] orthonormal rows in the row space of the head's W_O; WorkbenchError otherwise)."""
    heads = check_heads(subject, directions)
    w_o = head_weights(subject).W_O
    maps: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for head, d in zip(heads, directions.values(), strict=True):
        d = torch.as_tensor(d, dtype=torch.float64).reshape(-1, w_o.shape[-1])
        if not torch.allclose(d @ d.T, torch.eye(len(d), dtype=torch.float64), atol=1e-6):
            raise WorkbenchError(f"the directions of head {head} are not orthonormal rows")
        o = w_o[head]
        back = d @ torch.linalg.pinv(o)  # [k, dh]: back @ W_O = d where d lies in W_O's row space
        if not torch.allclose(back @ o, d, atol=1e-4):
            raise WorkbenchError(f"the directions of head {head} are not in the span of what it can write")
        maps.setdefault(head[0], []).append((head[1], o @ d.T, back))

    def edit(layer: int, x: torch.Tensor) -> torch.Tensor | None:
        if layer not in maps:
            return None
        x = x.clone()
        for head, read, back in maps[layer]:
            z = x[..., head, :]
            x[..., head, :] = z - (z @ read.to(z)) @ back.to(z)
        return x

    with head_output_hook(subject, edit):
        yield


@contextlib.contextmanager
def remove_components(subject: Subject, components: Mapping[Head, Sequence[int]]) -> Iterator[None]:
    """While the block runs, take the W_OV output directions numbered components[head] (0 = the largest singular
    value, as in `composition_scores`' arrays) out of each head's output."""
    n = subject.adapter.head_dim
    for head, chosen in components.items():
        bad = [i for i in chosen if not 0 <= int(i) < n]
        if bad or not chosen:
            raise WorkbenchError(f"components {list(chosen)} of head {head}: give indices in 0..{n - 1}")
    with project_out(subject, {head: ov_directions(subject, head, chosen) for head, chosen in components.items()}):
        yield
