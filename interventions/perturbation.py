"""SoftPAG: interpolate chosen heads' attention toward the identity map, in-kernel.

Perturbed-Attention Guidance (Ahn et al. 2024) replaces a head's attention map by the identity; its soft
form interpolates, out_i = (1 - a) attn_out_i + a v_i with a in [0, 1]; a = 1 is the full perturbation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from workbench.errors import WorkbenchError
from workbench.interventions.select import Head, check_heads, per_head_edits
from workbench.subject import Subject
from workbench.tracer import capture


@contextlib.contextmanager
def soft_pag(subject: Subject, heads: Iterable[Head], strength: float) -> Iterator[None]:
    """Interpolate `heads`' attention toward the identity by `strength` in [0, 1] while the block runs."""
    if not 0.0 <= strength <= 1.0:
        raise WorkbenchError(f"SoftPAG strength {strength} is outside [0, 1]")
    values = {head: strength for head in check_heads(subject, heads)}
    with capture(subject, stats=(), edits=per_head_edits(subject, "identity_mix", values, 0.0)):
        yield
