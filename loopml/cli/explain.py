"""``loopml explain`` and ``loopml slices``: what the champion bases its predictions on, and
where it errs most."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import JsonFlag, ProjectDir, process_settings, run


def explain(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="Rows to explain (CSV or Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write explanations.")],
    top: Annotated[int, typer.Option(help="Reasons listed per row.", min=1)] = 3,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Per-row contributions of each column to the champion's prediction (SHAP values)."""

    def action() -> dict[str, Any]:
        from loopml.documentation import explain_file
        from loopml.runtime import open_runtime

        settings = process_settings()
        runtime = open_runtime(name, project_dir, settings)
        return explain_file(
            runtime.mlflow,
            runtime.config,
            data.expanduser().resolve(),
            out.expanduser().resolve(),
            references_dir=settings.references_dir,
            top=top,
        )

    def render(result: dict[str, Any]) -> None:
        typer.echo(
            f"{result['rows']} rows explained by {name} v{result['model_version']} "
            f"({result['method']}, {result['explained_output']}) -> {result['out']}"
        )
        typer.echo(f"  strongest columns: {', '.join(result['top_features'])}")

    run(action, json_output, render)


def slices(
    name: Annotated[str, typer.Argument(help="Project name.")],
    top: Annotated[int, typer.Option(help="Slices shown.", min=1)] = 10,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="A labelled batch to slice (default: held-out rows)."),
    ] = None,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """The champion's worst slices (worse than the whole with confidence first)."""

    def action() -> dict[str, Any]:
        from loopml.documentation import champion_slices
        from loopml.runtime import open_runtime

        runtime = open_runtime(name, project_dir, process_settings())
        batch = None if data is None else data.expanduser().resolve()
        return champion_slices(runtime.mlflow, runtime.config, top, batch)

    def render(result: dict[str, Any]) -> None:
        typer.echo(
            f"{name} v{result['version']}: {result['metric']} {result['overall']:.4f} "
            f"on {result['rows']} rows ({result['source']})"
        )
        for row in result["worst_slices"]:
            flag = "  worse with confidence" if row["worse_with_confidence"] else ""
            typer.echo(
                f"  {row['column']}={row['slice']}: {row['value']:.4f} "
                f"[{row['low']:.4f}, {row['high']:.4f}] ({row['rows']} rows){flag}"
            )
        if result["unranked_slices"]:
            typer.echo(f"  {len(result['unranked_slices'])} slice(s) too small to rank")

    run(action, json_output, render)
