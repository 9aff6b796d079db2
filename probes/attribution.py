"""Direct logit attribution (the logit lens applied to each component; Elhage et al. 2021, "A Mathematical Framework
for Transformer Circuits"; nostalgebraist 2020): what each attention head and each MLP writes into the residual
stream at the answer position, read through the final norm and the unembedding.

The final residual is the sum of the embedding, every head's output (through its slice of the output projection),
the output projections' biases and every MLP's output. The final norm is not linear, but with its scale frozen at
the clean run (the RMS, or LayerNorm's standard deviation, of the actual final residual) it is: N(x) = A x + b.
So each component c adds u . A c to the logit along a direction u, the unembedding row of the answer (or the answer
minus a wrong answer), and the contributions plus the bias terms sum to the model's final logit (difference)
exactly, to float precision. Models whose layers norm the attention and MLP outputs before adding them (Gemma 2 and
3) have those norms frozen the same way, at the clean run's attention / MLP output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.head_outputs import head_output_hook
from workbench.probes.result import LAYER_LEVEL, Result, head_rows, layer_rows
from workbench.probes.tasks import Task, encode
from workbench.subject import Subject

FINAL_NORM = {"gpt2": "ln_f", "gpt_neox": "final_layer_norm"}  # model_type -> path in base_model; else "norm"
MLP_OUTPUT = {"gemma2": "post_feedforward_layernorm", "gemma3_text": "post_feedforward_layernorm"}  # else "mlp"
ATTENTION_NORM = {"gemma2": "post_attention_layernorm", "gemma3_text": "post_attention_layernorm"}


@dataclass
class FrozenNorm:
    """A norm with its scale frozen at one input x: N_x(c) = gain * center(c) / scale(x) + bias (bias 0 for RMS)."""

    gain: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor
    centered: bool

    def linear(self, c: torch.Tensor) -> torch.Tensor:
        """The linear part applied to c [..., d] (no bias)."""
        if self.centered:
            c = c - c.mean(-1, keepdim=True)
        return self.gain * c / self.scale


def frozen_norm(norm: nn.Module, x: torch.Tensor) -> FrozenNorm:
    """Freeze `norm` (nn.LayerNorm or an RMS norm with gain w or 1 + w) at input x [d] (float64).

    Which gain an RMS norm uses (Llama's w, Gemma's 1 + w) is read off by checking N(x) itself."""
    weight = norm.weight.detach().double().to(x.device)
    if isinstance(norm, nn.LayerNorm):
        bias = torch.zeros_like(weight) if norm.bias is None else norm.bias.detach().double().to(x.device)
        return FrozenNorm(weight, torch.sqrt(x.var(unbiased=False) + norm.eps), bias, True)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise WorkbenchError(f"cannot read the epsilon of the norm {type(norm).__name__}")
    scale = torch.sqrt(x.pow(2).mean() + eps)
    with torch.no_grad():
        actual = norm(x.to(norm.weight.dtype)[None]).double()[0]
    for gain in (weight, 1.0 + weight):
        if torch.allclose(gain * x / scale, actual, rtol=1e-2, atol=1e-2 * float(actual.abs().max())):
            return FrozenNorm(gain, scale, torch.zeros_like(weight), False)
    raise WorkbenchError(f"the norm {type(norm).__name__} is neither a LayerNorm nor an RMS norm")


def _module(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _projection(proj: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W [d_model, heads x head_dim], bias) of an output projection: nn.Linear, or GPT-2's Conv1D ([in, out])."""
    weight = proj.weight.detach().double()
    weight = weight.T if type(proj).__name__ == "Conv1D" else weight
    return weight, None if proj.bias is None else proj.bias.detach().double()


def _record(subject: Subject, enc: dict[str, torch.Tensor]) -> tuple[dict[str, dict[int, torch.Tensor]], torch.Tensor]:
    """One clean run: per layer the heads' outputs, the attention output before its norm (where there is one), the
    MLP outputs, and the residual entering the first layer (0) and the final norm (1); and the logits."""
    adapter, model_type = subject.adapter, subject.adapter.model_type
    kept: dict[str, dict[int, torch.Tensor]] = {"heads": {}, "attention": {}, "mlp": {}, "residual": {}}

    def keep(kind: str, layer: int):
        def hook(module, args, kwargs, output=None):
            x = output if output is not None else (args[0] if args else kwargs["hidden_states"])
            kept[kind][layer] = (x[0] if isinstance(x, tuple) else x).detach()
        return hook

    handles = [adapter.layers[0].register_forward_pre_hook(keep("residual", 0), with_kwargs=True),
               _module(subject.model.base_model, FINAL_NORM.get(model_type, "norm")).register_forward_pre_hook(
                   keep("residual", 1), with_kwargs=True)]
    for layer, block in enumerate(adapter.layers):
        handles.append(_module(block, MLP_OUTPUT.get(model_type, "mlp")).register_forward_hook(
            keep("mlp", layer), with_kwargs=True))
        if model_type in ATTENTION_NORM:
            handles.append(_module(block, ATTENTION_NORM[model_type]).register_forward_pre_hook(
                keep("attention", layer), with_kwargs=True))

    def heads(layer: int, x: torch.Tensor) -> None:
        kept["heads"][layer] = x.detach()

    try:
        with torch.no_grad(), head_output_hook(subject, heads):
            logits = subject.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                   use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    return kept, logits.detach()


def direct_logit_attribution(subject: Subject, task: Task) -> Result:
    """Each head's and MLP's direct contribution to the task's metric at each prompt's last position: the logit
    of the answer's first token, or logit(answer) - logit(wrong) where the task has wrong answers.

    Table: per head `dla`, per layer (head = -1) `mlp_dla` and `attention_dla` (its heads plus its output bias),
    and at layer = head = -1 `embedding_dla`, `bias_dla` (final norm, unembedding and output-projection biases),
    `logit` (the model's own logit (difference), softcapping left out) and `reconstruction_error` (the largest
    |sum of the terms - logit|); all means over the examples. Arrays: per example `heads` [n, layer, head], `mlp`
    and `attention_bias` [n, layer], `embedding`, `bias` and `logit` [n].
    """
    adapter = subject.adapter
    unembed = subject.model.get_output_embeddings()
    if unembed is None:
        raise WorkbenchError(f"model {subject.name!r} has no unembedding (language-model head) to attribute to")
    if task.examples[0].answer is None:
        raise WorkbenchError(f"task {task.name!r} has no answers to attribute")
    if getattr(subject.model.config, "final_logit_softcapping", None):
        raise WorkbenchError(f"model {subject.name!r} softcaps its logits: the attribution would not sum to them")
    enc = encode(subject, "clean", task)
    kept, logits = _record(subject, enc)
    final_norm = _module(subject.model.base_model, FINAL_NORM.get(adapter.model_type, "norm"))
    w_u = unembed.weight.detach().double()
    b_u = None if unembed.bias is None else unembed.bias.detach().double()
    projections = [_projection(p) for p in adapter.out_projections]
    n, dh = len(task.examples), adapter.head_dim
    out = {"heads": np.zeros((n, adapter.n_layers, adapter.n_heads)), "mlp": np.zeros((n, adapter.n_layers)),
           "attention_bias": np.zeros((n, adapter.n_layers)), "embedding": np.zeros(n), "bias": np.zeros(n),
           "logit": np.zeros(n)}
    for i, example in enumerate(task.examples):
        t = int(enc["last"][i])
        u = w_u[example.answer] - (0 if example.wrong is None else w_u[example.wrong])
        norm = frozen_norm(final_norm, kept["residual"][1][i, t].double())

        def read(c: torch.Tensor, u: torch.Tensor = u, norm: FrozenNorm = norm) -> float:
            return float(u @ norm.linear(c))  # the logit-lens read of a residual vector

        out["embedding"][i] = read(kept["residual"][0][i, t].double())
        bias = float(u @ norm.bias)
        if b_u is not None:
            bias += float(b_u[example.answer] - (0 if example.wrong is None else b_u[example.wrong]))
        for layer, (weight, o_bias) in enumerate(projections):
            z = kept["heads"][layer][i, t].double()  # [H, Dh]
            per_head = torch.einsum("dhk,hk->hd", weight.view(-1, adapter.n_heads, dh), z)  # [H, d_model]
            o_bias = torch.zeros_like(per_head[0]) if o_bias is None else o_bias
            if layer in kept["attention"]:  # Gemma 2/3: the attention output is normed before the residual add
                post = frozen_norm(_module(adapter.layers[layer], ATTENTION_NORM[adapter.model_type]),
                                   kept["attention"][layer][i, t].double())
                per_head, o_bias = post.linear(per_head), post.linear(o_bias) + post.bias
            out["heads"][i, layer] = [read(c) for c in per_head]
            out["attention_bias"][i, layer] = read(o_bias)
            out["mlp"][i, layer] = read(kept["mlp"][layer][i, t].double())
        out["bias"][i] = bias
        final = logits[i, t].double()
        out["logit"][i] = float(final[example.answer] - (0 if example.wrong is None else final[example.wrong]))
    return _result(task, out)


def _result(task: Task, out: dict[str, np.ndarray]) -> Result:
    total = (out["heads"].sum((1, 2)) + out["mlp"].sum(1) + out["attention_bias"].sum(1) + out["embedding"]
             + out["bias"])
    error = float(np.abs(total - out["logit"]).max())
    model = pd.DataFrame({"layer": LAYER_LEVEL, "head": LAYER_LEVEL,
                          "metric": ["embedding_dla", "bias_dla", "logit", "reconstruction_error"],
                          "value": [out["embedding"].mean(), (out["bias"] + out["attention_bias"].sum(1)).mean(),
                                    out["logit"].mean(), error]})
    table = pd.concat([head_rows(out["heads"].mean(0), "dla"), layer_rows(out["mlp"].mean(0), "mlp_dla"),
                       layer_rows((out["heads"].sum(2) + out["attention_bias"]).mean(0), "attention_dla"), model],
                      ignore_index=True)
    wrong = all(e.wrong is not None for e in task.examples)
    params = {"task": task.name, "examples": len(task.examples), "direction": "answer - wrong" if wrong else "answer"}
    return Result("logit_attribution", table, out, params)
