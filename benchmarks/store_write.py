"""Size and write time of a traced run's per-token statistics: rows in DuckDB against Parquet read in place.

A Trace of SmolLM2-135M's shape (30 layers x 9 heads, every statistic) at --tokens tokens, with random values
(size and time depend on the shape, not on the model's numbers; strings from a 2,000-token vocabulary stand in
for its tokens). Before: `Store.write_run(token_metrics=trace.token_table())`, one DuckDB row per (position,
layer, head, statistic). After: `Trace.save` writes tokens.parquet (one column per statistic) and the run names
it (`token_file`); `Store.token_metrics` reads it in place. Each way runs in a fresh folder; the wall times
include building the table. Writes JSON and a markdown table to benchmarks/results/.

Usage: python benchmarks/store_write.py [--tokens 8192] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from workbench.kernels import KEY_STATS, QUERY_STATS
from workbench.store import Store
from workbench.trace import TOKENS_FILE, Trace

SHAPE = {"n_layers": 30, "n_heads": 9}  # SmolLM2-135M


def synthetic_trace(n: int) -> Trace:
    g = torch.Generator().manual_seed(0)
    layers, heads = SHAPE["n_layers"], SHAPE["n_heads"]
    stats = {name: torch.rand(layers, 1, heads, n, generator=g) for name in QUERY_STATS + KEY_STATS}
    stats["argmax_key"] = torch.randint(0, n, (layers, 1, heads, n), generator=g)
    vocab = [f"tok{i}" for i in range(2000)]
    ids = torch.randint(0, len(vocab), (1, n), generator=g)
    return Trace(model_id="smollm2-135m-shape", config={**SHAPE, "is_causal": True}, token_ids=ids,
                 attention_mask=torch.ones(1, n, dtype=torch.bool), tokens=[[vocab[i] for i in ids[0].tolist()]],
                 stats=stats)


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def measure(n: int) -> dict:
    trace = synthetic_trace(n)
    heads = trace.head_table()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        Store(tmp / "rows.duckdb").write_run("trace", trace.model_id, heads, trace.token_table())
        rows_s = time.perf_counter() - start
        start = time.perf_counter()
        folder = trace.save(tmp / "trace")
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        run = Store(tmp / "parquet.duckdb").write_run("trace", trace.model_id, heads, trace_dir=folder,
                                                      token_file=folder / TOKENS_FILE)
        link_s = time.perf_counter() - start
        start = time.perf_counter()
        back = Store(tmp / "parquet.duckdb").token_metrics(run)
        read_s = time.perf_counter() - start
        return {"tokens": n, "rows": len(back), "stats": len(trace.stats),
                "before": {"seconds": round(rows_s, 2), "store_bytes": size(tmp / "rows.duckdb")},
                "after": {"seconds": round(save_s + link_s, 2), "trace_save_seconds": round(save_s, 2),
                          "store_run_seconds": round(link_s, 3), "store_bytes": size(tmp / "parquet.duckdb"),
                          "parquet_bytes": size(folder / TOKENS_FILE), "read_all_rows_seconds": round(read_s, 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    row = {**measure(args.tokens), "machine": f"{platform.processor() or platform.machine()}, "
           f"{torch.get_num_threads()} threads"}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"store_write_{args.tokens}"
    (args.out / f"{name}.json").write_text(json.dumps(row, indent=1))
    b, a = row["before"], row["after"]
    table = (f"# Per-token statistics of one run, SmolLM2-135M's shape, {row['tokens']} tokens ({row['rows']:,} "
             f"rows), {row['machine']}\n\n| | write time | store file | beside the trace |\n|---|---|---|---|\n"
             f"| before: rows in DuckDB | {b['seconds']} s | {b['store_bytes'] / 2**20:.1f} MiB | - |\n"
             f"| after: tokens.parquet, read in place | {a['seconds']} s (trace save {a['trace_save_seconds']} s, "
             f"store run {a['store_run_seconds']} s) | {a['store_bytes'] / 2**20:.1f} MiB | "
             f"{a['parquet_bytes'] / 2**20:.1f} MiB |\n\nReading every row back through the store: "
             f"{a['read_all_rows_seconds']} s.\n")
    (args.out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
