"""`workbench dash`: start the Dash app. Dash and the app are imported only when the command runs."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli_common import ModelOption, StoreOption, console


def dash_command(
    model: ModelOption = None,
    store: StoreOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8050,
) -> None:
    """Start the Dash app (overview, head view, interventions, circuits, runs) on http://127.0.0.1:PORT."""
    from dashboards.app import serve

    console.print(f"Attention Workbench app on [bold]http://127.0.0.1:{port}[/] (Ctrl-C stops it)")
    serve(model, store, port)
