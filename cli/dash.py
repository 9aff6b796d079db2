"""`workbench dash`: start the Dash app. Dash and the app are imported only when the command runs."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from workbench.cli.common import ModelOption, StoreOption, console, fail
from workbench.errors import WorkbenchError


def check_port(port: int) -> None:
    """Raise WorkbenchError when 127.0.0.1:`port` is taken, before the app is built."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise WorkbenchError(f"--port {port}: 127.0.0.1:{port} is in use ({err.strerror}); pick another "
                                 "port") from err


def dash_command(
    model: ModelOption = None,
    store: StoreOption = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8050,
) -> None:
    """Start the Dash app (overview, head view, interventions, circuits, runs) on http://127.0.0.1:PORT."""
    try:
        check_port(port)
        from workbench.dashboards.app import create_app

        app = create_app(model, store)
    except WorkbenchError as err:
        raise fail(err) from err
    console.print(f"Attention Workbench app on [bold]http://127.0.0.1:{port}[/] (Ctrl-C stops it)")
    app.run(host="127.0.0.1", port=port, debug=False)
