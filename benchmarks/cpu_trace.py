"""Speed and memory of tracing on the CPU, against the plain sdpa forward, one process per method.

For each model (SmolLM2-135M, Gemma-3-270M; float32, as `workbench.load` gives on a CPU) and length (512, 2048,
8192 random tokens, batch 1), each method runs in a process of its own: it loads the model, runs one untimed
forward (warm-up: lazy initialization, the CPU path's library), then timed forwards (the fastest of 3, of 1 from
8192 tokens: other work on a shared machine only slows a run down), and reports its peak resident memory
(getrusage ru_maxrss of that process, so each method's peak is its own). Methods run in --rounds rounds, the
anchor first in each; a ratio to the anchor is the median over rounds of the ratio within a round. The
statistics are the entropy and first-token sink mass of every head, unless the method says otherwise:
  sdpa               the plain forward, `model(input_ids)` with attn_implementation="sdpa": the anchor
  workbench_cpu      workbench.trace(backend="cpu"), entropy + sink_mass
  workbench_cpu_all  workbench.trace(backend="cpu"), every statistic of the contract (received too)
  workbench_ref      workbench.trace(backend="reference"), entropy + sink_mass
  eager_weights      eager attention with output_attentions=True, the statistics read off the returned weights
  transformerlens    TransformerLens 4 TransformerBridge, the statistics in a hook on each hook_pattern
  nnsight            nnsight over the eager model, the statistics of each layer's attention weights in the trace
A method is skipped where it cannot fit (eager_weights keeps every layer's [heads, L, L] map) and stopped after
--timeout seconds (default 300); the output says so. Every method computes the model's full logits, as the
anchor does.

Usage: python benchmarks/cpu_trace.py [--models smollm2-135m,gemma3-270m] [--lengths 512,2048,8192]
  [--methods sdpa,workbench_cpu,...] [--rounds 2] [--timeout 300] [--out benchmarks/results]
Writes cpu_trace_<cpu>_<n>cores.json and .md into --out, with each method's ratio to the sdpa forward of its own
run; methods measured again replace their old figures, the others stay.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hardware import cpu_name, slug

STATS = ("entropy", "sink_mass")
MODELS = ("smollm2-135m", "gemma3-270m")
PEERS = ("eager_weights", "transformerlens", "nnsight")
METHODS = ("sdpa", "workbench_cpu", "workbench_cpu_all", "workbench_ref", *PEERS)
GEMMA_METHODS = ("sdpa", "workbench_cpu", "workbench_cpu_all")


def head_stats(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and first-token sink mass [B, H, q] of attention weights p [B, H, q, k]."""
    return -torch.xlogy(p, p).sum(-1), p[..., 0]


def forward_of(method: str, subject, ids: torch.Tensor):
    """The function that runs one forward of `method` and returns its statistics (see the module docstring)."""
    import workbench
    from workbench.kernels import KEY_STATS, QUERY_STATS

    model = subject.model
    if method == "sdpa":
        return lambda: model(input_ids=ids, use_cache=False).logits
    if method.startswith("workbench"):
        backend = "reference" if method == "workbench_ref" else "cpu"
        stats = QUERY_STATS + KEY_STATS if method == "workbench_cpu_all" else STATS
        return lambda: workbench.trace(subject, ids, stats=stats, backend=backend, logits="all")
    if method == "eager_weights":
        model.set_attn_implementation("eager")
        return lambda: [head_stats(p) for p in model(input_ids=ids, output_attentions=True, use_cache=False)
                        .attentions]
    if method == "transformerlens":
        bridge = subject.bridge()

        def run_bridge():
            found = []
            bridge.run_with_hooks(ids, fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"),
                                                   lambda p, hook: found.append(head_stats(p)))])
            return found
        return run_bridge
    if method == "nnsight":
        model.set_attn_implementation("eager")
        lm = subject.nnsight()

        def run_nnsight():
            found = []
            with lm.trace(ids):
                for layer in lm.model.layers:
                    found.append(head_stats(layer.self_attn.output[1]).save())
            return found
        return run_nnsight
    raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")


def child(method: str, model_name: str, length: int, repeat: int) -> None:
    """Measure one method in this process (the fastest of `repeat` timed forwards); print one JSON line."""
    import workbench

    subject = workbench.load(model_name)
    reason = unfit(method, subject.model.config, length)
    if reason:
        print(json.dumps({"error": reason}), flush=True)
        return
    ids = torch.randint(0, subject.model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        forward = forward_of(method, subject, ids)
        forward()
        walls = []
        for _ in range(repeat):
            start = time.perf_counter()
            forward()
            walls.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": min(walls), "walls_s": walls, "peak_rss_mib": peak_mib}), flush=True)


def unfit(method: str, config, length: int) -> str | None:
    """Why `method` cannot run here at `length` (the attention weights it keeps would not fit in memory), or None."""
    if method != "eager_weights":
        return None
    need = config.num_hidden_layers * config.num_attention_heads * length * length * 4
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need < 0.8 * have:
        return None
    return f"skipped: every layer's weights need {need / 2**30:.0f} GiB, the machine has {have / 2**30:.0f} GiB"


def measure(method: str, model_name: str, length: int, timeout: float) -> dict:
    """Run `method` in a child process; its figures, or {'error': why it has none}."""
    repeat = 3 if length <= 2048 else 1
    command = [sys.executable, __file__, "--child", method, model_name, str(length), str(repeat)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped: over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": "out of memory" if done.returncode in (-9, 137) else f"failed: {tail[:200]}"}
    return json.loads(lines[-1])


def machine() -> tuple[str, int]:
    """The CPU's model name and the number of cores torch uses."""
    return cpu_name(), torch.get_num_threads()


def cell(entry: dict) -> str:
    if "error" in entry:
        return entry["error"]
    ratios = f" ({entry['time_vs_sdpa']:.2f}x, {entry['rss_vs_sdpa']:.2f}x)" if "time_vs_sdpa" in entry else ""
    return f"{entry['wall_s']:.2f} s, {entry['peak_rss_mib'] / 1024:.2f} GiB{ratios}"


def markdown(cpu: str, cores: int, rows: list[dict]) -> str:
    methods = [m for m in METHODS if any(m in r["methods"] for r in rows)]
    lines = [f"# Tracing on the CPU: {cpu}, {cores} cores", "",
             "One process per method; wall time of a forward after a warm-up (the fastest of 3, of 1 at 8192), "
             "peak RSS of the process, median over the rounds; (time, memory): the median over rounds of the ratio "
             "to the plain sdpa forward of the same round. Statistics: entropy + first-token sink mass of every "
             "head (workbench_cpu_all: every statistic). Command: `python benchmarks/cpu_trace.py`.", "",
             "load: the machine's 1-minute load average when the row was done (2 cores: above 2, other work shared "
             "them).", "",
             "| model | L | load | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for r in rows:
        cells = [cell(r["methods"][m]) if m in r["methods"] else "-" for m in methods]
        lines.append(f"| {r['model']} | {r['L']} | {r['load_average']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(runs: list[dict], anchors: list[dict]) -> dict:
    """One method's figures over its rounds: the median wall time, the largest peak, and the medians of its ratios
    to the anchor measured in the same round (the machine's speed drifts between rounds, less within one)."""
    good = [(run, anchor) for run, anchor in zip(runs, anchors, strict=False) if "wall_s" in run]
    if not good:
        return runs[0]
    entry = {"wall_s": statistics.median(run["wall_s"] for run, _ in good),
             "peak_rss_mib": max(run["peak_rss_mib"] for run, _ in good), "rounds": [run for run, _ in good]}
    paired = [(run, anchor) for run, anchor in good if "wall_s" in anchor]
    if paired:
        entry["time_vs_sdpa"] = statistics.median(run["wall_s"] / anchor["wall_s"] for run, anchor in paired)
        entry["rss_vs_sdpa"] = statistics.median(run["peak_rss_mib"] / anchor["peak_rss_mib"]
                                                 for run, anchor in paired)
    return entry


def measure_row(model_name: str, length: int, methods: list[str], rounds: int, timeout: float) -> dict:
    """Every method at one model and length, in `rounds` rounds of one process per method, the anchor first in
    each; the reference and the peers, far from the anchor, run in the first round only."""
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    for round_ in range(rounds):
        for method in methods:
            if round_ == 0 or method not in ("workbench_ref", *PEERS):
                runs[method].append(measure(method, model_name, length, timeout))
                print(json.dumps({"model": model_name, "L": length, "method": method, **runs[method][-1]}),
                      flush=True)
    anchors = runs.get("sdpa", [{}] * rounds)
    return {"model": model_name, "L": length, "load_average": os.getloadavg()[0],
            "methods": {method: summary(runs[method], anchors) for method in methods}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "MODEL", "L", "REPEAT"), help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.child:
        method, model_name, length, repeat = args.child
        child(method, model_name, int(length), int(repeat))
        return
    cpu, cores = machine()
    stem = args.out / f"cpu_trace_{slug(cpu)}_{cores}cores"
    previous = json.loads(stem.with_suffix(".json").read_text())["rows"] if stem.with_suffix(".json").exists() else []
    for model_name in args.models.split(","):
        allowed = METHODS if model_name == "smollm2-135m" else GEMMA_METHODS
        for length in (int(x) for x in args.lengths.split(",")):
            methods = [m for m in args.methods.split(",") if m in allowed]
            row = measure_row(model_name, length, methods, args.rounds, args.timeout)
            old = [r for r in previous if (r["model"], r["L"]) == (model_name, length)]
            if old:  # methods measured again replace their old figures; a ratio is always to its own run's anchor
                row["methods"] = {**old[0]["methods"], **row["methods"]}
            previous = [r for r in previous if (r["model"], r["L"]) != (model_name, length)] + [row]
            write(stem, cpu, cores, sorted(previous, key=lambda r: (MODELS.index(r["model"]), r["L"])))


def write(stem: Path, cpu: str, cores: int, rows: list[dict]) -> None:
    """The results so far (a row a model and length; a later run replaces the rows it measures again)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "cores": cores, "torch": torch.__version__,
                                                     "rows": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(cpu, cores, rows))
    print(f"wrote {stem}.json and .md", flush=True)


if __name__ == "__main__":
    main()
