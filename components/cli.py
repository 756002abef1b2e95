"""The ``genprm`` command: one subcommand per stage, plus params inspection.

    genprm prepare --set prepare.source=file --set prepare.file.path=../shared/data/math500.jsonl
    genprm bootstrap --set bootstrap.train.steps=200
    genprm params check | genprm params describe [SECTION]

``dvc.yaml`` and the Prefect flows call the same entry points (each stage module's ``main``). Bad input
or configuration prints one message naming the file, line or key and exits with status 2.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from components.errors import GenPRMError

app = typer.Typer(help="GenPRM factory: manufacture generative process reward models.", no_args_is_help=True)
params_app = typer.Typer(help="Inspect and validate params.yaml.", no_args_is_help=True)
app.add_typer(params_app, name="params")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params file.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a param: section.key=value (repeatable).")
]

# Offline by default: nothing in the default run may reach a model or dataset hub or send analytics.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure_runtime() -> None:
    """Logging to stderr and the offline environment (a user's explicit setting wins)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(
        level=os.environ.get("GENPRM_LOG_LEVEL", "INFO"),
        format="%(name)s: %(message)s",
        # stderr: stdout carries only the metrics JSON (rich's default console writes to stdout)
        handlers=[RichHandler(show_path=False, console=Console(stderr=True), rich_tracebacks=False)],
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_entry(module: str, params: Path, overrides: list[str] | None) -> dict[str, Any]:
    """Import ``components.<module>`` and call its ``main``; user errors exit 2 with one message."""
    configure_runtime()
    entry: Callable[[Path, list[str]], dict[str, Any]] = importlib.import_module(f"components.{module}").main
    try:
        metrics = entry(params, overrides or [])
    except GenPRMError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return metrics


@app.command()
def prepare(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Load problems (synthetic, file or hf), dedupe, split; write the synthetic ProcessBench set."""
    run_entry("prepare", params, set_)


@app.command()
def bootstrap(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Train the tokenizer and pretrain the small policy model of the offline world."""
    run_entry("bootstrap", params, set_)


@app.command()
def rollout(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Sample step-by-step solutions with the policy; keep balanced correct/incorrect paths.

    Shard with --set rollout.shard=i/n; an interrupted run resumes where it stopped.
    """
    run_entry("rollout", params, set_)


@app.command()
def label(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Monte Carlo estimates per step prefix, then RPE and hard-MC step labels.

    Shard with --set label.shard=i/n; an interrupted run resumes where it stopped.
    """
    run_entry("label", params, set_)


@params_app.command("check")
def params_check(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Validate every section of the params file (unknown or mistyped keys are named)."""
    from components.params import load_params

    try:
        load_params(params, set_ or [])
    except GenPRMError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"{params}: ok")


@params_app.command("describe")
def params_describe(section: Annotated[str | None, typer.Argument(help="One section.")] = None) -> None:
    """Print every key with its default and help text."""
    from rich.console import Console
    from rich.table import Table

    from components.config import describe
    from components.params import SECTION_CLASSES, sections

    if section is not None and section not in SECTION_CLASSES:
        typer.echo(f"error: unknown section {section!r} (known: {', '.join(SECTION_CLASSES)})", err=True)
        raise typer.Exit(code=2)
    table = Table("key", "default", "help")
    for name, cls in sections().items():
        if section in (None, name):
            for key, default, text in describe(cls, prefix=f"{name}."):
                table.add_row(key, default, text)
    Console(width=160).print(table)


def main() -> None:
    """Console-script entry (also ``python -m components.cli``)."""
    app()


if __name__ == "__main__":
    main()
