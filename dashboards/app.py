"""Build the Dash app: `create_app(model, store)` returns it (`workbench dash` runs it on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

from dash import Dash

from workbench.dashboards.callbacks import register
from workbench.dashboards.layout import layout
from workbench.dashboards.session import Session


def create_app(model: str | None = None, store: str | Path | None = None) -> Dash:
    """The app over a fresh Session: `model` preselected (default: the workbench's default model), `store`
    the DuckDB results store it reads and writes (default: the user's)."""
    return session_app(Session(model, store))


def session_app(session: Session) -> Dash:
    """The app over `session` (its models, traces and store)."""
    app = Dash(__name__, title="Attention Workbench", suppress_callback_exceptions=False)
    app.layout = layout(session.default_model)
    register(app, session)
    return app
