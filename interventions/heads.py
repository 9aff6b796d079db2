"""Head-output edits: ablate (zero, mean, resample), scale, keep only a set of heads.

They act on the input of each attention's output projection (`workbench.head_outputs`), so they work with
any attention implementation (sdpa, eager or the workbench kernels) and compose with every other edit.
Mean ablation replaces a head's output by its mean over a reference dataset's tokens; resample ablation by
its output on another reference input at the same position (Chan et al. 2022, causal scrubbing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.head_outputs import head_output_hook, record_head_outputs
from workbench.interventions.select import Head, check_heads
from workbench.subject import Subject

MODES = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Reference:
    """Every head's output on reference inputs, recorded once (`record_reference`): outputs
    [layer, B, L, H, Dh] and the attention mask [B, L]. Pass it as `reference` to ablate many times
    without running the model on the reference inputs again."""

    outputs: torch.Tensor
    mask: torch.Tensor


def record_reference(subject: Subject, inputs) -> Reference:
    """Run the subject once on `inputs` (texts or token ids) and keep every head's output for ablations."""
    return Reference(*record_head_outputs(subject, inputs))


def _replacement(subject: Subject, mode: str, reference, seed: int):
    """fn(layer, x, heads) -> the values that replace heads' outputs in x [B, L, H, Dh]."""
    if mode not in MODES:
        raise WorkbenchError(f"unknown ablation mode {mode!r}; known: {list(MODES)}")
    if mode == "zero":
        return lambda layer, x, heads: torch.zeros_like(x[..., heads, :])
    if reference is None:
        raise WorkbenchError(f"{mode} ablation needs reference inputs")
    recorded = reference if isinstance(reference, Reference) else record_reference(subject, reference)
    outputs, mask = recorded.outputs, recorded.mask  # [layer, B, L, H, Dh], [B, L]
    if mode == "mean":
        real = mask[None, :, :, None, None].float()
        mean = (outputs * real).sum(dim=(1, 2)) / real.sum(dim=(1, 2))  # [layer, H, Dh]
        return lambda layer, x, heads: mean[layer, heads].to(x).expand(*x.shape[:2], len(heads), -1)
    generator = torch.Generator().manual_seed(seed)

    def resample(layer: int, x: torch.Tensor, heads: list[int]) -> torch.Tensor:
        batch, length = x.shape[:2]
        if length > outputs.shape[2]:
            raise WorkbenchError(f"resample ablation: inputs of {length} tokens are longer than the reference "
                                 f"inputs ({outputs.shape[2]} tokens)")
        rows = torch.randint(outputs.shape[1], (batch,), generator=generator)
        return outputs[layer, rows, :length][:, :, heads].to(x)

    return resample


@contextlib.contextmanager
def ablate(subject: Subject, heads: Iterable[Head], mode: str = "zero", reference=None,
           seed: int = 0) -> Iterator[None]:
    """Replace the outputs of `heads` while the block runs: zero, their mean over `reference`, or resampled
    from `reference` (texts or token ids at least as long as the inputs, or a `Reference` recorded once).
    Restores the model on exit."""
    heads = check_heads(subject, heads)
    replace = _replacement(subject, mode, reference, seed)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def edit(layer: int, x: torch.Tensor) -> torch.Tensor | None:
        chosen = by_layer.get(layer)
        if not chosen:
            return None
        x = x.clone()
        x[..., chosen, :] = replace(layer, x, chosen)
        return x

    with head_output_hook(subject, edit):
        yield


@contextlib.contextmanager
def scale(subject: Subject, heads: Iterable[Head], factor: float) -> Iterator[None]:
    """Multiply the outputs of `heads` by `factor` while the block runs (0 ablates, > 1 amplifies)."""
    heads = check_heads(subject, heads)

    def edit(layer: int, x: torch.Tensor) -> torch.Tensor | None:
        chosen = [h for l, h in heads if l == layer]
        if not chosen:
            return None
        x = x.clone()
        x[..., chosen, :] *= factor
        return x

    with head_output_hook(subject, edit):
        yield


@contextlib.contextmanager
def keep_only(subject: Subject, heads: Iterable[Head], mode: str = "zero", reference=None,
              seed: int = 0) -> Iterator[None]:
    """Ablate every head except `heads` (the circuit-alone view) while the block runs."""
    keep = set(check_heads(subject, heads))
    adapter = subject.adapter
    others = [(l, h) for l in range(adapter.n_layers) for h in range(adapter.n_heads) if (l, h) not in keep]
    with ablate(subject, others, mode=mode, reference=reference, seed=seed):
        yield
