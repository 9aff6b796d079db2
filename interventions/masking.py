"""AttentionInfluence (Hua et al. 2025, "AttentionInfluence: Adopting Attention Head Influence for
Weak-to-Strong Pretraining Data Selection"): the loss difference of each document when a set of heads
(say the retrieval heads) is masked. Documents whose loss rises most lean hardest on those heads.

Masking here zero-ablates the heads' outputs (`workbench.interventions.heads.ablate`); `mode` takes the other
ablation modes too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.interventions.heads import ablate
from workbench.interventions.select import Head, check_heads
from workbench.probes.result import Result
from workbench.subject import Subject


def logits_and_loss(subject: Subject, text: str) -> tuple[torch.Tensor, float]:
    """One forward on `text`: the last position's logits [vocab] (float32) and the mean next-token
    cross-entropy (nats) of the model on the text."""
    enc = subject.encode(text)
    with torch.no_grad():
        logits = subject.model(**enc).logits[0].float()
    return logits[-1], float(torch.nn.functional.cross_entropy(logits[:-1], enc["input_ids"][0, 1:]))


def document_loss(subject: Subject, text: str) -> float:
    """Mean next-token cross-entropy (nats) of the model on `text`."""
    return logits_and_loss(subject, text)[1]


def attention_influence(subject: Subject, documents: Sequence[str], heads: Iterable[Head], mode: str = "zero",
                        reference=None) -> Result:
    """Per document: `loss` (plain), `loss_masked` (heads ablated) and `influence` = loss_masked - loss.

    Table rows at layer = head = -1 with a `document` column; arrays hold the three as [document] vectors.
    """
    heads = check_heads(subject, heads)
    base = np.array([document_loss(subject, doc) for doc in tqdm(documents, desc="plain", unit="doc")])
    with ablate(subject, heads, mode=mode, reference=reference):
        masked = np.array([document_loss(subject, doc) for doc in tqdm(documents, desc="masked", unit="doc")])
    frames = [pd.DataFrame({"layer": -1, "head": -1, "document": np.arange(len(documents)), "metric": name,
                            "value": values})
              for name, values in (("loss", base), ("loss_masked", masked), ("influence", masked - base))]
    return Result("attention_influence", pd.concat(frames, ignore_index=True),
                  {"loss": base, "loss_masked": masked, "influence": masked - base},
                  {"heads": [list(h) for h in heads], "mode": mode})
