"""Render a model's Findings as a markdown page with matplotlib figures beside it, written all or nothing.

`write_page(findings, out, command)` writes OUT/NAME.md and the folder OUT/NAME/ (PNG figures and
findings.json, every number of the page in machine-readable form). The folder is built with
`workbench.atomic.output_folder` and the page is renamed into place after it, so an interrupted or failed
write leaves the previous page (or none) behind, never a half-written one. An existing page or page folder is
replaced only when asked (`overwrite`), and then only the files the page consists of.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.atomic import check_output, output_folder, replace_file
from workbench.errors import WorkbenchError
from workbench.probes.findings import Findings, findings_json, retrieval_scores
from workbench.probes.result import LAYER_LEVEL

TOP = 10


def page_paths(model: str, out: Path) -> tuple[Path, Path]:
    """The page OUT/NAME.md and its folder OUT/NAME/ for `model` (a name or a folder)."""
    name = Path(model).name
    return Path(out) / f"{name}.md", Path(out) / name


def check_page(model: str, out: Path, overwrite: bool = False) -> None:
    """Before any work: refuse a page or page folder that exists (without `overwrite`) or cannot be written."""
    page, folder = page_paths(model, out)
    check_output(folder, overwrite, "--out", files=[page])


def write_page(findings: Findings, out: Path, command: str, overwrite: bool = False) -> Path:
    """Write OUT/NAME.md and OUT/NAME/ (figures, findings.json); return the page's path."""
    page, folder = page_paths(findings.model, out)
    check_page(findings.model, out, overwrite)
    text = markdown(findings, command, page.stem)
    with output_folder(folder, overwrite) as staged:
        figures(findings, staged)
        (staged / "findings.json").write_text(json.dumps(findings_json(findings), indent=1))
    return replace_file(page, lambda p: p.write_text(text))


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise WorkbenchError("the findings figures need matplotlib: pip install 'attention-workbench[report]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layer_labels(findings: Findings) -> list[str]:
    types = findings.facts["layer_types"]
    mixed = len(set(types)) > 1
    return [f"{i} {t.split('_')[0]}" if mixed else str(i) for i, t in enumerate(types)]


def _heatmap(plt, matrix: np.ndarray, title: str, label: str, labels: list[str], path: Path) -> None:
    n_layers, n_heads = matrix.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * n_heads, 1.2 + 0.28 * n_layers))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(matrix))))
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers), labels, fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figures(findings: Findings, folder: Path) -> None:
    """sinks.png, entropy.png, erank.png, sparsity.png, induction.png, retrieval.png in `folder`."""
    plt = _pyplot()
    text, labels = findings.sections["text"].results, _layer_labels(findings)
    name = findings.model
    _heatmap(plt, text["sinks"].arrays["sink_score"], f"{name}: first-token sink score per head",
             "mean attention on the first token", labels, folder / "sinks.png")
    _heatmap(plt, text["coverage"].arrays["kept_fraction"], f"{name}: key blocks for 90% of the mass",
             "share of the key blocks a query block sees", labels, folder / "sparsity.png")
    _heatmap(plt, findings.sections["induction"].results["heads"].arrays["induction"],
             f"{name}: induction score per head", "induction score", labels, folder / "induction.png")
    _heatmap(plt, retrieval_scores(findings.sections["retrieval"]),
             f"{name}: retrieval score per head", "copy-paste retrieval score", labels, folder / "retrieval.png")

    norm = text["entropy"].arrays["entropy_norm"]  # [layer, head]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    layers = np.arange(norm.shape[0])
    ax.scatter(np.repeat(layers, norm.shape[1]), norm.ravel(), s=8, alpha=0.4, label="one head")
    ax.plot(layers, np.nanmean(norm, axis=1), color="black", marker="o", ms=3, label="mean over heads")
    ax.set_xticks(layers, labels, rotation=90, fontsize=7)
    ax.set(xlabel="layer", ylabel="entropy / log(keys seen)", ylim=(0, 1), title=f"{name}: normalized entropy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "entropy.png", dpi=110)
    plt.close(fig)

    hidden, heads = text["erank_hidden"].arrays["erank"], text["erank_heads"].arrays["erank"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(np.arange(len(hidden)), hidden, marker="o", ms=3)
    left.set(xlabel="layer (0 = embeddings)", ylabel="effective rank", title="hidden states")
    right.scatter(np.repeat(layers, heads.shape[1]), heads.ravel(), s=8, alpha=0.4, label="one head")
    right.plot(layers, heads.mean(axis=1), color="black", marker="o", ms=3, label="mean over heads")
    right.set(xlabel="layer", ylabel="effective rank", title="head outputs")
    right.legend(fontsize=7)
    fig.suptitle(f"{name}: effective rank", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "erank.png", dpi=110)
    plt.close(fig)


def _token(token: str) -> str:
    """A token string safe inside a markdown table cell's code span."""
    return "`" + json.dumps(token, ensure_ascii=False)[1:-1].replace("|", "\\|").replace("`", "'") + "`"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _top_heads(matrix: np.ndarray, k: int = TOP) -> list[tuple[int, int]]:
    order = np.argsort(-np.nan_to_num(matrix, nan=-np.inf), axis=None)[:k]
    return [(int(l), int(h)) for l, h in zip(*np.unravel_index(order, matrix.shape), strict=True)]


def _reproduce(command: str, python: str, seconds: float, what: str) -> str:
    return (f"*Reproduce:* `{command}` (the whole page), or in Python:\n\n```python\n{python}\n```\n\n"
            f"*Wall time:* {seconds:.1f} s ({what}).")


def _hits_with_mass(findings: Findings) -> pd.DataFrame:
    """The secondary-sink hits (layer, head, batch, position, token, value = ratio) with their `mass`."""
    text = findings.sections["text"].results
    hits = text["secondary_sinks"].table
    hits = hits[hits.metric == "received_ratio"]
    fai = text["fai"].table
    fai = fai[fai["head"] != LAYER_LEVEL][["layer", "head", "batch", "position", "value"]].rename(
        columns={"value": "mass"})
    return hits.merge(fai, on=["layer", "head", "batch", "position"], how="left")


def _secondary_by_layer(hits: pd.DataFrame) -> dict[int, str]:
    """Per layer: the number of (head, key) hits and the three keys with the most mass in one head.

    Ranked by mass, not by ratio: late keys are seen by few queries, so local attention alone gives them a
    large ratio to their small uniform share while they hold little of any query's attention."""
    cells = {}
    for layer, rows in hits.groupby("layer"):
        best = rows.sort_values("mass", ascending=False).drop_duplicates(["batch", "position"]).head(3)
        keys = ", ".join(f"{_token(r.token)}@{r.batch}:{r.position} {r.mass:.2f} (H{r.head} x{r.value:.0f})"
                         for r in best.itertuples())
        cells[int(layer)] = f"{len(rows)} in {rows['head'].nunique()} heads: {keys}"
    return cells


def _sink_levels(findings: Findings, hits: pd.DataFrame) -> str:
    levels = findings.sections["text"].results["secondary_sinks"].table
    levels = levels[levels.layer == LAYER_LEVEL]
    if levels.empty:
        return "No non-initial key passed the threshold in any head."
    wide = levels.pivot_table(index=["batch", "position", "token"], columns="metric", values="value").reset_index()
    mass = hits.groupby(["batch", "position"]).mass.max().rename("max_mass").reset_index()
    wide = wide.merge(mass, on=["batch", "position"]).sort_values("max_mass", ascending=False).head(TOP)
    rows = [[_token(r.token), f"{int(r.batch)}:{int(r.position)}", f"{r.max_mass:.2f}", int(r.first_layer),
             int(r.last_layer), int(r.n_layers), int(r.persistence), int(r.n_heads)] for r in wide.itertuples()]
    header = ["token", "text:position", "most mass in one head", "first layer", "last layer", "layers",
              "longest run", "heads"]
    intro = f"The {len(rows)} non-initial sink keys with the most mass in one head, with their levels:"
    return intro + "\n\n" + _table(header, rows)


def _facts(findings: Findings) -> str:
    f, m = findings.facts, findings.machine
    types = f["layer_types"]
    kinds = ", ".join(f"{t.split('_')[0]} x{types.count(t)}" for t in dict.fromkeys(types))
    if len(set(types)) > 1:
        kinds += " (full: layers " + ", ".join(str(i) for i, t in enumerate(types) if t == "full_attention") + ")"
    rows = [["layers", f["n_layers"]], ["query heads / key-value heads", f"{f['n_heads']} / {f['n_kv_heads']}"],
            ["head dim", f["head_dim"]], ["context", f["context_length"]],
            ["sliding window", f["sliding_window"] or "none"], ["attention layers", kinds],
            ["parameters", f"{f['parameters']:,}"], ["dtype (as traced)", f["dtype"]], ["source", f["source"]]]
    rows += [[key, f[key]] for key in ("original", "license") if key in f]
    rows += [["date", findings.date],
             ["machine", f"{m['cpu_cores']} CPU cores ({m['cpu']}), torch threads {m['torch_threads']}, "
                         f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU used'}"],
             ["software", f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}"],
             ["wall time, whole page", f"{findings.seconds:.0f} s"]]
    return _table(["fact", "value"], rows)


def _sinks(findings: Findings, command: str, load: str) -> str:
    c, text = findings.config, findings.sections["text"]
    score = text.results["sinks"].arrays["sink_score"]
    share = text.results["sinks"].arrays["sink_share"]
    hits = _hits_with_mass(findings)
    secondary = _secondary_by_layer(hits)
    types = findings.facts["layer_types"]
    rows = []
    for layer in range(score.shape[0]):
        head = int(np.nanargmax(score[layer]))
        rows.append([layer, types[layer].split("_")[0], f"{np.nanmean(score[layer]):.3f}",
                     f"{share[layer]:.2f}", f"H{head} {score[layer, head]:.3f}", secondary.get(layer, "none")])
    header = ["layer", "attention", "mean first-token sink score", f"share of heads > {c.eps}", "strongest head",
              f"non-initial sinks (hits > {c.ratio:g}x uniform; top keys: token@text:position mass (head, ratio))"]
    python = (f"{load}\nfrom workbench.probes.findings import prose_inputs\n"
              f"from workbench.probes.sinks import sink_scores, secondary_sinks\n"
              f"t = workbench.trace(s, prose_inputs(s, {c.text_tokens}, {c.texts}), "
              f"stats=('sink_mass', 'received', 'self_mass', 'entropy'), hidden_states=True)\n"
              f"sink_scores(t, {c.eps}).arrays['sink_score'], secondary_sinks(t, {c.ratio}, {c.min_queries}).table")
    total = float(np.mean(score > c.eps))
    window = findings.facts["sliding_window"]
    caveat = ""
    if window and "sliding_attention" in types and c.text_tokens > window:
        caveat = (f" In the sliding layers (window {window}) a query {window} or more positions after the first token "
                  f"no longer sees it; over texts of {c.text_tokens} tokens a sliding layer's sink score is therefore "
                  f"at most about {(window - 1) / (c.text_tokens - 1):.2f}, the share of queries that see the token.")
    return "\n\n".join([
        "## Attention sinks",
        f"A head's first-token sink score is its mean attention on position 0 over all real queries but the first "
        f"(`workbench.probes.sinks.sink_scores`, Gu et al. 2024); {total:.0%} of all heads score over {c.eps}. Non-initial "
        f"sinks are keys that receive over {c.ratio:g} times the attention uniform attention would give them, "
        f"judged where at least {c.min_queries} queries see the key (`workbench.probes.sinks.secondary_sinks`); their mass "
        f"is the mean attention they receive from the later queries "
        f"(`workbench.probes.entropy.future_attention_influence`). Tokens are spelled as the tokenizer spells them (Ġ and ▁ "
        f"mark a leading space); text:position counts from the first token of the text.{caveat}",
        "![first-token sink score per head](" + f"{Path(findings.model).name}/sinks.png)",
        _table(header, rows), _sink_levels(findings, hits),
        _reproduce(command, python, text.seconds, "one trace of the prose plus every probe of the sinks, entropy "
                   "and effective-rank sections"),
    ])


def _entropy(findings: Findings, command: str, load: str) -> str:
    c, text = findings.config, findings.sections["text"].results
    mean, norm = text["entropy"].arrays["entropy_mean"], text["entropy"].arrays["entropy_norm"]
    rows = []
    for layer in range(mean.shape[0]):
        low, high = int(np.nanargmin(norm[layer])), int(np.nanargmax(norm[layer]))
        rows.append([layer, f"{np.nanmean(mean[layer]):.3f}", f"{np.nanmean(norm[layer]):.3f}",
                     f"H{low} {norm[layer, low]:.3f}", f"H{high} {norm[layer, high]:.3f}"])
    python = (f"{load}\nfrom workbench.probes.findings import prose_inputs\nfrom workbench.probes.entropy import entropy_profile\n"
              f"t = workbench.trace(s, prose_inputs(s, {c.text_tokens}, {c.texts}), stats=('entropy',))\n"
              f"entropy_profile(t).arrays['entropy_norm']")
    return "\n\n".join([
        "## Entropy profile",
        "Entropy of each query's attention in nats, and normalized by log(keys the query sees) so that 1 is uniform "
        "and 0 is all on one key (`workbench.probes.entropy.entropy_profile`), averaged over the real queries of the prose.",
        f"![normalized entropy per layer]({Path(findings.model).name}/entropy.png)",
        _table(["layer", "entropy (nats), mean over heads", "normalized", "most focused head", "most uniform head"],
               rows),
        _reproduce(command, python, findings.sections["text"].seconds, "shared with the sinks section"),
    ])


def _erank(findings: Findings, command: str, load: str) -> str:
    c, text = findings.config, findings.sections["text"].results
    hidden, heads = text["erank_hidden"].arrays["erank"], text["erank_heads"].arrays["erank"]
    rows = [[0, f"{hidden[0]:.1f}", "(embeddings)", "", ""]]
    for layer in range(heads.shape[0]):
        rows.append([layer + 1, f"{hidden[layer + 1]:.1f}", f"{heads[layer].mean():.1f}",
                     f"{heads[layer].min():.1f}", f"{heads[layer].max():.1f}"])
    python = (f"{load}\nfrom workbench.probes.findings import prose_inputs\n"
              f"from workbench.probes.erank import hidden_state_erank, head_output_erank\nx = prose_inputs(s, {c.text_tokens}, "
              f"{c.texts})\nhidden_state_erank(workbench.trace(s, x, stats=(), hidden_states=True)).arrays['erank'], "
              f"head_output_erank(s, x).arrays['erank']")
    return "\n\n".join([
        "## Effective rank",
        f"Effective rank (Roy & Vetterli 2007; `workbench.probes.erank`) of the hidden states of the first text "
        f"[{c.text_tokens} tokens, d] after each block, and of each head's output [tokens, head_dim] over all "
        f"{c.texts} texts. Row l of the head columns is attention layer l - 1 (the block whose output row l is).",
        f"![effective rank]({Path(findings.model).name}/erank.png)",
        _table(["row", "hidden-state erank", "head-output erank, mean", "min head", "max head"], rows),
        _reproduce(command, python, findings.sections["text"].seconds, "shared with the sinks section"),
    ])


def _sparsity(findings: Findings, command: str, load: str) -> str:
    c, text = findings.config, findings.sections["text"].results
    kept, top1 = text["coverage"].arrays["kept_fraction"], text["coverage"].arrays["top1_mass"]
    own, proxy = text["head_groups"].arrays["own_missed_mass"], text["head_groups"].arrays["proxy_missed_mass"]
    same = text["layer_similarity"].arrays["same_head"]
    rows = []
    for layer in range(kept.shape[0]):
        sparsest = int(np.nanargmin(kept[layer]))
        rows.append([layer, f"{kept[layer].mean():.3f}", f"H{sparsest} {kept[layer, sparsest]:.3f}",
                     f"{top1[layer].mean():.3f}", f"{own[layer].mean():.3f}", f"{proxy[layer].mean():.3f}",
                     f"{same[layer, layer + 1]:.3f}" if layer + 1 < len(same) else ""])
    python = (f"{load}\nfrom workbench.probes.findings import prose_inputs\nfrom workbench.probes.sparsity import coverage\n"
              f"t = workbench.trace(s, prose_inputs(s, {c.text_tokens}, {c.texts}), stats=('block_mass',), "
              f"block_size={c.block_size})\ncoverage(t).arrays['kept_fraction']")
    return "\n\n".join([
        "## Block sparsity",
        f"Where each head's attention mass sits, in blocks of {c.block_size} positions (the `block_mass` statistic, "
        f"`workbench.probes.sparsity`): the share of the key blocks a query block sees that reach 90% of its mass "
        f"(FlexPrefill's coverage), the mass of its heaviest block, the mass a head misses outside its own 90% "
        f"blocks and outside those its group's representative head picks (two groups per layer, ProxyAttn), and "
        f"the same-head similarity of the layer's block maps to the next layer's (EchoAtt).",
        f"![key blocks for 90% of the mass]({Path(findings.model).name}/sparsity.png)",
        _table(["layer", "blocks for 90%, mean share", "sparsest head", "top block's mass", "missed, own blocks",
                "missed, representative's blocks", "similarity to the next layer"], rows),
        _reproduce(command, python, findings.sections["text"].seconds, "shared with the sinks section"),
    ])


def _induction(findings: Findings, command: str, load: str) -> str:
    c, section = findings.config, findings.sections["induction"]
    arrays = section.results["heads"].arrays
    rows = [[i + 1, f"L{l}.H{h}", f"{arrays['induction'][l, h]:.3f}", f"{arrays['prev_token'][l, h]:.3f}",
             f"{arrays['duplicate_token'][l, h]:.3f}"] for i, (l, h) in enumerate(_top_heads(arrays["induction"]))]
    python = f"{load}\nfrom workbench.probes.heads import head_types\nhead_types(s, {c.induction_length}, " \
             f"{c.induction_batch}, {c.seed}).arrays['induction']"
    return "\n\n".join([
        "## Induction heads",
        f"Scores on {c.induction_batch} sequences of {c.induction_length} random tokens repeated twice "
        f"(`workbench.probes.heads.head_types`, Olsson et al. 2022): the induction score is the attention a query of the "
        f"repeat pays to the token after its earlier occurrence; {int((arrays['induction'] > 0.3).sum())} heads "
        f"score over 0.3.",
        f"![induction score per head]({Path(findings.model).name}/induction.png)",
        _table(["rank", "head", "induction", "previous token", "duplicate token"], rows),
        _reproduce(command, python, section.seconds, "all heads' patterns on the repeated tokens"),
    ])


def _retrieval(findings: Findings, command: str, load: str) -> str:
    c, section = findings.config, findings.sections["retrieval"]
    scores = retrieval_scores(section)
    top = [(l, h) for l, h in _top_heads(scores) if scores[l, h] > 0]
    rows = [[i + 1, f"L{l}.H{h}", f"{scores[l, h]:.3f}"] for i, (l, h) in enumerate(top)]
    table = _table(["rank", "head", "retrieval score"], rows) if rows else "No head copied a needle token."
    by_length = [[length, r.params["cases"], f"{section.values['seconds'][int(length)]:.0f}",
                  f"{r.params['needle_accuracy']:.2f}", int((r.arrays["retrieval_score"] > 0.1).sum())]
                 for length, r in section.results.items()]
    lengths = ",".join(str(n) for n in c.retrieval_lengths)
    depths = ",".join(f"{d:g}" for d in c.retrieval_depths)
    python = (f"{load}\nfrom workbench.probes.retrieval import retrieval_heads\nretrieval_heads(s, {list(c.retrieval_lengths)}, "
              f"{list(c.retrieval_depths)}, range({c.seed}, {c.seed + c.needles})).arrays['retrieval_score']")
    return "\n\n".join([
        "## Retrieval heads (CPU)",
        f"Needle-in-a-haystack copy-paste (`workbench.probes.retrieval.retrieval_heads`, Wu et al. 2024): the model greedily "
        f"generates a three-number needle hidden in standard-library prose; a head scores when its most attended key "
        f"is the needle token being generated. Context lengths {lengths} tokens, needle depths {depths}, "
        f"{c.needles} needle(s) each; the longest context run on this CPU is {max(c.retrieval_lengths)} tokens. "
        f"As in the paper's code, the score averages over the cases whose needle the model recalled (over half of "
        f"its tokens generated); {int((scores > 0.1).sum())} heads score over 0.1 (the paper's retrieval-head "
        f"threshold).",
        _table(["context (tokens)", "cases", "wall time (s)", "exact needle generated", "heads over 0.1"],
               by_length),
        f"![retrieval score per head]({Path(findings.model).name}/retrieval.png)",
        table,
        _reproduce(command, python, section.seconds, "every case: prefill plus greedy decoding"),
    ])


def _gpu(findings: Findings) -> str:
    f = findings.facts
    longest = max(findings.config.retrieval_lengths)
    lengths = [longest * 2 ** i for i in range(1, 5) if longest * 2 ** i <= f["context_length"]]
    if not lengths:
        return "## Retrieval heads at longer context (GPU): not needed\n\nThe CPU section reaches the model's context."
    command = (f"workbench scan retrieval -m {findings.model} --lengths {','.join(map(str, lengths))} "
               f"--depths 0.1,0.5,0.9 --seeds 1 --device cuda")
    return "\n\n".join([
        "## Retrieval heads at longer context (GPU): not run",
        "No GPU figures are on this page. To add them, run on a machine with CUDA (the Triton kernels compute "
        "`argmax_key` in the flash pass) and put its table here, with the device and the wall time:",
        f"```bash\n{command}\n```",
    ])


def _ioi(findings: Findings, command: str, load: str) -> str:
    c, section = findings.config, findings.sections["ioi"]
    v = section.values
    python = f"{load}\nfrom workbench.zoo.organism import ioi_scores\nioi_scores(s, n={c.ioi_prompts}, " \
             f"seed={777 + c.seed})"
    return "\n\n".join([
        "## Indirect-object identification",
        "Templated sentences from `workbench.zoo.tasks.ioi_prompt` (\"When Mary and John went to the store, John "
        "gave a drink to\" -> \" Mary\"; Wang et al. 2022), each after the BOS token. The logit difference is "
        "logit(IO) - logit(S) of the two names' first tokens at the last position; accuracy is the share of prompts "
        "whose top prediction is the IO name's first token.",
        _table(["prompts", "mean logit difference, IO - S", "accuracy (IO is the top token)"],
               [[v["ioi_prompts"], f"{v['ioi_logit_diff']:.3f}", f"{v['ioi_accuracy']:.3f}"]]),
        _reproduce(command, python, section.seconds, "one forward pass per prompt"),
    ])


def markdown(findings: Findings, command: str, name: str) -> str:
    """The page's markdown; figures are linked as NAME/*.png."""
    c = findings.config
    load = f"import workbench\ns = workbench.load({findings.model!r}, device={findings.facts['device']!r})"
    first = ", ".join(sorted({_token(t) for t in findings.first_tokens}))
    intro = (f"Generated by `{command}` on {findings.date} in {findings.seconds:.0f} s on "
             f"{findings.machine['cpu_cores']} CPU cores. Every number and figure below comes from the workbench's "
             f"own probes (`probes/`); `{name}/findings.json` holds them in machine-readable form. The sinks, "
             f"entropy, effective-rank and block-sparsity sections read {c.texts} texts of {c.text_tokens} tokens "
             f"of English prose "
             f"(the docstrings of Python {findings.machine['python']}'s standard library, `workbench.probes.haystack`), "
             f"starting with {first}. The sizes (the command's options) were chosen for a CPU run of a few "
             f"minutes on two cores (the CPU backend, `kernels/cpu.py`); wall times are measured on this run.")
    parts = [f"# {findings.model}: attention findings", intro, "## The model", _facts(findings),
             _sinks(findings, command, load), _entropy(findings, command, load), _erank(findings, command, load),
             _sparsity(findings, command, load),
             _induction(findings, command, load), _retrieval(findings, command, load), _gpu(findings),
             _ioi(findings, command, load)]
    return "\n\n".join(parts) + "\n"
