"""`workbench report model NAME`: run every findings probe on a model and write its page, docs/models/NAME.md."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import DeviceOption, OverwriteOption, console, fail, interruptible, numbers
from workbench.errors import WorkbenchError

app = typer.Typer(no_args_is_help=True, help="Write findings pages from the probes.")


@app.command("model")
@interruptible
def model_command(
    name: Annotated[str, typer.Argument(help="Named, zoo or local model (see `workbench models list`).")],
    out: Annotated[Path, typer.Option(help="Folder of the page: OUT/NAME.md and OUT/NAME/.")] = Path("docs/models"),
    overwrite: OverwriteOption = False,
    text_tokens: Annotated[int, typer.Option(help="Tokens per prose text (sinks, entropy, erank).")] = 1024,
    texts: Annotated[int, typer.Option(help="Prose texts, traced as one batch.")] = 2,
    eps: Annotated[float, typer.Option(help="Sink^eps threshold on the first-token sink score.")] = 0.3,
    ratio: Annotated[float, typer.Option(help="Non-initial sinks: times the uniform share.")] = 5.0,
    min_queries: Annotated[int, typer.Option(help="Non-initial sinks: judge keys seen by this many queries.")] = 128,
    block_size: Annotated[int, typer.Option(help="Block sparsity: positions per block (64-1024).")] = 128,
    induction_length: Annotated[int, typer.Option(help="Random span, repeated twice.")] = 50,
    induction_batch: Annotated[int, typer.Option(help="Random sequences.")] = 4,
    retrieval_lengths: Annotated[str, typer.Option(help="Comma-separated haystack lengths.")] = "512,1024,2048",
    retrieval_depths: Annotated[str, typer.Option(help="Comma-separated needle depths in [0, 1].")] = "0.1,0.5,0.9",
    needles: Annotated[int, typer.Option(help="Needles per length and depth.")] = 1,
    ioi_prompts: Annotated[int, typer.Option(help="Templated IOI sentences.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the random tokens, needles and IOI prompts.")] = 0,
    device: DeviceOption = None,
) -> None:
    """Sinks, entropy, effective rank, block sparsity, induction heads, retrieval heads and IOI of one model, as a
    markdown page with figures; the page states the command, the machine and the wall time of every section.
    Under `accelerate launch` or `torchrun` the retrieval section's needle cases are split across the processes
    (each on its own GPU); the first writes the page."""
    import workbench
    from workbench import parallel
    from workbench.probes.findings import FindingsConfig, compute_findings
    from workbench.probes.findings_page import check_page, write_page

    try:
        config = FindingsConfig(
            text_tokens=text_tokens, texts=texts, eps=eps, ratio=ratio, min_queries=min_queries, block_size=block_size,
            induction_length=induction_length,
            induction_batch=induction_batch, retrieval_lengths=numbers(retrieval_lengths, int, "--retrieval-lengths"),
            retrieval_depths=numbers(retrieval_depths, float, "--retrieval-depths", 0.0, 1.0), needles=needles,
            ioi_prompts=ioi_prompts, seed=seed)
        check_page(name, out, overwrite)
        with console.status(f"Loading {name}..."):
            subject = workbench.load(name, device=device or (parallel.device() if parallel.processes() > 1 else None))
        with console.status("Computing findings...") as status:
            findings = compute_findings(subject, config, lambda section: status.update(f"Computing {section}..."))
        if not parallel.is_main():
            return
        page = write_page(findings, out, _command(name, out, config, device), overwrite)
    except (WorkbenchError, ValueError) as err:
        raise fail(err) from err
    for section_name, section in findings.sections.items():
        console.print(f"{section_name}: {section.seconds:.1f} s")
    console.print(f"Page written to [bold]{page}[/] ({findings.seconds:.0f} s in all)")


def _command(name: str, out: Path, config, device: str | None) -> str:
    """The full command that reproduces the page, every option spelled out."""
    words = ["workbench", "report", "model", name, "--out", str(out)]
    for key, value in vars(config).items():
        if isinstance(value, tuple):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        words += [f"--{key.replace('_', '-')}", str(value)]
    if device:
        words += ["--device", device]
    return shlex.join(words)
