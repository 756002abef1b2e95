"""Data quality at every hand-off between stages, checked with Great Expectations 1.x.

A stage calls :func:`check` on each table BEFORE writing it, so a failed check leaves no output that
looks complete. The rules of each hand-off (problems, processbench, rollouts, labels,
processbench_labels, rationales, sft, sft_direct) check schema and types, required fields, unique ids,
labels in {0,1}, MC values in [0,1], step counts in range, list lengths per row, verify blocks holding
executed code, conversation turn structure, the kept rate, and no test problem (normalized text,
against ``quality.test_sets``) in a training artifact. They live in ``components/data/quality_suites.py``
(tables) and ``components/data/quality_turns.py`` (rationales, SFT conversations). Each expectation is
critical or a warning; a failed critical one raises ``DataError`` naming the hand-off, the file, the
expectation and up to 5 offending rows, and the stage exits 2. Warnings are logged.

Results land under ``quality.reports_dir``: ``<name>.json`` (the GE validation results) and the GE
Data Docs site ``data_docs/index.html`` (the latest validation of every hand-off), built from a GE file
context in ``gx/``. GE takes seconds to import, so it is imported only inside :func:`run_batches`.

    summary = check("rollouts", frame, params["quality"], source="data/rollout/rollouts.parquet")
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.data import quality_suites as suites
from components.data import quality_turns as turns
from components.data.quality_suites import Batch, Bounds, json_safe
from components.data.records import normalize_text
from components.platform.config import option
from components.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILDERS: dict[str, Callable[[pd.DataFrame, Bounds], list[Batch]]] = {
    "problems": suites.problems,
    "processbench": suites.processbench,
    "rollouts": suites.rollouts,
    "labels": suites.labels,
    "processbench_labels": lambda frame, bounds: suites.labels(frame, bounds, test_set=True),
    "rationales": turns.rationales,
    "sft": turns.sft,
    "sft_direct": lambda frame, bounds: turns.sft(frame, bounds, direct=True),
}
TEST_HANDOFFS = frozenset({"processbench", "processbench_labels"})
"""Hand-offs that are test artifacts by definition: never checked for test problems."""


def build_batches(handoff: str, frame: pd.DataFrame, bounds: Bounds) -> list[Batch]:
    """The batches (rows, and steps where the records hold per-step lists) of one hand-off."""
    return BUILDERS[handoff](frame, bounds)


HANDOFFS = tuple(BUILDERS)
MAX_EXAMPLES = 5
DOCS_SITE = "local_site"


@dataclass(frozen=True)
class QualityConfig:
    """The ``quality`` section of params.yaml: bounds of the data checks run at every hand-off."""

    reports_dir: str = option("reports/quality", help="Validation results (JSON) and GE Data Docs go here.")
    min_steps: int = option(1, help="Fewest steps a training path may have.")
    max_steps: int = option(20, help="Most steps a training path may have (a warning on test sets).")
    kept_rate_min: float = option(
        0.05, help="synthesize: lowest fraction of paths the consensus filter keeps."
    )
    kept_rate_max: float = option(
        1.0, help="synthesize: highest fraction of paths the consensus filter keeps."
    )
    test_sets: list[str] = option(
        ["data/prepared/test.parquet", "data/prepared/processbench.jsonl"],
        help="Held-out files (parquet/jsonl with a 'problem' field) whose problems no training artifact may "
        "hold; a missing file is skipped with a warning.",
    )
    data_docs: bool = option(True, help="Update the GE Data Docs site after each check (~0.3 s a check).")
    enabled: bool = option(True, help="Run the checks (false: skip them all).")

    def __post_init__(self) -> None:
        if self.min_steps < 1:
            raise ConfigError(f"quality.min_steps: must be at least 1, got {self.min_steps}")
        if self.max_steps < self.min_steps:
            raise ConfigError(
                f"quality.max_steps: must be >= min_steps ({self.min_steps}), got {self.max_steps}"
            )
        for key in ("kept_rate_min", "kept_rate_max"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"quality.{key}: must be in [0, 1], got {getattr(self, key)}")
        if self.kept_rate_min > self.kept_rate_max:
            raise ConfigError(
                f"quality.kept_rate_min: must be <= kept_rate_max ({self.kept_rate_max}), "
                f"got {self.kept_rate_min}"
            )
        if not self.reports_dir:
            raise ConfigError("quality.reports_dir: must not be empty")


def check(
    handoff: str,
    frame: pd.DataFrame,
    cfg: QualityConfig,
    *,
    source: str | Path,
    holdout: bool | None = None,
    test_problems: list[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Validate ``frame`` (the table of ``handoff`` about to be written to ``source``).

    ``holdout``: the frame is a test artifact (no leak check); None infers it (a ProcessBench hand-off,
    or ``source`` is one of ``cfg.test_sets``). ``test_problems``: the test problem texts to compare
    with, instead of reading ``cfg.test_sets`` (for a stage that writes them in the same run).
    ``name``: the report and suite name (default: ``handoff``). Returns a summary (expectations
    evaluated / failed per severity); raises DataError if a critical expectation fails.
    """
    if handoff not in BUILDERS:
        raise ValueError(f"unknown hand-off {handoff!r} (known: {', '.join(HANDOFFS)})")
    if not cfg.enabled:
        return {"enabled": False}
    started = time.perf_counter()
    if holdout is None:
        holdout = handoff in TEST_HANDOFFS or _is_test_set(source, cfg.test_sets)
    texts = None if holdout else _test_texts(cfg.test_sets, test_problems)
    batches = build_batches(handoff, frame, Bounds.of(cfg, texts))
    results = run_batches(name or handoff, batches, Path(cfg.reports_dir), cfg.data_docs)
    summary, failures = summarize(handoff, source, len(frame), batches, results)
    seconds = round(time.perf_counter() - started, 2)  # in the report, not the summary: metrics stay stable
    write_report(Path(cfg.reports_dir) / f"{name or handoff}.json", {**summary, "seconds": seconds}, results)
    log.info("quality %s (%s) in %.2f s: %s", handoff, source, seconds, summary)
    for line in failures["warning"]:
        log.warning("quality %s (%s): warning: %s", handoff, source, line)
    if failures["critical"]:
        raise DataError(failure_message(handoff, source, failures["critical"]))
    return summary


# ----------------------------------------------------------------------------------------- test sets


def _is_test_set(source: str | Path, test_sets: list[str]) -> bool:
    target = Path(source).resolve()
    return any(Path(p).resolve() == target for p in test_sets)


def _test_texts(test_sets: list[str], given: list[str] | None) -> frozenset[str]:
    """Normalized problem texts of the test sets (or of ``given``)."""
    if given is not None:
        return frozenset(normalize_text(t) for t in given)
    texts: set[str] = set()
    for path in map(Path, test_sets):
        if not path.exists():
            log.warning("quality: test set %s not found; no leak check against it (quality.test_sets)", path)
            continue
        stat = path.stat()
        texts |= _file_texts(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return frozenset(texts)


@functools.lru_cache(maxsize=8)
def _file_texts(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Normalized 'problem' fields of a parquet/jsonl file (cached per file version)."""
    from components.data.io import read_records

    return frozenset(normalize_text(str(rec.get("problem") or "")) for _, rec in read_records(Path(path)))


# ------------------------------------------------------------------------------- Great Expectations


def run_batches(name: str, batches: list[Batch], reports_dir: Path, docs: bool = True) -> dict[str, Any]:
    """Validate each batch with its suite ``<name>.<batch>``, keep only that latest result, update docs."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    context = _context(reports_dir)
    results: dict[str, Any] = {}
    pages: list[Any] = []
    for batch in batches:
        suite_name = f"{name}.{batch.name}"
        _forget(context, suite_name, reports_dir)
        suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=_expectations(batch)))
        asset = _data_source(context).add_dataframe_asset(suite_name)
        definition = asset.add_batch_definition_whole_dataframe("whole")
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=definition, suite=suite)
        )
        result_format = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": MAX_EXAMPLES,
            "unexpected_index_column_names": batch.index_columns,
            "return_unexpected_index_query": False,
        }
        results[batch.name] = validation.run(
            batch_parameters={"dataframe": batch.frame}, result_format=result_format
        )
        pages += [ExpectationSuiteIdentifier(name=suite_name), *_result_keys(context, suite_name)]
    if docs:
        context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=pages)
    return results


def _context(reports_dir: Path) -> Any:
    """The GE file context under ``reports_dir/gx``, its Data Docs site at ``reports_dir/data_docs``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context: Any = gx.get_context(mode="file", project_root_dir=str(reports_dir))
    site: Any = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": "../data_docs/"},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    sites = context.get_config().data_docs_sites or {}
    if sites.get(DOCS_SITE) != site:
        if DOCS_SITE in sites:
            context.update_data_docs_site(DOCS_SITE, site)
        else:
            context.add_data_docs_site(DOCS_SITE, site)
    bars = context.variables.progress_bars  # a dict once read back from great_expectations.yml
    if bars is None or (bars.get("globally") if isinstance(bars, dict) else bars.globally):
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()
    return context


def _expectations(batch: Batch) -> list[Any]:
    """GE expectation objects of the batch's rules; rules on absent columns are left out."""
    import great_expectations.expectations as gxe

    columns = set(batch.frame.columns)
    return [
        getattr(gxe, rule.expectation)(**rule.kwargs, severity=rule.severity)
        for rule in batch.rules
        if set(rule.columns()) <= columns
    ]


def _data_source(context: Any) -> Any:
    try:
        return context.data_sources.get("quality")
    except KeyError:
        return context.data_sources.add_pandas("quality")


def _result_keys(context: Any, suite_name: str) -> list[Any]:
    store = context.validation_results_store
    return [k for k in store.list_keys() if k.expectation_suite_identifier.name == suite_name]


def _forget(context: Any, suite_name: str, reports_dir: Path) -> None:
    """Drop the previous suite, validation, results and result pages of ``suite_name``: the latest only."""
    for key in _result_keys(context, suite_name):
        context.validation_results_store.remove_key(key)
    shutil.rmtree(
        reports_dir.joinpath("data_docs", "validations", *suite_name.split(".")), ignore_errors=True
    )
    for factory in (context.validation_definitions, context.suites):
        with contextlib.suppress(Exception):  # absent on a first run (GE raises several types)
            factory.delete(suite_name)
    with contextlib.suppress(Exception):
        context.data_sources.get("quality").delete_asset(suite_name)


# ----------------------------------------------------------------------------------- summaries


def summarize(
    handoff: str, source: str | Path, rows: int, batches: list[Batch], results: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Counts per severity and a description of every failed expectation, by severity."""
    evaluated = {"critical": 0, "warning": 0}
    failed = {"critical": 0, "warning": 0}
    failures: dict[str, list[str]] = {"critical": [], "warning": []}
    for batch in batches:
        for res in results[batch.name].results:
            severity = "critical" if str(res.expectation_config.severity.value) == "critical" else "warning"
            evaluated[severity] += 1
            if not res.success:
                failed[severity] += 1
                failures[severity].append(describe_failure(batch, res))
    skipped = sum(len(b.rules) for b in batches) - sum(evaluated.values())
    summary = {
        "handoff": handoff,
        "source": str(source),
        "rows": rows,
        "evaluated": evaluated,
        "failed": failed,
        "skipped": skipped,
    }
    return summary, failures


def expectation_label(config: Any) -> str:
    """``expect_x(column=c)``: the expectation type and the column(s) it reads."""
    kwargs = config.kwargs
    args = [f"{k}={kwargs[k]}" for k in ("column", "column_A", "column_B") if k in kwargs]
    return f"{config.type}({', '.join(args)})"


def describe_failure(batch: Batch, res: Any) -> str:
    """One line: the expectation, the batch, how many values failed and up to 5 offending rows."""
    label = f"{expectation_label(res.expectation_config)} [{batch.name}]"
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return f"{label}: raised {info.get('exception_message')}"
    result = res.result or {}
    if res.expectation_config.type == "expect_column_to_exist":
        return f"{label}: the column is missing"
    if "unexpected_count" not in result:
        observed = result.get("observed_value", result.get("details"))
        return f"{label}: observed {json_safe(observed)!r}"
    examples = result.get("partial_unexpected_index_list") or [
        {"value": v} for v in result.get("partial_unexpected_list") or []
    ]
    shown = "; ".join(_example(e, batch.index_columns) for e in examples[:MAX_EXAMPLES])
    return f"{label}: {result['unexpected_count']} of {result.get('element_count')} rows unexpected: {shown}"


def _example(entry: Any, index_columns: list[str]) -> str:
    """``path_id='a/1', step=2: rpe_labels=2``: the row's ids, then its offending values."""
    if not isinstance(entry, dict):
        return _short(json_safe(entry))
    ids = [f"{k}={_short(json_safe(entry[k]))}" for k in index_columns if k in entry]
    values = [f"{k}={_short(json_safe(v))}" for k, v in entry.items() if k not in index_columns]
    return ": ".join(filter(None, [", ".join(ids), ", ".join(values)]))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_message(handoff: str, source: str | Path, lines: list[str]) -> str:
    head = f"quality check of hand-off '{handoff}' ({source}) failed {len(lines)} critical expectation(s):"
    return "\n  ".join([head, *lines])


def write_report(path: Path, summary: dict[str, Any], results: dict[str, Any]) -> None:
    """The summary and each batch's GE validation result as JSON."""
    from components.data.io import write_json

    batches = {name: json_safe(res.to_json_dict()) for name, res in results.items()}
    write_json(path, {"summary": summary, "results": batches})
