"""The GenPRM as an MLflow pyfunc model: ``predict(df)`` gives step rewards with code execution.

The ``register`` stage (``components/platform/registry.py``) logs :class:`GenPRMPyfunc` with the model
directory
as the artifact ``model``, the scorer settings the benchmark measured as ``model_config``, and
``components/`` as code, so that a fresh process needs only the pip requirements:

    model = mlflow.pyfunc.load_model("models:/genprm@champion")
    out = model.predict(pd.DataFrame({"problem": ["1 + 2 * 3?"], "steps": [["Step 1: 2 * 3 = 6.", ...]]}))
    out["rewards"][0]        # [p(Yes) of step 1, ...] (Maj@N mean with params={"samples": N})
    out["reward_source"][0]  # "logprobs", or "verdict_text" when the backend had no logprobs

Each row is scored by the critique loop of ``components/method/scorer.py``: the model's code runs in the
sandbox and its output is fed back before the verdict. The sandbox always requires isolation here
(``sandbox.isolation: required``, whatever the benchmark ran with): the request's problem text steers
the code, so a served model runs it confined or not at all. Only whoever serves the model can opt out,
for that process: ``GENPRM_SANDBOX_ISOLATION=none mlflow models serve ...``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel

COMPONENTS = Path(__file__).resolve().parent
INPUT_COLUMNS = ("problem", "steps")
OUTPUT_COLUMNS = ("rewards", "reward_source", "missing_verdicts", "code_runs", "code_failures")
ISOLATION_ENV = "GENPRM_SANDBOX_ISOLATION"  # the serving process's explicit opt-out (never logged)


def model_signature(samples: int) -> Any:
    """Input ``problem`` (str) and ``steps`` (list of str); output the rewards and how they were made."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.string, "problem"), ColSpec(Array(DataType.string), "steps")])
    outputs = Schema(
        [
            ColSpec(Array(DataType.double), "rewards"),
            ColSpec(DataType.string, "reward_source"),
            ColSpec(DataType.long, "missing_verdicts"),
            ColSpec(DataType.long, "code_runs"),
            ColSpec(DataType.long, "code_failures"),
        ]
    )
    params = ParamSchema([ParamSpec("samples", DataType.long, samples)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def scorer_config(settings: dict[str, Any], model_dir: str) -> Any:
    """The logged scorer settings (``model_config``) with the model at ``model_dir``."""
    from components.method.scorer import ScorerConfig
    from components.platform.config import build_config

    cfg = build_config(ScorerConfig, served_settings(settings), "model_config")
    sandbox = dataclasses.replace(cfg.sandbox, isolation=os.environ.get(ISOLATION_ENV, "required"))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, model=model_dir), sandbox=sandbox)


def served_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The scorer settings without a sandbox isolation opt-out (a served model never inherits one)."""
    sandbox = {k: v for k, v in (settings.get("sandbox") or {}).items() if k != "isolation"}
    return {**settings, "sandbox": sandbox}


def as_rows(model_input: Any) -> list[tuple[str, list[str]]]:
    """``(problem, steps)`` per row of a DataFrame (or list of dicts) with columns problem and steps."""
    import pandas as pd

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"GenPRM input needs columns {list(INPUT_COLUMNS)}; missing {missing}")
    rows = []
    for i, (problem, steps) in enumerate(zip(frame["problem"], frame["steps"], strict=True)):
        # Schema enforcement and JSON serving hand lists over as numpy arrays: any sequence of str is fine.
        if steps is None or isinstance(steps, str | bytes) or not hasattr(steps, "__iter__"):
            raise ValueError(f"row {i}: steps must be a list of strings, got {type(steps).__name__}")
        rows.append((str(problem), [str(s) for s in steps]))
    return rows


class GenPRMPyfunc(PythonModel):
    """Scores ``(problem, steps)`` rows with the GenPRM scorer (sandboxed code execution included)."""

    def load_context(self, context: Any) -> None:
        from components.method.scorer import GenPRMScorer
        from components.platform.errors import GenPRMError

        settings = dict(context.model_config or {})
        self.samples = int(settings.pop("samples", 1))
        try:  # a damaged artifact (weights, tokenizer, config): one message naming the file
            self.scorer = GenPRMScorer(scorer_config(settings, context.artifacts["model"]))
        except GenPRMError as exc:
            raise GenPRMError(f"GenPRM pyfunc: {exc}") from exc

    # model_input is left unannotated: MLflow reads a type hint there as a schema to enforce (and warns
    # about Any); the logged signature does that job.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        samples = int((params or {}).get("samples") or self.samples)
        rows = as_rows(model_input)
        scored = self.scorer.score(rows, samples, desc="pyfunc") if rows else []
        return pd.DataFrame(
            {
                "rewards": [s.rewards() for s in scored],
                "reward_source": [",".join(s.sources) or "none" for s in scored],
                "missing_verdicts": [s.missing_verdicts for s in scored],
                "code_runs": [s.code_runs for s in scored],
                "code_failures": [s.code_failures for s in scored],
            },
            columns=list(OUTPUT_COLUMNS),
        )

    def __del__(self) -> None:
        scorer = getattr(self, "scorer", None)
        if scorer is not None:
            with contextlib.suppress(Exception):  # at interpreter exit torch may already be torn down
                scorer.close()


# --------------------------------------------------------------------------------------------- logging


def pinned(requirements: list[str]) -> list[str]:
    """Bare names pinned to the installed version (local tags like ``+cpu`` dropped); others as given."""
    out = []
    for req in requirements:
        name = re.split(r"[\[<>=!~;@ ]", req, maxsplit=1)[0]
        if name == req.strip():
            try:
                out.append(f"{req}=={metadata.version(name).split('+')[0]}")
                continue
            except metadata.PackageNotFoundError:
                pass
        out.append(req)
    return out


@contextlib.contextmanager
def code_copy() -> Iterator[Path]:
    """``components/`` without caches, to travel with the model as code."""
    with tempfile.TemporaryDirectory(prefix="genprm-code-") as tmp:
        target = Path(tmp) / "components"
        shutil.copytree(COMPONENTS, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield target


def log_genprm(
    model_dir: Path, settings: dict[str, Any], requirements: list[str], samples: int, registered_name: str
) -> Any:
    """Log the GenPRM into the active run as a pyfunc model and register it; MLflow's ModelInfo."""
    with code_copy() as code:
        return mlflow.pyfunc.log_model(
            name="genprm",
            python_model=GenPRMPyfunc(),
            artifacts={"model": str(model_dir)},
            model_config={**served_settings(settings), "samples": samples},
            code_paths=[str(code)],
            pip_requirements=pinned(requirements),
            signature=model_signature(samples),
            registered_model_name=registered_name,
        )
