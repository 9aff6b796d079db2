"""Circuits: which heads and MLPs carry a task, found on clean/corrupted prompt pairs (`workbench.probes.tasks`).

- `patching`: activation patching of head outputs, of the residual stream by layer and position, and of
  attention patterns;
- `path_patching`: the direct path from a sender to a receiver (Wang et al. 2022);
- `eap`: edge attribution patching (Syed et al. 2023) and EAP-IG (Hanna et al. 2024) over the residual graph
  of `graph` (input, heads, MLPs, logits);
- `circuit`: a circuit from edge scores (top-k / threshold), its faithfulness, overlap, JSON and figure;
- `discover.find_circuit`: all of it in one call; `cli`: `workbench circuit`;
- `reuse.circuit_reuse`: the heads several tasks' circuits share (Merullo et al. 2023); `workbench reuse`.
"""

from workbench.probes.circuits.circuit import Circuit, circuit_figure, faithfulness, overlap, select
from workbench.probes.circuits.discover import find_circuit
from workbench.probes.circuits.eap import attribution_scores, node_scores
from workbench.probes.circuits.patching import patch_heads, patch_patterns, patch_residual
from workbench.probes.circuits.path_patching import path_patch
from workbench.probes.circuits.reuse import circuit_reuse

__all__ = ["Circuit", "attribution_scores", "circuit_figure", "circuit_reuse", "faithfulness", "find_circuit",
           "node_scores", "overlap", "patch_heads", "patch_patterns", "patch_residual", "path_patch", "select"]
