"""Head edits as context managers over a Subject; each restores the model on exit, also on error, and they compose.

Head-output edits (`heads`: ablate, scale, keep_only) act on the input of each attention's output projection;
attention-weight edits (`perturbation.soft_pag`, `reinforcement.reinforce`, `zerotuning.scale_initial`,
`calibration.calibrate`, `redistribution.redistribute`, `learned_sinks.scale_learned_sinks`,
`block_sparse.block_sparse`) are `kernels.HeadEdits` that the attention kernel applies in-pass;
`block_sparse.sparsity_sweep` scores a task under sparsity budgets.
`components.remove_components` takes chosen directions out of a head's output (also a head-output edit).
`masking.attention_influence` measures what masking a set of heads does to each document's loss;
`search.head_search` grows the head set whose edit moves an objective most.
"""

from workbench.interventions.block_sparse import block_sparse, sparsity_sweep
from workbench.interventions.calibration import calibrate, find_hidden_sinks
from workbench.interventions.components import project_out, remove_components
from workbench.interventions.heads import ablate, keep_only, scale
from workbench.interventions.learned_sinks import scale_learned_sinks
from workbench.interventions.masking import attention_influence
from workbench.interventions.perturbation import soft_pag
from workbench.interventions.redistribution import redistribute
from workbench.interventions.reinforcement import reinforce
from workbench.interventions.search import head_search
from workbench.interventions.zerotuning import scale_initial, search_scale

__all__ = ["ablate", "attention_influence", "block_sparse", "calibrate", "find_hidden_sinks", "head_search",
           "keep_only", "project_out", "redistribute", "reinforce", "remove_components", "scale", "scale_initial",
           "scale_learned_sinks", "search_scale", "soft_pag", "sparsity_sweep"]
