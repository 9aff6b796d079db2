"""The Gluon forward's key/value stages: each count against the others, on a GPU, in one process.

The warp-specialized forward keeps STAGES key and value blocks in shared memory, so the producer warp loads
ahead while the consumers compute; more stages hide more of a load's latency but take shared memory (4 do not
fit beside the query tile at head_dim 128). Which count is fastest depends on what the consumers compute a
block, so each is timed on three paths the default serves: the one-pass statistics with the window distance
uncapped (as `workbench.trace` computes it) and capped at 128 tokens, and the log-sum-exp alone. Rounds run the
counts in alternating order (`triton.testing.do_bench` median, `rep` long enough for at least 8 runs; batch 1,
causal, bf16), and every count's output and statistics are compared bit for bit with the default's. The anchor
is the fastest attention of the run (FlashAttention-4 where it is installed, else cuDNN SDPA), same inputs.

Usage: python benchmarks/forward_stages.py [--shapes 32,8,64;32,32,128] [--lengths 8192,32768] [--rounds 3]
  [--tag NAME] [--out benchmarks/results]
Writes forward_stages[_<tag>]_<gpu>.json and .md into --out, rewritten after each row.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import triton
from attention_stats import anchors, bf16_inputs
from hardware import write_results

from workbench.kernels import QUERY_STATS, gluon_attention
from workbench.kernels.triton_attention import attention

COUNTS = {64: (2, 3, 4), 128: (2, 3)}  # stage counts tried per head_dim
PATHS = {"one_pass": dict(stats=QUERY_STATS), "capped": dict(stats=QUERY_STATS, distance_cap=128),
         "lse": dict(stats=("lse",))}


def use(head_dim: int, stages: int) -> None:
    """Make the forward compile with `stages` at head_dim (the compiled kernels are forgotten)."""
    gluon_attention.STAGES = {**gluon_attention.STAGES, head_dim: stages}
    gluon_attention._COMPILES.clear()


def row(shape: tuple[int, int, int], length: int, rounds: int) -> dict:
    """Per stage count: whether the Gluon forward ran and matched the default bit for bit, and the median ms of
    each path over `rounds`."""
    head_dim = shape[2]
    default = gluon_attention.STAGES[head_dim]
    q, k, v = bf16_inputs(length, shape)
    cases = anchors(q, k, v)
    anchor = "fa4" if "fa4" in cases else "sdpa_cudnn"
    rep = max(200, int(15 * triton.testing.do_bench(cases[anchor], warmup=5, rep=50)))

    def bench(fn) -> float:
        return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")

    out = {"shape": "x".join(map(str, shape)), "L": length, "default": default, "anchor": anchor,
           "anchor_ms": bench(cases[anchor])}
    use(head_dim, default)
    reference = {name: attention(q, k, v, **kw) for name, kw in PATHS.items()}
    counts = []
    for stages in COUNTS[head_dim]:
        use(head_dim, stages)
        got = {name: attention(q, k, v, **kw) for name, kw in PATHS.items()}
        ran = all(gluon_attention._COMPILES.values())
        out[f"{stages}_ran"] = ran
        if not ran:  # did not compile (shared memory): the Triton forward ran instead
            continue
        out[f"{stages}_same"] = all(torch.equal(got[n][0], reference[n][0]) and all(
            torch.equal(got[n][1][s], reference[n][1][s]) for s in reference[n][1]) for n in PATHS)
        counts.append(stages)
    del reference, got
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for stages in (counts if r % 2 == 0 else counts[::-1]):
            use(head_dim, stages)
            for name, kw in PATHS.items():
                times.setdefault(f"{stages}_{name}", []).append(bench(lambda kw=kw: attention(q, k, v, **kw)))
    use(head_dim, default)
    out.update({f"{key}_ms": statistics.median(values) for key, values in times.items()})
    out.update({f"{key}_rounds": values for key, values in times.items()})
    return out


def markdown(gpu: str, rows: list[dict]) -> str:
    lines = [f"# The Gluon forward's key/value stages, {gpu}", "",
             "Median ms over the rounds (in brackets the ratio to the run's anchor); capped: window distance capped "
             "at 128 tokens. Same: output and statistics bit for bit those of the default count.", "",
             "| shape | L | anchor | stages | one-pass | capped | lse only | same |", "|---" * 8 + "|"]
    for r in rows:
        for stages in COUNTS[int(r["shape"].split("x")[2])]:
            mark = " (default)" if stages == r["default"] else ""
            if not r[f"{stages}_ran"]:
                lines.append(f"| {r['shape']} | {r['L']} | | {stages}{mark} | does not compile | | | |")
                continue
            cells = [f"{r[f'{stages}_{p}_ms']:.2f} ({r[f'{stages}_{p}_ms'] / r['anchor_ms']:.2f}x)" for p in PATHS]
            lines.append(f"| {r['shape']} | {r['L']} | {r['anchor']} {r['anchor_ms']:.2f} | {stages}{mark} | "
                         + " | ".join(cells) + f" | {r[f'{stages}_same']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="32,8,64;32,32,128", help="heads,kv_heads,head_dim; several with ';'")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    lengths = [int(x) for x in args.lengths.split(",")]
    bad = [s for s in shapes if len(s) != 3 or s[2] not in COUNTS] + [n for n in lengths if n % 128 or n < 128]
    if bad or args.rounds < 1:
        parser.error(f"{bad or args.rounds}: shapes are heads,kv_heads,head_dim with head_dim 64 or 128, lengths "
                     "positive multiples of 128, rounds at least 1")
    if not torch.cuda.is_available():
        parser.error("the Gluon forward runs on a CUDA GPU (Hopper); none is available")
    name = "forward_stages" + (f"_{args.tag}" if args.tag else "")
    rows = []
    for shape in shapes:
        for length in lengths:
            rows.append(row(shape, length, args.rounds))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_rounds")}), flush=True)
            write_results(Path(args.out), name, rows, markdown(torch.cuda.get_device_name(), rows))  # so far


if __name__ == "__main__":
    main()
