"""Train a zoo model from a seed: `python -m workbench.zoo.train NAME [--toy] [--steps N] [--out DIR]`.

NAME is `induction-2l` (CPU, a minute) or `organism` (GPU, minutes on an H100; --toy runs a tiny version on
the CPU; then `--card` measures it on the CPU and writes its card). The model folder (config, fp16
safetensors, tokenizer) and its metrics go to --out (default: the zoo folder of NAME), and MODEL_CARD.md is
written from the measured metrics.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from workbench.zoo import ZOO_DIR


def train_loop(model, batches, steps: int, lr: float, log_every: int = 100) -> list[float]:
    """AdamW with linear warm-up and cosine decay; returns the loss of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(min(1.0, s / steps) * torch.pi)).item()))
    losses, start = [], time.time()
    model.train()
    for step in range(steps):
        ids, labels = next(batches)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.4f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=["induction-2l", "organism"])
    parser.add_argument("--toy", action="store_true", help="a tiny, fast version (CPU), for tests")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--corpus", type=Path, default=None, help="organism: a corpus saved by corpus.save")
    parser.add_argument("--minutes", type=float, default=None,
                        help="organism: stop after this many minutes on the clock (steps then depend on the GPU)")
    parser.add_argument("--card", action="store_true",
                        help="organism: measure the model trained into --out (CPU, minutes) and write its card")
    args = parser.parse_args()
    out = args.out or ZOO_DIR / args.name
    if args.card:
        from workbench.zoo.organism import measure, write_card

        facts = json.loads((out / "metrics.json").read_text())
        measured = measure(out)
        write_card(out, facts, measured)
        (out / "metrics.json").write_text(json.dumps({**facts, **measured}, indent=1))
        return
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.name == "induction-2l":
        from workbench.zoo.induction import train

        metrics = train(out, seed=args.seed, steps=args.steps, toy=args.toy)
    else:
        from workbench.zoo.organism import train

        metrics = train(out, seed=args.seed, steps=args.steps, toy=args.toy, corpus_file=args.corpus,
                        minutes=args.minutes)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
