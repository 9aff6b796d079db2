"""Build and serve the Dash app: `create_app(model, store)` returns it; `serve` runs it on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from dash import Dash

from dashboards.callbacks import register
from dashboards.layout import layout
from dashboards.session import Session


def create_app(model: str | None = None, store: str | Path | None = None) -> Dash:
    """The app over a fresh Session: `model` preselected (default: the workbench's default model), `store`
    the DuckDB results store it reads and writes (default: the user's)."""
    session = Session(model, store)
    app = Dash(__name__, title="Attention Workbench", suppress_callback_exceptions=False)
    app.layout = layout(session.default_model)
    register(app, session)
    return app


def serve(model: str | None = None, store: str | Path | None = None, port: int = 8050) -> None:
    """Run the app on http://127.0.0.1:PORT until interrupted (Ctrl-C)."""
    create_app(model, store).run(host="127.0.0.1", port=port, debug=False)
