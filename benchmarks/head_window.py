"""Moving the app's head-view window: seconds per move, against tracing the whole text again.

The app's head view draws one head's attention over a window of 48 positions of a traced text. Moving the
window computes the new window from the layer's attention inputs (q and k after the position encoding), kept
from one forward stopped at that layer (`workbench.probes.windows.layer_inputs`). This script measures, on
random tokens of each --lengths (batch 1, the model as `workbench.load` gives it on this machine):
  full_trace     workbench.trace keeping only that window's pattern: what a move would cost without kept inputs
  layer_inputs   the forward stopped at the layer (paid once per layer, on the first head of that layer opened)
  window_move    one move: the 48 x 48 window from the kept inputs (median of --moves moves at random starts)
  query_window   one query's attention over its last 256 keys from the kept inputs (a click on a position)
The layer is the model's middle layer, the head its first.

Usage: python benchmarks/head_window.py [--model smollm2-135m] [--lengths 1024,4096] [--moves 20]
  [--out benchmarks/results]
Writes head_window_<model>_<cpu or gpu>.json and .md into --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from hardware import device_name, slug

WINDOW = 48
QUERY_WIDTH = 256


def seconds(work, repeat: int = 1) -> float:
    """The fastest of `repeat` runs of work() (other work on a shared machine only slows a run down)."""
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        begin = time.perf_counter()
        work()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - begin)
    return best


def measure(subject, length: int, moves: int, seed: int = 0) -> dict:
    import workbench
    from workbench.probes.windows import layer_inputs, query_window

    layer, head = subject.adapter.n_layers // 2, 0
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, subject.model.config.vocab_size, (length,), generator=generator).tolist()
    start = length - WINDOW
    full = seconds(lambda: workbench.trace(subject, ids, stats=("entropy", "sink_mass", "received"),
                                           patterns=[(layer, head)], pattern_window=(start, length)))
    kept = None

    def keep():
        nonlocal kept
        kept = layer_inputs(subject, ids, layer)

    first = seconds(keep)
    rng = random.Random(seed)
    starts = [rng.randrange(0, length - WINDOW + 1) for _ in range(moves)]
    window = statistics.median(seconds(lambda s=s: kept.pattern([head], (s, s + WINDOW))) for s in starts)
    queries = [rng.randrange(0, length) for _ in range(moves)]
    query = statistics.median(seconds(lambda q=q: query_window(subject, ids, layer, head, q, QUERY_WIDTH, kept=kept))
                              for q in queries)
    return {"length": length, "layer": layer, "head": head, "full_trace_s": full, "layer_inputs_s": first,
            "window_move_s": window, "query_window_s": query, "moves": moves}


def machine() -> str:
    return f"{device_name()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    import workbench

    subject = workbench.load(args.model)
    rows = []
    for length in (int(n) for n in args.lengths.split(",")):
        rows.append(measure(subject, length, args.moves))
        print(json.dumps(rows[-1]), flush=True)
    where = machine()
    name = slug(f"{args.model} {'gpu' if torch.cuda.is_available() else 'cpu'}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"head_window_{name}.json").write_text(json.dumps({"model": args.model, "machine": where,
                                                                   "rows": rows}, indent=1))
    lines = [f"# Head-view window move: {args.model} on {where}", "",
             "| tokens | full trace (s) | layer inputs, once (s) | window move (ms) | query window (ms) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['length']} | {r['full_trace_s']:.2f} | {r['layer_inputs_s']:.2f} | "
              f"{1000 * r['window_move_s']:.1f} | {1000 * r['query_window_s']:.1f} |" for r in rows]
    (args.out / f"head_window_{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
