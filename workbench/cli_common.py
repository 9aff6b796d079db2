"""Pieces every `workbench` subcommand shares: the console, option types, input text, error exit, storing."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from platformdirs import user_data_dir
from rich.console import Console

from workbench.errors import WorkbenchError

console = Console()

SAMPLE_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He wound the clockwork, trimmed "
    "the wick and wrote the weather in a leather logbook: wind from the west, a light swell, two ships passing "
    "north. In the morning he walked down to the harbour, where the fishermen were mending their nets, and "
    "bought bread, salt and a newspaper that was already three days old."
)

ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Zoo or named model, folder or hub id "
                                                 "(default: smollm2-135m).")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")]
TextOption = Annotated[str | None, typer.Option("--text", "-t", help="Text to run (default: a built-in paragraph).")]
FileOption = Annotated[Path | None, typer.Option("--file", "-f", help="Read the text from this file.")]
OutOption = Annotated[Path | None, typer.Option(help="Output folder (default: in the user data dir).")]
StoreOption = Annotated[Path | None, typer.Option(help="DuckDB results store (default: in the user data dir).")]
NoStoreOption = Annotated[bool, typer.Option("--no-store", help="Do not write a store run.")]


def load_subject(model: str | None, device: str | None = None):
    """workbench.load(model, device) under a "Loading ..." spinner (model None: the default model)."""
    import workbench

    with console.status(f"Loading {model or workbench.DEFAULT_MODEL}..."):
        return workbench.load(model, device=device)


def fail(err: Exception) -> typer.Exit:
    """Print a user error in red and return the Exit (code 2) to raise."""
    console.print(f"[bold red]error:[/] {err}")
    return typer.Exit(code=2)


def read_text(text: str | None, file: Path | None) -> str:
    """The text of --text or --file (the sample paragraph when neither is given)."""
    if text is not None and file is not None:
        raise WorkbenchError("give --text or --file, not both")
    if file is not None:
        if not file.is_file():
            raise WorkbenchError(f"--file {str(file)!r} does not exist")
        return file.read_text()
    return SAMPLE_TEXT if text is None else text


def default_out(kind: str) -> Path:
    """A fresh folder name under the user data dir for outputs of `kind` (traces, scans, ...)."""
    return Path(user_data_dir("attention-workbench")) / kind / datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def store_run(store: Path | None, kind: str, model_id: str, heads: pd.DataFrame,
              tokens: pd.DataFrame | None = None, params: dict | None = None, out: Path | None = None) -> None:
    """Write one run to the results store and say where."""
    from workbench.store import Store

    with Store(store) as db:
        run_id = db.write_run(kind, model_id, heads, tokens, command=shlex.join(["workbench", *sys.argv[1:]]),
                              params=params, trace_dir=None if out is None else out.resolve())
    console.print(f"Store run [bold]{run_id}[/] written to {db.path}")
