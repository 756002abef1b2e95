"""The ``genprm`` command: one subcommand per stage, plus params inspection.

    genprm prepare --set prepare.source=file --set prepare.file.path=../shared/data/math500.jsonl
    genprm bootstrap --set bootstrap.train.steps=200
    genprm params check | genprm params describe [SECTION]
    genprm sandbox run FILE [--timeout 5] | genprm sandbox info
    genprm score -m models:/genprm@champion --problem TEXT --step TEXT ... | --data FILE.jsonl [--out F]
    genprm summary                       # a short readable summary of metrics/*.json (make run ends with it)

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

from components.platform.errors import GenPRMError
from components.platform.online import HUB_ENV

app = typer.Typer(help="GenPRM factory: manufacture generative process reward models.", no_args_is_help=True)
params_app = typer.Typer(help="Inspect and validate params.yaml.", no_args_is_help=True)
app.add_typer(params_app, name="params")
sandbox_app = typer.Typer(help="Run Python under the sandbox's limits.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params file.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a param: section.key=value (repeatable).")
]

# Never any analytics. The hub is offline by default and reachable only when the stage's params configure
# something online (a hub id as a model, an hf source with a hub path, an openai server off loopback):
# components/platform/online.py has the rule. A value set in the environment wins either way.
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
OFFLINE_ENV = {**HUB_ENV, **QUIET_ENV}


def configure_runtime(online: list[str] | None = None) -> None:
    """Logging to stderr and the environment: quiet always, hub offline unless ``online`` names a reason
    (``online.section_reasons``); a user's explicit setting wins."""
    for key, value in (QUIET_ENV if online else OFFLINE_ENV).items():
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
    if online:
        forced = [key for key in HUB_ENV if os.environ.get(key, "0").lower() in ("1", "true", "yes", "on")]
        log = logging.getLogger("genprm")
        if forced:
            log.warning("%s set in the environment: %s must be in the local cache", forced[0], online[0])
        else:
            log.info("hub access on: %s%s", online[0], f" (and {len(online) - 1} more)" if online[1:] else "")


def run_entry(
    module: str, params: Path, overrides: list[str] | None, stage: str | None = None
) -> dict[str, Any]:
    """Import ``components.stages.<module>`` and call its ``main`` as dvc.yaml's ``stage`` (default: module).

    User errors exit 2 with one message.
    """
    from components.platform.online import section_reasons

    configure_runtime(section_reasons(params, overrides, module))
    entry: Callable[[Path, list[str]], dict[str, Any]] = importlib.import_module(
        f"components.stages.{module}"
    ).main
    from components.platform.tracking import stage_run

    try:
        # One MLflow run per stage execution (nested under the flow's run; components/platform/tracking.py).
        with stage_run(stage or module, params, overrides) as tracked:
            metrics = entry(params, overrides or [])
            tracked.log_metrics(metrics)
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


@app.command()
def synthesize(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Teacher rationales with executed code for every labelled path; consensus filter; SFT records.

    The hard-MC ablation: --set synthesize.labels=hard_labels. An interrupted run resumes.
    """
    run_entry("synthesize", params, set_)


@app.command()
def train(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Fine-tune the GenPRM on the SFT conversations (TRL SFTTrainer, loss on assistant turns only).

    The direct baseline: --set train.variant=direct. Multi-GPU: accelerate launch -m
    components.platform.cli train.
    """
    # dvc.yaml's train_direct stage is this command with the direct variant: track it under that name.
    direct = any(item.replace(" ", "") == "train.variant=direct" for item in set_ or [])
    run_entry("train", params, set_, stage="train_direct" if direct else "train")


@app.command()
def register(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Log the GenPRM as an MLflow model, register a version, move `champion` only if it is better."""
    run_entry("register", params, set_)


@app.command()
def refine(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    data: Annotated[
        Path | None, typer.Option(help="A jsonl of {problem, answer, steps}: refine these solutions instead.")
    ] = None,
    critic: Annotated[
        list[str] | None, typer.Option(help="With --data: a critic (repeatable; default genprm).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="With --data: write every turn's solutions here.")] = None,
) -> None:
    """The GenPRM as a critic: the policy refines its flagged solutions over turns (refine stage).

    With --data, refine your own policy's solutions with any critic (genprm, self_refine, direct, none);
    the models and sampling come from the refine section of params.yaml (--set refine.genprm.model.model=...).
    """
    if data is None:
        run_entry("refine", params, set_)
        return
    configure_runtime()
    from components.stages.refine import refine_file

    try:
        metrics = refine_file(params, set_ or [], data, critic or ["genprm"], out)
    except GenPRMError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    for name, critics in metrics["accuracy"].items():
        for who, turns in critics.items():
            flags = metrics["flag_rate"][name][who]
            typer.echo(
                f"{name} {who}: "
                + "  ".join(f"{t} {v:.1f}%" for t, v in turns.items())
                + f"  (flagged {flags:.1f}%)"
            )


@app.command()
def summary(
    root: Annotated[Path, typer.Option(help="The checkout whose metrics/ and reports are read.")] = Path("."),
) -> None:
    """A short summary of the run: F1 by system and N, Best-of-N, label F1, kept rate, the decision."""
    from components.platform.summary import render

    if not root.is_dir():
        typer.echo(f"error: --root {root}: no such directory", err=True)
        raise typer.Exit(code=2)
    typer.echo(render(root))


benchmark_app = typer.Typer(help="Benchmark the GenPRM, or score any PRM's ProcessBench predictions.")
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.callback(invoke_without_command=True)
def benchmark(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """The benchmark stage: ProcessBench F1 (Pass@1, Maj@N), Best-of-N, and the baselines."""
    if ctx.invoked_subcommand is None:
        run_entry("benchmark", params, set_)


@benchmark_app.command("processbench")
def benchmark_processbench(
    data: Annotated[list[Path], typer.Option("--data", help="A ProcessBench subset file (repeatable).")],
    predictions: Annotated[Path, typer.Option(help="jsonl of {id, prediction} (first wrong step, -1 none).")],
    out: Annotated[Path | None, typer.Option(help="Also write the scores as JSON here.")] = None,
) -> None:
    """Per-subset error accuracy, correct accuracy and F1, and the mean F1, for any PRM's predictions."""
    from components.data.io import write_json
    from components.method.processbench import evaluate_files

    configure_runtime()
    try:
        scores = evaluate_files(data, predictions)
    except GenPRMError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    for name, s in scores["subsets"].items():
        typer.echo(
            f"{name}: error acc {s['acc_error']:.4f}  correct acc {s['acc_correct']:.4f}  F1 {s['f1']:.4f}"
        )
    typer.echo(f"mean F1 over {len(scores['subsets'])} subset(s): {scores['mean_f1']:.4f}")
    if out is not None:
        write_json(out, scores)


@app.command()
def score(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="A GenPRM: model directory, hub id, MLflow model (models:/genprm@champion), "
            "or the served model's name with --base-url.",
        ),
    ],
    problem: Annotated[str | None, typer.Option(help="The problem statement.")] = None,
    step: Annotated[list[str] | None, typer.Option("--step", help="A step of the solution (repeat).")] = None,
    data: Annotated[Path | None, typer.Option(help="jsonl of {problem, steps} records to score.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write one JSON record per solution (jsonl).")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server of the model.")] = None,
    samples: Annotated[int | None, typer.Option(help="Critiques per solution (Maj@N mean).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens per generation round.")] = None,
    max_rounds: Annotated[int | None, typer.Option(help="Code executions per step.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Critique sampling temperature.")] = None,
    logprobs: Annotated[int | None, typer.Option(help="Top-k logprobs (0: verdict text only).")] = None,
    execute: Annotated[bool | None, typer.Option(help="Run the model's code in the sandbox.")] = None,
    device: Annotated[str | None, typer.Option(help="hf backend device (auto, cpu, cuda).")] = None,
) -> None:
    """Per-step rewards, verdicts and critiques of any GenPRM for a problem and its steps."""
    from components.data.io import write_jsonl
    from components.platform import scoring
    from components.platform.online import model_reasons

    configure_runtime(model_reasons("--model", model, [base_url] if base_url else []))
    given = {"max_tokens": max_tokens, "max_rounds": max_rounds, "temperature": temperature}
    given |= {"logprobs": logprobs, "execute": execute}
    settings = {key: value for key, value in given.items() if value is not None}
    try:
        solutions = scoring.solutions_from(problem, step, data)
        records = scoring.score(model, solutions, samples, base_url, settings, device)
    except GenPRMError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    for number, record in enumerate(records, 1):
        typer.echo(scoring.render(number, record))
    if out is not None:
        write_jsonl(out, records)
        typer.echo(f"wrote {len(records)} record(s) to {out}")


@params_app.command("check")
def params_check(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Validate every section of the params file (unknown or mistyped keys are named)."""
    from components.platform.params import load_params

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

    from components.platform.config import describe
    from components.platform.params import SECTION_CLASSES, sections

    if section is not None and section not in SECTION_CLASSES:
        typer.echo(f"error: unknown section {section!r} (known: {', '.join(SECTION_CLASSES)})", err=True)
        raise typer.Exit(code=2)
    table = Table("key", "default", "help")
    for name, cls in sections().items():
        if section in (None, name):
            for key, default, text in describe(cls, prefix=f"{name}."):
                table.add_row(key, default, text)
    Console(width=160).print(table)


@sandbox_app.command("run")
def sandbox_run(
    file: Annotated[Path, typer.Argument(help="A Python file to run.")],
    timeout: Annotated[float, typer.Option(help="Wall-clock limit (seconds).")] = 5.0,
    cpu: Annotated[float, typer.Option(help="CPU-time limit (seconds).")] = 5.0,
    memory_mb: Annotated[int, typer.Option(help="Address-space limit above the warm worker (MiB).")] = 1024,
    isolation: Annotated[str, typer.Option(help="required, or none: run the file UNCONFINED.")] = "required",
) -> None:
    """Run FILE in a fresh sandbox session; print the result and the sandbox's capabilities as JSON."""
    configure_runtime()
    from components.sandbox import Sandbox, SandboxConfig

    try:
        if not file.is_file():
            raise GenPRMError(f"{file}: no such file")
        config = SandboxConfig(
            timeout_s=timeout, cpu_s=cpu, memory_mb=memory_mb, workers=1, isolation=isolation
        )
        with Sandbox(config) as sandbox:
            result = sandbox.run(file.read_text())
            report = {**result.to_dict(), "capabilities": sandbox.capabilities()}
    except GenPRMError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps(report, indent=2))


@sandbox_app.command("info")
def sandbox_info() -> None:
    """Print what the sandbox can enforce on this machine (namespaces, read-only fs, uid, cgroups)."""
    configure_runtime()
    from components.sandbox import Sandbox, SandboxConfig

    try:
        with Sandbox(SandboxConfig(workers=1)) as sandbox:
            typer.echo(json.dumps(sandbox.capabilities(), indent=2))
    except GenPRMError as exc:  # e.g. the sandbox refuses: no isolation here
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


def main() -> None:
    """Console-script entry (also ``python -m components.platform.cli``)."""
    app()


if __name__ == "__main__":
    main()
