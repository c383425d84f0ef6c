"""The ``loopml`` Typer app: every command, registered here explicitly, and ``main``.

Importing a command module registers nothing; this module is the one list of commands.
"""

from __future__ import annotations

import sys

import typer

from loopml.cli import demo, explain, project, registry, warm
from loopml.cli.stack import commands as stack

app = typer.Typer(
    name="loopml",
    help="Workflow-orchestrated MLOps for tabular data (Prefect, MLflow, GX, Evidently).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for command in (
    # project commands
    project.init,
    project.validate,
    project.train,
    project.score,
    project.monitor,
    project.label,
    project.retrain,
    # registry commands
    registry.promote,
    registry.rollback,
    registry.status,
    # what the champion bases its predictions on, and where it errs
    explain.explain,
    explain.slices,
    # the embedded stack
    stack.up,
    stack.down,
    stack.serve,
    stack.automations,
    demo.demo,
):
    app.command()(command)


def main() -> None:
    """Console-script entry point (``loopml``) and ``python -m loopml.cli``.

    A command the home's warm process can run goes there (:mod:`loopml.cli.warm`): same
    output, same exit code, without paying the libraries' imports again.
    """
    warm.remember_environment()
    try:
        code = warm.try_forward(sys.argv[1:])
        if code is not None:
            sys.stdout.flush()
            raise SystemExit(code)
        app()
    except BrokenPipeError:
        sys.stderr.close()
