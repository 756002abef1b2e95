"""``genprm score``: per-step rewards, verdicts and critiques of any GenPRM for a problem and its steps.

    genprm score -m models/genprm --problem "What is 6 * 7?" --step "Step 1: 6 * 7 = 42."
    genprm score -m models:/genprm@champion --data solutions.jsonl --out scores.jsonl
    genprm score -m NAME --base-url http://127.0.0.1:8000/v1 --logprobs 0 --data solutions.jsonl

The model is any GenPRM: a model directory or a hub id (the ``hf`` backend, in this process), a served
model (``--base-url``: the ``openai`` backend; ``-m`` is the name the server serves), or an MLflow model
(``models:/genprm@champion``, ``models:/genprm/3``, ``runs:/<id>/genprm``, or a local pyfunc directory
with an ``MLmodel`` file), loaded with ``mlflow.pyfunc.load_model`` from the project's tracking store
(``MLFLOW_TRACKING_URI``, else ``mlflow.db``): its logged scorer settings apply. Scoring is
``GenPRMScorer`` (``components/method/scorer.py``), code execution in the sandbox included. A reward is
p(Yes) at the verdict (the mean over ``--samples`` critiques); the verdict and critique shown are the
first sample's. ``--data`` is jsonl of ``{"problem": str, "steps": [str, ...]}`` (ProcessBench records
qualify); ``--out`` writes one JSON record per solution.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.platform.errors import ConfigError, DataError, GenPRMError

if TYPE_CHECKING:
    from components.method.scorer import GenPRMScorer, ScoredSolution

Solution = tuple[str, list[str]]
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
VERDICTS = {1: "Yes", 0: "No", None: None}


def is_mlflow_model(model: str) -> bool:
    """An MLflow model URI, or a local directory holding an ``MLmodel`` file."""
    return model.startswith(MLFLOW_SCHEMES) or (Path(model).expanduser() / "MLmodel").is_file()


def read_solutions(path: Path) -> list[Solution]:
    """``(problem, steps)`` of every jsonl record; a bad record is a DataError naming file and line."""
    from components.data.io import read_jsonl

    solutions = []
    for line, record in read_jsonl(path):
        problem, steps = record.get("problem"), record.get("steps")
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{path}:{line}: 'problem' must be a non-empty string")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s for s in steps):
            raise DataError(f"{path}:{line}: 'steps' must be a non-empty list of non-empty strings")
        solutions.append((problem, steps))
    if not solutions:
        raise DataError(f"{path}: no records")
    return solutions


def solutions_from(problem: str | None, steps: list[str] | None, data: Path | None) -> list[Solution]:
    """The solutions to score: ``--data``, or ``--problem`` with its ``--step`` options (not both)."""
    if data is not None:
        if problem is not None or steps:
            raise ConfigError("score: give --data FILE or --problem with --step, not both")
        return read_solutions(data)
    if not problem or not problem.strip() or not steps:
        raise ConfigError("score: give --problem TEXT and at least one --step TEXT (or --data FILE.jsonl)")
    return [(problem, list(steps))]


def _user_error(exc: BaseException) -> GenPRMError | None:
    """A project error raised by the copy of ``components`` an MLflow model brought (another class)."""
    if isinstance(exc, GenPRMError):
        return exc
    if any(cls.__name__ == "GenPRMError" for cls in type(exc).__mro__):
        return GenPRMError(str(exc))
    return None


def pyfunc_model(uri: str) -> tuple[Any, int]:
    """The GenPRM pyfunc (its ``scorer`` has the logged settings) and its default sample count.

    The caller keeps the returned object alive while it scores: the pyfunc closes its scorer when it
    is garbage collected.
    """
    import mlflow
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from components.platform.tracking import tracking_uri

    store = tracking_uri(Path("."))
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise GenPRMError(f"{uri}: cannot load the MLflow model (store {store}): {exc.message}") from exc
    except Exception as exc:
        error = _user_error(exc)
        if error is None:
            raise
        raise error from exc
    model = loaded.unwrap_python_model()
    if not hasattr(model, "scorer"):
        raise GenPRMError(f"{uri}: not a GenPRM pyfunc model ({type(model).__name__})")
    return model, int(getattr(model, "samples", 1))


@contextlib.contextmanager
def open_scorer(
    model: str, base_url: str | None, settings: dict[str, Any], device: str | None
) -> Iterator[tuple[GenPRMScorer, int | None]]:
    """The scorer for ``model`` with ``settings`` (ScorerConfig fields) applied; closed afterwards."""
    from components.backends.base import BackendConfig
    from components.method.scorer import GenPRMScorer, ScorerConfig

    default_samples: int | None = None
    pyfunc = None
    if is_mlflow_model(model):
        if base_url is not None or device is not None or "execute" in settings:
            raise ConfigError("score: --base-url, --device and --execute are the MLflow model's own settings")
        pyfunc, default_samples = pyfunc_model(model)
        scorer = pyfunc.scorer
        scorer.cfg = dataclasses.replace(scorer.cfg, **settings)
    else:
        backend = BackendConfig(backend="openai", model=model, base_url=base_url) if base_url else None
        backend = backend or BackendConfig(backend="hf", model=model, device=device or "auto")
        scorer = GenPRMScorer(ScorerConfig(model=backend, **settings))
    try:
        yield scorer, default_samples
    finally:
        scorer.close()
        if pyfunc is not None:
            pyfunc.scorer = None  # closed here, not again when the pyfunc is collected


def score_record(solution: Solution, scored: ScoredSolution, samples: int) -> dict[str, Any]:
    """The JSON record of one scored solution."""
    from components.method.rationale import parse_verdict

    problem, steps = solution
    return {
        "problem": problem,
        "steps": steps,
        "rewards": [round(r, 6) for r in scored.rewards()],
        "verdicts": [VERDICTS[parse_verdict(text)] for text in scored.critiques],
        "critiques": scored.critiques,
        "reward_source": ",".join(scored.sources) or "none",
        "samples": samples,
        "missing_verdicts": scored.missing_verdicts,
        "code_runs": scored.code_runs,
        "code_failures": scored.code_failures,
    }


def _printable(text: str) -> str:
    """``text`` with control characters (a random model writes them) shown as U+FFFD."""
    return "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text)


def render(number: int, record: dict[str, Any]) -> str:
    """A solution's scores for people: one line per step, its critique indented below it."""
    problem = " ".join(record["problem"].split())
    lines = [
        f"solution {number}: {problem[:100]}{'...' if len(problem) > 100 else ''}",
        f"  {len(record['steps'])} steps, {record['samples']} sample(s), rewards from "
        f"{record['reward_source']}, code runs {record['code_runs']} ({record['code_failures']} failed)",
    ]
    for index, (step, reward, verdict, critique) in enumerate(
        zip(record["steps"], record["rewards"], record["verdicts"], record["critiques"], strict=True), 1
    ):
        lines.append(f"  step {index}: reward {reward:.3f}  verdict {verdict or 'none'}  | {step.strip()}")
        lines += [f"      {_printable(text)}" for text in critique.strip().splitlines()]
    return "\n".join(lines)


def score(
    model: str,
    solutions: list[Solution],
    samples: int | None,
    base_url: str | None = None,
    settings: dict[str, Any] | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Score ``solutions`` with ``model``; one record per solution (see ``score_record``)."""
    with open_scorer(model, base_url, settings or {}, device) as (scorer, default_samples):
        count = samples if samples is not None else (default_samples or 1)
        if count < 1:
            raise ConfigError(f"score: --samples must be at least 1, got {count}")
        try:
            scored = scorer.score(solutions, count, desc="score")
        except Exception as exc:
            error = _user_error(exc)
            if error is None:
                raise
            raise error from exc
    return [score_record(s, r, count) for s, r in zip(solutions, scored, strict=True)]
