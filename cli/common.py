"""Pieces every `workbench` subcommand shares: the console, option types, input text, checks made before any
work, the error and interrupt exits, storing."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from platformdirs import user_data_dir
from rich.console import Console
from rich.markup import escape

from workbench.errors import WorkbenchError
from workbench.samples import SAMPLE_TEXT
from workbench.textfile import read_utf8

console = Console()


ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Zoo or named model, folder or hub id "
                                                 "(default: smollm2-135m).")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")]
DeviceMapOption = Annotated[str | None, typer.Option(
    "--device-map", help="Shard the model with accelerate: auto, balanced or sequential (GPUs, then CPU, then disk).")]
MaxMemoryOption = Annotated[str | None, typer.Option(
    help="With --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB.")]
OffloadOption = Annotated[Path | None, typer.Option(help="With --device-map: folder for weights offloaded to disk.")]
TextOption = Annotated[str | None, typer.Option("--text", "-t", help="Text to run (default: a built-in paragraph).")]
FileOption = Annotated[Path | None, typer.Option("--file", "-f", help="Read the text from this file.")]
OutOption = Annotated[Path | None, typer.Option(help="Output folder (default: in the user data dir).")]
StoreOption = Annotated[Path | None, typer.Option(help="DuckDB results store (default: in the user data dir).")]
NoStoreOption = Annotated[bool, typer.Option("--no-store", help="Do not write a store run.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Write into an output folder that already holds "
                                               "files, replacing only the files this command writes.")]
INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def load_subject(model: str | None, device: str | None = None, device_map: str | None = None,
                 max_memory: str | None = None, offload_folder: Path | None = None):
    """workbench.load(model, device) under a "Loading ..." spinner (model None: the default model); with
    `device_map`, sharded by accelerate within `max_memory` (the --max-memory text) and `offload_folder`.
    Under `accelerate launch` or `torchrun` the default device is the process's own GPU."""
    import workbench
    from workbench import parallel

    placement = {}
    if device_map is not None:
        placement = dict(device_map=device_map, max_memory=memory_limits(max_memory), offload_folder=offload_folder)
    elif max_memory is not None or offload_folder is not None:
        raise WorkbenchError("--max-memory and --offload-folder shard the model: give them with --device-map")
    elif device is None and parallel.processes() > 1:
        device = parallel.device()
    with console.status(f"Loading {model or workbench.DEFAULT_MODEL}..."):
        return workbench.load(model, device=device, **placement)


def memory_limits(text: str | None) -> dict[int | str, str] | None:
    """The --max-memory text `0=20GiB,cpu=64GiB` as accelerate's max_memory dict {0: "20GiB", "cpu": "64GiB"}."""
    if text is None:
        return None
    limits: dict[int | str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        where, equals, amount = part.partition("=")
        where = where.strip()
        if not equals or not amount.strip() or not (where.isdigit() or where in ("cpu", "disk")):
            raise WorkbenchError(f"--max-memory {text!r}: write DEVICE=AMOUNT pairs such as 0=20GiB,cpu=64GiB")
        limits[int(where) if where.isdigit() else where] = amount.strip()
    return limits


def fail(err: Exception) -> typer.Exit:
    """Print a user error in red and return the Exit (code 2) to raise. The message is printed as it is: not
    read as markup (a path or value holding brackets) and not wrapped (a path stays whole, to copy)."""
    console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
    return typer.Exit(code=2)


def read_text(text: str | None, file: Path | None) -> str:
    """The text of --text or --file (the sample paragraph when neither is given); never empty."""
    if text is not None and file is not None:
        raise WorkbenchError("give --text or --file, not both")
    if file is not None:
        if not file.is_file():
            raise WorkbenchError(f"--file {str(file)!r} does not exist")
        text = read_utf8(file, "--file")
        if not text.strip():
            raise WorkbenchError(f"--file {str(file)!r} holds no text")
        return text
    if text is not None and not text.strip():
        raise WorkbenchError(f"--text {text!r} is empty: give some text to trace")
    return SAMPLE_TEXT if text is None else text


def numbers(text: str, kind: type, option: str, low: float | None = None, high: float | None = None) -> tuple:
    """The comma-separated numbers of option `option`, each of type `kind` and within [low, high]."""
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise WorkbenchError(f"{option} {text!r} is not a comma-separated list of {kind.__name__} values") from err
    if not values:
        raise WorkbenchError(f"{option} {text!r} names no value")
    for value in values:
        if high is not None and not low <= value <= high:
            raise WorkbenchError(f"{option} {value:g} is outside [{low:g}, {high:g}]")
        if low is not None and value < low:
            raise WorkbenchError(f"{option} {value:g} is below {low:g}")
    return values


def preflight(out: Path | None, overwrite: bool, store: Path | None, no_store: bool,
              files: Iterable[Path] = (), option: str = "--out") -> None:
    """Before the model runs: the output folder (and `files` beside it) may be written, the store opened."""
    from workbench import store as results_store
    from workbench.atomic import check_files, check_output

    if out is not None:
        check_output(out, overwrite, option, files)
    else:
        check_files(files, overwrite, option)
    if not no_store:
        results_store.check(store)


def interruptible(command: Callable) -> Callable:
    """Wrap a subcommand so that Ctrl-C exits with code 130 and says that nothing was stored."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            console.print("[bold yellow]interrupted:[/] no store run was written and no output half-written")
            raise typer.Exit(code=INTERRUPTED) from None

    return run


def default_out(kind: str) -> Path:
    """A fresh folder name under the user data dir for outputs of `kind` (traces, scans, ...)."""
    return Path(user_data_dir("attention-workbench")) / kind / datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def store_run(store: Path | None, kind: str, model_id: str, heads: pd.DataFrame, params: dict | None = None,
              out: Path | None = None, token_file: Path | None = None) -> None:
    """Write one run to the results store and say where (per-token statistics by their Parquet file)."""
    from workbench.store import Store

    with Store(store) as db:
        run_id = db.write_run(kind, model_id, heads, command=shlex.join(["workbench", *sys.argv[1:]]),
                              params=params, trace_dir=None if out is None else out.resolve(), token_file=token_file)
    console.print(f"Store run [bold]{run_id}[/] written to {escape(str(db.path))}", soft_wrap=True)


def save_result(result, out: Path, overwrite: bool, store: Path | None, no_store: bool, kind: str, model_id: str,
                heads: pd.DataFrame | None = None, params: dict | None = None) -> None:
    """Save a probe's Result into the output folder (all or nothing) and, unless --no-store, write its store run
    (`heads`: the result's head metrics unless given; `params`: the result's)."""
    from workbench.atomic import output_folder

    try:
        with output_folder(out, overwrite) as staged:
            result.save(staged)
        console.print(f"Tables saved to [bold]{escape(str(out))}[/]", soft_wrap=True)
        if not no_store:
            store_run(store, kind, model_id, result.head_metrics() if heads is None else heads,
                      params=result.params if params is None else params, out=out)
    except WorkbenchError as err:
        raise fail(err) from err
