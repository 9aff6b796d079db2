"""Head edits as context managers over a Subject; each restores the model on exit, also on error, and they compose.

Head-output edits (`heads`: ablate, scale, keep_only) act on the input of each attention's output projection;
attention-weight edits (`perturbation.soft_pag`, `reinforcement.reinforce`, `zerotuning.scale_initial`,
`calibration.calibrate`, `redistribution.redistribute`, `learned_sinks.scale_learned_sinks`) are
`kernels.HeadEdits` that the attention kernel applies in-pass.
`masking.attention_influence` measures what masking a set of heads does to each document's loss.
"""

from workbench.interventions.calibration import calibrate, find_hidden_sinks
from workbench.interventions.heads import ablate, keep_only, scale
from workbench.interventions.learned_sinks import scale_learned_sinks
from workbench.interventions.masking import attention_influence
from workbench.interventions.perturbation import soft_pag
from workbench.interventions.redistribution import redistribute
from workbench.interventions.reinforcement import reinforce
from workbench.interventions.zerotuning import scale_initial, search_scale

__all__ = ["ablate", "attention_influence", "calibrate", "find_hidden_sinks", "keep_only", "redistribute",
           "reinforce", "scale", "scale_initial", "scale_learned_sinks", "search_scale", "soft_pag"]
