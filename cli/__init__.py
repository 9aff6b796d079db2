"""The `workbench` command: the top floor of the package. Each subcommand lives in its own module here and
imports downward (probes, interventions, the core); nothing imports this package."""

from __future__ import annotations

import typer

from workbench.cli.ablate import ablate_command
from workbench.cli.attribute import attribute_command
from workbench.cli.circuit import circuit_command
from workbench.cli.common import interruptible
from workbench.cli.compose import compose_command
from workbench.cli.dash import dash_command
from workbench.cli.models import app as models_app
from workbench.cli.report import app as report_app
from workbench.cli.rerank import rerank_command
from workbench.cli.reuse import reuse_command
from workbench.cli.scan import app as scan_app
from workbench.cli.search import search_command
from workbench.cli.trace import info_command, trace_command

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Look inside transformer language models through their attention heads.")
app.add_typer(models_app, name="models", help="List and install the named real models (SmolLM2, Gemma-3, MiniLM).")
app.add_typer(report_app, name="report", help="Write a model's findings page (docs/models/NAME.md) from the probes.")
app.add_typer(scan_app, name="scan",
              help="Run a probe (sinks, entropy, erank, heads, retrieval, act) and report its heads.")
app.command("trace")(interruptible(trace_command))
app.command("info")(interruptible(info_command))
app.command("ablate")(interruptible(ablate_command))
app.command("circuit")(interruptible(circuit_command))
app.command("compose")(interruptible(compose_command))
app.command("search")(interruptible(search_command))
app.command("reuse")(interruptible(reuse_command))
app.command("rerank")(interruptible(rerank_command))
app.command("attribute")(interruptible(attribute_command))
app.command("dash")(interruptible(dash_command))
