"""The Subject: a loaded Hugging Face model, its tokenizer and its architecture adapter, in one handle.

Every tracer, probe and intervention takes a Subject. `bridge()` and `nnsight()` wrap the same model in
TransformerLens 4's TransformerBridge or nnsight's LanguageModel, so users can move between those APIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.adapters import Adapter, adapter_for
from workbench.errors import ContextLengthError, WorkbenchError


@dataclass
class Subject:
    """A model under study. `name` is the zoo / registry name, folder or hub id it was loaded from."""

    model: nn.Module
    tokenizer: object | None
    name: str
    adapter: Adapter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.adapter = adapter_for(self.model)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the model's device, or for a model sharded by a device_map, the device its input
        embeddings run on (accelerate moves each layer's inputs on from there)."""
        embeddings = self.model.get_input_embeddings()
        hook = getattr(embeddings, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
        return next(self.model.parameters()).device

    def encode(self, inputs: str | Sequence[str] | torch.Tensor | Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Token ids [B, L] and attention_mask [B, L] (1 = real token) for texts or token ids, on the model's device.

        Texts are tokenized with the tokenizer's defaults (its BOS and padding side); lists of token ids are
        right-padded. A sequence longer than the model's context raises ContextLengthError naming both lengths.
        """
        if isinstance(inputs, str) or (isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], str)):
            if self.tokenizer is None:
                raise WorkbenchError(f"model {self.name!r} has no tokenizer: pass token ids instead of text")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
            enc = self.tokenizer(texts, return_tensors="pt", padding=True)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids, mask = _pad_ids(inputs)
        if ids.numel() == 0 or ids.shape[1] == 0:
            raise WorkbenchError("nothing to run: the input has no tokens")
        limit = self.adapter.context_length
        longest = int(mask.sum(-1).max())
        if longest > limit:
            raise ContextLengthError(f"input of {longest} tokens is longer than the context of {self.name} "
                                     f"({limit} tokens)")
        vocab = self.model.config.vocab_size
        if int(ids.max()) >= vocab or int(ids.min()) < 0:
            raise WorkbenchError(f"token id {int(ids.max())} is outside the vocabulary of {vocab} tokens")
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def token_strings(self, ids: torch.Tensor) -> list[list[str]]:
        """The token strings of each row of `ids` (ids as text when there is no tokenizer)."""
        rows = ids.tolist()
        if self.tokenizer is None:
            return [[str(t) for t in row] for row in rows]
        return [self.tokenizer.convert_ids_to_tokens(row) for row in rows]

    def bridge(self):
        """A TransformerLens 4 TransformerBridge over this same model (it switches the model's attention to eager).

        Under a `workbench.capture` of this subject, the bridge's attention layers run the workbench kernels
        (statistics and in-kernel edits; see `workbench.bridge`); outside one, TransformerLens's own."""
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(
            self.model.config._name_or_path or self.name, hf_model=self.model, tokenizer=self.tokenizer,
            device=str(self.device), dtype=next(self.model.parameters()).dtype,
        )

    def nnsight(self):
        """An nnsight LanguageModel over this same model."""
        from nnsight import LanguageModel

        return LanguageModel(self.model, tokenizer=self.tokenizer)


def _pad_ids(inputs: torch.Tensor | Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.ndim == 2 else inputs[None]
        return ids.long(), torch.ones_like(ids, dtype=torch.long)
    rows = list(inputs)
    if rows and isinstance(rows[0], int):
        rows = [rows]
    rows = [list(r) for r in rows]
    width = max((len(r) for r in rows), default=0)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
