"""Tracing beyond one GPU: a model sharded by a device_map (with CPU offload), and context-parallel traces.

The trace modes trace a random-init model of the shape benchmarks/configs/NAME.json (bfloat16; speed does not
depend on the weights) on random tokens, batch 1, with every per-token statistic of the contract (the block
statistics, which pad a context-parallel sequence to whole blocks on every rank, are left out, as in the results
measured), and time the fastest of --repeats traces after one untimed warm-up. Each row also holds the peak GPU
memory (the largest over ranks).
  device-map        python benchmarks/scaling.py --mode device-map --config llama3-8b --max-memory 0=8GiB,cpu=100GiB
                    workbench.load(model, device_map="auto", max_memory=...): layers over the GPUs, the rest
                    offloaded to the CPU; one process. The row says how many layers sit on a GPU.
  context-parallel  torchrun --nproc-per-node N benchmarks/scaling.py --mode context-parallel --config llama-1.1b
                    workbench.trace(..., context_parallel=True) on N ranks (NCCL when each rank has a GPU of its
                    own, gloo when ranks share one), against the one-process trace of the same model on rank 0
                    where it fits (--baseline), whose statistics the parallel ones are checked against, and
                    against the plain forward under the same split (the same context-parallel run with no
                    statistic: all-gathered keys and values, the fastest attention on each chunk). On a
                    machine without a GPU the ranks run on its CPU cores (gloo, float32), memory as peak RSS.
  sweep             torchrun --nproc-per-node N benchmarks/scaling.py --mode sweep --config llama-1.1b --prompts 64
                    the data-parallel ablation sweep (`workbench.interventions.sweep.ablation_sweep`, zero
                    ablation of every head alone on the induction task of --prompts prompts), the heads split
                    across the N processes; run it with 1 process too: each run adds its row (by process count)
                    to one file, whose table gives the speed-up over the 1-process row and checks that every
                    row's head importances equal it.
Writes scaling_<mode>_<config>_<gpus>x<gpu>.json and .md into --out (default benchmarks/results), with the GPU
name and a `gpus` field (GPUs in use: distinct devices of the ranks, or of the device map; on CPUs
scaling_<mode>_<config>_<cpu>, gpus 0); the sweep's file is scaling_sweep_<config>_<prompts>-prompts_<gpu>, one
row per process count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist
from hardware import device_name, slug

CONFIGS_DIR = Path(__file__).parent / "configs"


def random_model(name: str, length: int, device: str) -> torch.nn.Module:
    """A random-init causal LM of the shape of configs/NAME.json on `device`, in bfloat16 (float32 on a CPU, as
    `workbench.load` gives there)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads((CONFIGS_DIR / f"{name}.json").read_text())
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config.max_position_embeddings = max(config.max_position_embeddings, length)
    with torch.device(device):
        torch.manual_seed(0)
        dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype).eval()


def timed_trace(subject, ids: torch.Tensor, repeats: int, stats: tuple[str, ...] | None = None,
                **options) -> tuple[float, object]:
    """The fastest of `repeats` traces (ms) after one warm-up, and the last trace: every per-token statistic unless
    `stats` names others (() for the plain forward). The ranks of a context-parallel trace start each one
    together; a one-process trace (the baseline on rank 0) meets no other rank."""
    import workbench
    from workbench.kernels import KEY_STATS, QUERY_STATS

    def run():
        return workbench.trace(subject, ids, stats=QUERY_STATS + KEY_STATS if stats is None else stats,
                               logits="last", **options)

    trace = run()
    best = float("inf")
    for _ in range(repeats):
        if options.get("context_parallel"):
            dist.barrier()
        synchronize()
        start = time.perf_counter()
        trace = run()
        synchronize()
        best = min(best, (time.perf_counter() - start) * 1000)
    return best, trace


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """The largest peak of allocated memory over this process's GPUs, in GiB (on a CPU machine: the process's
    peak resident memory)."""
    if not torch.cuda.is_available():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**30


def device_map_rows(args) -> tuple[list[dict], int]:
    import workbench
    from workbench.cli.common import memory_limits

    lengths = [int(x) for x in args.lengths.split(",")]
    begin = time.time()
    # initialized on the GPU (the CPU takes minutes over 8B random weights), then handed over from host memory
    model = random_model(args.config, max(lengths), "cuda").cpu()
    torch.cuda.empty_cache()
    subject = workbench.load(model, device_map="auto", max_memory=memory_limits(args.max_memory))
    print(f"model built and placed in {time.time() - begin:.0f} s", flush=True)
    placed = subject.model.hf_device_map
    on_gpu = sorted({p for p in placed.values() if isinstance(p, int)})
    layers_on_gpu = sum(1 for k, p in placed.items() if ".layers." in k and isinstance(p, int))
    rows = []
    for length in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, length))
        torch.cuda.reset_peak_memory_stats()
        try:
            ms, _ = timed_trace(subject, ids, args.repeats)
            rows.append({"L": length, "ms": ms, "peak_gib": peak_gib(), "layers_on_gpu": layers_on_gpu,
                         "layers": subject.adapter.n_layers, "max_memory": args.max_memory})
        except torch.OutOfMemoryError:
            rows.append({"L": length, "error": "out of memory"})
        print(json.dumps(rows[-1]), flush=True)
    return rows, max(1, len(on_gpu))


def context_parallel_rows(args) -> tuple[list[dict], int]:
    import workbench
    from workbench import context_parallel as cp

    device = cp.start()
    world, rank = dist.get_world_size(), dist.get_rank()
    lengths = [int(x) for x in args.lengths.split(",")]
    subject = workbench.load(random_model(args.config, max(lengths), device))
    rows = []
    for length in lengths:
        generator = torch.Generator().manual_seed(length)
        ids = torch.randint(0, subject.model.config.vocab_size, (1, length), generator=generator)
        reset_peak()
        row = {"L": length, "ranks": world, "backend": dist.get_backend()}
        try:
            row["plain_ms"], _ = timed_trace(subject, ids, args.repeats, stats=(), context_parallel=True)
            row["plain_peak_gib"] = peak_gib()
            reset_peak()
            row["ms"], trace = timed_trace(subject, ids, args.repeats, context_parallel=True)
            row["peak_gib"] = peak_gib()
            row["vs_plain"] = row["ms"] / row["plain_ms"]
        except torch.OutOfMemoryError:
            row["error"] = "out of memory"
            trace = None
        for key in ("plain_peak_gib", "peak_gib"):  # the largest over ranks
            peaks = [None] * world
            dist.all_gather_object(peaks, row.get(key))
            row[key] = None if None in peaks else max(peaks)
        if rank == 0 and args.baseline and trace is not None:
            try:
                reset_peak()
                row["one_process_ms"], one = timed_trace(subject, ids, args.repeats)
                row["one_process_peak_gib"] = peak_gib()
                row["max_abs_diff"] = {name: float((trace.stats[name].double() - one.stats[name].double())
                                                   .abs().nan_to_num().max()) for name in one.stats}
            except torch.OutOfMemoryError:
                row["one_process_ms"] = "out of memory"
        dist.barrier()
        if rank == 0:
            print(json.dumps(row), flush=True)
        rows.append(row)
    devices = [None] * world
    dist.all_gather_object(devices, device)
    return rows, len({d for d in devices if d.startswith("cuda")})


def sweep_name(args) -> str:
    """The sweep's result file name: one file for every process count of a config and number of prompts."""
    return f"scaling_sweep_{args.config}_{args.prompts}-prompts_{slug(device_name())}"


def sweep_rows(args, out: Path) -> tuple[list[dict], int]:
    """This launch's sweep row, added to (or replacing, by process count) the rows of earlier runs in its file
    (`sweep_name`) in the folder `out`."""
    import workbench
    from workbench import parallel
    from workbench.interventions.sweep import ablation_sweep
    from workbench.probes import tasks

    subject = workbench.load(random_model(args.config, 64, parallel.device()))
    task = tasks.induction(subject, n=args.prompts)
    parallel.wait()
    synchronize()
    begin = time.perf_counter()
    result = ablation_sweep(subject, task, mode="zero")
    synchronize()
    row = {"processes": parallel.processes(), "heads": len(result.arrays["importance"]), "prompts": args.prompts,
           "ms": (time.perf_counter() - begin) * 1000, "importance": result.arrays["importance"].tolist()}
    devices = parallel.gather([parallel.device()])
    path = out / f"{sweep_name(args)}.json"
    earlier = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = sorted([r for r in earlier if r["processes"] != row["processes"]] + [row], key=lambda r: r["processes"])
    return rows, len({d for d in devices if d.startswith("cuda")})


def sweep_markdown(config: str, gpu: str, rows: list[dict]) -> str:
    """The sweep's rows with the speed-up over the 1-process row and their largest importance difference to it."""
    one = next((r for r in rows if r["processes"] == 1), None)
    lines = [f"# sweep: {config} on {gpu}", "",
             "Zero ablation of every head alone on the induction task; ms of the whole sweep.", "",
             "| processes | heads | prompts | ms | speed-up | max abs importance difference to 1 process |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        speedup = f"{one['ms'] / r['ms']:.2f}x" if one else ""
        diff = (f"{max(abs(a - b) for a, b in zip(r['importance'], one['importance'], strict=True)):.2g}"
                if one else "")
        lines.append(f"| {r['processes']} | {r['heads']} | {r['prompts']} | {r['ms']:.0f} | {speedup} | {diff} |")
    return "\n".join(lines) + "\n"


def markdown(mode: str, config: str, gpu: str, gpus: int, rows: list[dict]) -> str:
    lines = [f"# {mode}: {config} on {f'{gpus} x ' if gpus else ''}{gpu}", ""]
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k != "max_abs_diff"]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.2f}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    diffs = [row["max_abs_diff"] for row in rows if "max_abs_diff" in row]
    if diffs:
        worst = {name: max(d[name] for d in diffs) for name in diffs[0]}
        lines += ["", "Largest |context-parallel - one process| per statistic: "
                  + ", ".join(f"{k} {v:.2g}" for k, v in worst.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("device-map", "context-parallel", "sweep"), required=True)
    parser.add_argument("--config", default="llama-1.1b", help="a name of benchmarks/configs/*.json")
    parser.add_argument("--lengths", default="4096,16384,65536")
    parser.add_argument("--max-memory", default=None, help="device-map: e.g. 0=8GiB,cpu=100GiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="context-parallel: also trace in one process on rank 0 and compare")
    parser.add_argument("--prompts", type=int, default=64, help="sweep: prompts of the induction task")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    start = time.time()
    out = Path(args.out)
    if args.mode == "sweep":
        rows, gpus = sweep_rows(args, out)
    else:
        rows, gpus = (device_map_rows if args.mode == "device-map" else context_parallel_rows)(args)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    gpu = device_name()  # after the run: each rank has its own GPU by then
    name = (sweep_name(args) if args.mode == "sweep"
            else f"scaling_{args.mode}_{args.config}_{f'{gpus}x' if gpus else ''}{slug(gpu)}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": gpu, "gpus": gpus, "mode": args.mode, "config": args.config, "torch": torch.__version__,
            "seconds": round(time.time() - start)}
    (out / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    table = (sweep_markdown(args.config, gpu, rows) if args.mode == "sweep"
             else markdown(args.mode, args.config, gpu, gpus, rows))
    (out / f"{name}.md").write_text(table)
    print(table, flush=True)


if __name__ == "__main__":
    main()
