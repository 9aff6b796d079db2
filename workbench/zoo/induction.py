"""`induction-2l`: a 2-layer attention-only transformer trained on repeated random spans.

Olsson et al. 2022: on such data a two-layer attention-only model forms a previous-token head in layer 0
and an induction head in layer 1 that reads it (K-composition). The model is a stock Hugging Face GPT-2
(learned absolute positions, as in the paper's models; with RoPE a first trial solved the task without a
previous-token head) whose MLPs are switched off: inner size 1 with every MLP weight and bias zero and
frozen, so each MLP adds exactly 0 and the residual stream sees attention only. Tokens are the words t0..tN of a
word-level tokenizer, so prompts can be written as text.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from workbench.zoo.tasks import repeated_span

SPECIAL = ["<s>", "</s>"]


def tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: <s>=0, </s>=1, then t0..t{vocab-3}."""
    words = SPECIAL + [f"t{i}" for i in range(vocab - len(SPECIAL))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   unk_token="</s>")


def build(vocab: int, d_model: int, heads: int, context: int) -> GPT2LMHeadModel:
    """The attention-only GPT-2: MLP weights and biases zero and frozen; no dropout."""
    config = GPT2Config(vocab_size=vocab, n_embd=d_model, n_layer=2, n_head=heads, n_positions=context, n_inner=1,
                        bos_token_id=0, eos_token_id=1, pad_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    for layer in model.transformer.h:
        for p in layer.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)
    return model


def batches(rng: random.Random, vocab: int, span: int, batch: int):
    """Endless (ids, labels) of 1 + 3 x `span` tokens: BOS, a random prefix of 0..span/2 tokens, a random span of
    span/4..span tokens, the same span again, random filler. Labels keep only the repeat after its first token,
    the part that in-context copying can predict. The varying offsets leave content matching (an induction
    circuit) as the only way to predict it: a fixed offset would be solved by position alone."""
    pool = list(range(len(SPECIAL), vocab))
    total = 1 + 3 * span
    while True:
        rows, labels = [], []
        for _ in range(batch):
            prefix = [rng.choice(pool) for _ in range(rng.randrange(span // 2 + 1))]
            length = rng.randrange(span // 4, span + 1)
            row = [0] + prefix + repeated_span(rng, pool, length)
            second = len(row) - length  # where the repeat starts
            row += [rng.choice(pool) for _ in range(total - len(row))]
            rows.append(row)
            labels.append([t if second < i < second + length else -100 for i, t in enumerate(row)])
        yield torch.tensor(rows), torch.tensor(labels)


def train(out: Path, seed: int = 0, steps: int | None = None, toy: bool = False) -> dict:
    """Train, save to `out` (fp16), measure the head types, write the card; return the metrics."""
    from workbench.zoo.train import train_loop

    vocab, d_model, heads, span = (64, 32, 2, 12) if toy else (512, 128, 4, 48)
    steps = steps or (30 if toy else 8000)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(vocab, d_model, heads, context=4 * span).to(device)  # sequences are 1 + 3 x span long
    data = ((ids.to(device), labels.to(device)) for ids, labels in batches(random.Random(seed), vocab, span, 32))
    losses = train_loop(model, data, steps, lr=1e-3)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu", torch.float16).save_pretrained(out)
    tokenizer(vocab).save_pretrained(out)
    metrics = measure(out, span)
    metrics.update({"seed": seed, "steps": steps, "batch": 32, "span": span, "vocab": vocab - len(SPECIAL),
                    "final_loss": sum(losses[-50:]) / len(losses[-50:]),
                    "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)})
    write_card(out, metrics)
    return metrics


def measure(folder: Path, span: int) -> dict:
    """Previous-token and induction scores of every head (workbench's own probe), on held-out random spans."""
    import workbench
    from workbench.probes.heads import head_types

    subject = workbench.load(str(folder), device="cpu")
    result = head_types(subject, length=span, batch=8, seed=12345)
    prev, induction = result.arrays["prev_token"], result.arrays["induction"]
    prev_head = (0, int(prev[0].argmax()))
    induction_head = (1, int(induction[1].argmax()))
    return {"prev_token_head": prev_head, "prev_token_score": float(prev[prev_head]),
            "induction_head": induction_head, "induction_score": float(induction[induction_head]),
            "prev_token": prev.round(4).tolist(), "induction": induction.round(4).tolist()}


def write_card(folder: Path, m: dict) -> None:
    (folder / "MODEL_CARD.md").write_text(f"""# induction-2l

A 2-layer attention-only transformer (Hugging Face GPT-2 with learned positions; MLPs switched off: inner
size 1 with all MLP weights and biases zero and frozen) trained on repeated random token spans, where in-context copying needs an
induction circuit (Olsson et al. 2022, "In-context Learning and Induction Heads").

- Data: {1 + 3 * m['span']} tokens: BOS, a random prefix of 0-{m['span'] // 2} tokens, a span of {m['span'] // 4}-{m['span']}
  uniformly random tokens (of {m['vocab']} words t0..t{m['vocab'] - 1}), the same span again, random filler;
  next-token loss on the repeat (after its first token) only. The varying offset forces content matching.
  Seed {m['seed']}.
- Size: {m['parameters']:,} trainable parameters; 2 layers, 4 heads, d_model 128; weights in fp16.
- Training: {m['steps']} steps of batch {m['batch']}, AdamW (lr 1e-3, warm-up, cosine), final loss on the
  repeat {m['final_loss']:.3f} nats (chance: log {m['vocab']} = {math.log(m['vocab']):.2f}).
- Recipe: `python -m workbench.zoo.train induction-2l` (on a GPU when there is one: 95 s on an H100; at 0.11 s a step, about 15 minutes on 2 CPU cores).

## Mechanisms, measured with `workbench.probes.heads.head_types` on 8 held-out repeated spans (seed 12345)

| role | head | score |
|---|---|---|
| previous-token head | L{m['prev_token_head'][0]}.H{m['prev_token_head'][1]} | prev_token = {m['prev_token_score']:.3f} |
| induction head | L{m['induction_head'][0]}.H{m['induction_head'][1]} | induction = {m['induction_score']:.3f} |

Scores: prev_token = mean attention from each token to the one before it; induction = mean attention from a
repeated token to the token that followed its earlier occurrence. All heads (rows = layers):

- prev_token: {m['prev_token']}
- induction: {m['induction']}
""")
