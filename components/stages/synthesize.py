"""The ``synthesize`` stage: code-verified rationales for every labelled path, the consensus filter, SFT data.

For each path of the label table a teacher (``components/method/teachers.py``) writes a per-step critique
whose code ran in the sandbox. A path is kept only if the teacher's verdict agrees with its step labels
(RPE by default) on every step (``consensus: false``, the paper's ablation, keeps every fully judged
path and trains on the teacher's verdicts). Kept paths become TRL conversational SFT records in the paper's
multi-turn format (``sft.jsonl``) and in a "direct" variant whose assistant turns hold only the verdict
(``sft_direct.jsonl``, the baseline). Every table is checked by the Great Expectations suites of
``components/data/quality.py`` before it is written. Progress is journalled per path, so a killed run
resumes without losing or repeating work.

    genprm synthesize                       # dvc repro synthesize does the same
    genprm synthesize --set synthesize.labels=hard_labels   # the hard-MC ablation

Outputs (``synthesize.output_dir``): rationales.parquet, sft.jsonl, sft_direct.jsonl, report.md; metrics
in metrics/synthesize.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from components.data.journal import Journal, file_sha256, fingerprint
from components.data.records import RATIONALE_COLUMNS, RATIONALE_NEEDED
from components.method.metrics import first_error_from_labels
from components.method.rationale import conversation, verdict_text
from components.method.teachers import Critique, TeacherConfig
from components.platform.config import option, section, to_dict
from components.platform.errors import ConfigError, DataError
from components.sandbox import SandboxConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthesizeConfig:
    """The ``synthesize`` section of params.yaml."""

    teacher: TeacherConfig = section(TeacherConfig, help="Who writes the rationales.")
    sandbox: SandboxConfig = section(SandboxConfig, help="Limits for the teacher's code.")
    labels: Literal["rpe_labels", "hard_labels"] = option(
        "rpe_labels", help="The step labels the consensus filter compares the verdicts with."
    )
    consensus: bool = option(
        True,
        help="The consensus filter: keep a path only if the teacher's verdicts equal its labels on every "
        "step (false: the paper's ablation, keep every path the teacher judged fully; its verdicts train).",
    )
    input: str = option("data/label/labels.parquet", help="The label table (training paths).")
    max_paths: int | None = option(None, help="Critique only the first this many paths (null: all).")
    chunk_size: int = option(64, help="Paths critiqued per journalled batch.")
    report_samples: int = option(4, help="Kept and dropped rationales each written to report.md.")
    output_dir: str = option("data/synthesize", help="Directory of the rationales, SFT records and report.")

    def __post_init__(self) -> None:
        if self.max_paths is not None and self.max_paths < 1:
            raise ConfigError("synthesize.max_paths: must be at least 1 or null")
        if self.chunk_size < 1 or self.report_samples < 0:
            raise ConfigError("synthesize: chunk_size must be >= 1 and report_samples >= 0")


# ---------------------------------------------------------------------------------------------- records


def load_paths(cfg: SynthesizeConfig) -> pd.DataFrame:
    """The labelled paths, checked for the columns and list lengths the stage relies on."""
    from components.data.io import read_parquet

    frame = read_parquet(Path(cfg.input))
    missing = [c for c in RATIONALE_NEEDED if c not in frame.columns]
    if missing:
        raise DataError(f"{cfg.input}: missing column(s) {', '.join(missing)}")
    for row, rec in enumerate(frame.itertuples(index=False)):
        if len(rec.steps) == 0 or len(getattr(rec, cfg.labels)) != len(rec.steps):
            raise DataError(f"{cfg.input}: row {row} ({rec.path_id}): needs one {cfg.labels} entry per step")
    return frame.head(cfg.max_paths) if cfg.max_paths else frame


def agrees(verdicts: list[int], labels: list[int]) -> bool:
    """The consensus filter: every step has a verdict and the first wrong step is the same.

    Labels are 0 after the first error by construction; what the teacher says about a later step (the
    claim code style checks its arithmetic, right on a wrong value) is not compared.
    """
    return (
        len(verdicts) == len(labels)
        and -1 not in verdicts
        and first_error_from_labels(verdicts) == first_error_from_labels([int(v) for v in labels])
    )


def rationale_record(row: Any, critique: Critique, cfg: SynthesizeConfig, teacher: str) -> dict[str, Any]:
    """One rationales-table row: the path, the teacher's turns and verdicts, and whether it is kept."""
    statuses = critique.statuses
    return {
        "path_id": row.path_id,
        "problem_id": row.problem_id,
        "problem": row.problem,
        "gold_answer": row.gold_answer,
        "steps": list(row.steps),
        "correct": bool(row.correct),
        "rpe_labels": [int(v) for v in row.rpe_labels],
        "hard_labels": [int(v) for v in row.hard_labels],
        "labels": [int(v) for v in getattr(row, cfg.labels)],
        "verdicts": critique.verdicts,
        "turns": critique.turns,
        "rounds": critique.rounds,
        "code_runs": len(statuses),
        "code_errors": sum(s in ("error", "killed") for s in statuses),
        "code_timeouts": sum(s == "timeout" for s in statuses),
        "parse_failed": -1 in critique.verdicts,
        "kept": agrees(critique.verdicts, list(getattr(row, cfg.labels)))
        if cfg.consensus
        else -1 not in critique.verdicts,
        "consensus": cfg.consensus,
        "teacher": teacher,
    }


def sft_records(rationales: pd.DataFrame) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The kept paths as conversational SFT records: with the full rationales, and verdict-only (direct)."""
    full, direct = [], []
    for rec in rationales[rationales.kept].itertuples(index=False):
        # What the record teaches: the teacher's verdicts (the labels, where the consensus filter kept it).
        steps, step_labels = list(rec.steps), [int(v) for v in rec.verdicts]
        base = {"id": rec.path_id, "problem_id": rec.problem_id, "labels": step_labels}
        full.append(base | {"messages": conversation(rec.problem, steps, list(rec.turns))})
        verdicts = [verdict_text(bool(v)) for v in step_labels]
        direct.append(base | {"messages": conversation(rec.problem, steps, verdicts)})
    return full, direct


# ------------------------------------------------------------------------------------------------ run


def critique_paths(cfg: SynthesizeConfig, frame: pd.DataFrame, journal: Journal) -> list[dict[str, Any]]:
    """Critique every path not yet in the journal, a chunk at a time; all rationale rows in input order."""
    from components.method.teachers import make_teacher
    from components.sandbox import Sandbox

    pending = [row for row in frame.itertuples(index=False) if row.path_id not in journal.done]
    log.info(
        "synthesize: %d paths, %d already done, teacher %s",
        len(frame),
        len(frame) - len(pending),
        cfg.teacher.kind,
    )
    if pending:
        with Sandbox(cfg.sandbox) as sandbox:
            teacher = make_teacher(cfg.teacher, sandbox)
            for start in range(0, len(pending), cfg.chunk_size):
                chunk = pending[start : start + cfg.chunk_size]
                critiques = teacher.critique([(row.problem, list(row.steps)) for row in chunk])
                for row, critique in zip(chunk, critiques, strict=True):
                    journal.append(row.path_id, [rationale_record(row, critique, cfg, teacher.name)])
    return journal.records(order=list(frame.path_id))


def _cell(verdict: int, label: int) -> str:
    word = {1: "yes", 0: "no", -1: "none"}[verdict]
    return f"verdict_{word}_label_{label}"


def summarize(rationales: pd.DataFrame, labels: str) -> dict[str, Any]:
    """Kept rate, verdict-vs-label confusion over the steps up to each path's first labelled error, code
    error and timeout rates, rounds per step."""
    verdicts, gold = [], []  # gold: the consensus labels, i.e. `labels`
    for vs, labs in zip(rationales.verdicts, rationales["labels"], strict=True):
        first = first_error_from_labels(list(labs))
        upto = len(labs) if first < 0 else first + 1
        verdicts += [int(v) for v in vs[:upto]]
        gold += [int(v) for v in labs[:upto]]
    runs = int(rationales.code_runs.sum())
    steps = sum(len(vs) for vs in rationales.verdicts)
    confusion = {_cell(v, g): 0 for v in (1, 0, -1) for g in (1, 0)}
    for v, g in zip(verdicts, gold, strict=True):
        confusion[_cell(v, g)] += 1
    return {
        "paths": len(rationales),
        "kept": int(rationales.kept.sum()),
        "kept_rate": round(float(rationales.kept.mean()), 4) if len(rationales) else 0.0,
        "kept_correct_paths": int((rationales.kept & rationales.correct).sum()),
        "kept_incorrect_paths": int((rationales.kept & ~rationales.correct).sum()),
        "steps": steps,
        "compared_steps": len(verdicts),
        "step_agreement": round(
            sum(v == g for v, g in zip(verdicts, gold, strict=True)) / max(1, len(gold)), 4
        ),
        "confusion": confusion,
        "unparseable_paths": int(rationales.parse_failed.sum()),
        "code_runs": runs,
        "code_error_rate": round(int(rationales.code_errors.sum()) / max(1, runs), 4),
        "code_timeout_rate": round(int(rationales.code_timeouts.sum()) / max(1, runs), 4),
        "mean_rounds_per_step": round(sum(r for rs in rationales.rounds for r in rs) / max(1, steps), 3),
        "labels": labels,
        "consensus": bool(rationales["consensus"].all()) if "consensus" in rationales.columns else True,
    }


def report(rationales: pd.DataFrame, samples: int) -> str:
    """A readable markdown sample of kept and dropped rationales, for people to eyeball the teacher."""
    lines = ["# Rationale samples", ""]
    for title, part in (("Kept", rationales[rationales.kept]), ("Dropped", rationales[~rationales.kept])):
        lines += [f"## {title} ({len(part)} paths; first {min(samples, len(part))} shown)", ""]
        for rec in part.head(samples).itertuples(index=False):
            lines += [
                f"### {rec.path_id} (correct answer: {rec.correct})",
                "",
                f"**Problem.** {rec.problem}",
                "",
            ]
            for k, (step, turn) in enumerate(zip(rec.steps, rec.turns, strict=True), start=1):
                lines += [
                    f"**Paragraph {k}.** {step}",
                    f"(RPE label {rec.rpe_labels[k - 1]}, hard-MC label {rec.hard_labels[k - 1]}, "
                    f"verdict {rec.verdicts[k - 1]})",
                    "",
                    "````",
                    turn,
                    "````",
                    "",
                ]
    return "\n".join(lines)


def run_fingerprint(cfg: SynthesizeConfig) -> str:
    """What the journal's progress depends on: the teacher, the labels used and the input table."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("chunk_size", "report_samples")}
    return fingerprint(settings, file_sha256(Path(cfg.input)))


def write_outputs(cfg: SynthesizeConfig, rationales: pd.DataFrame, quality_cfg: Any) -> dict[str, Any]:
    """Check every table with the quality suites, then write them; returns the quality summaries."""
    from components.data import quality
    from components.data.io import write_jsonl, write_parquet

    out = Path(cfg.output_dir)
    full, direct = sft_records(rationales)
    checks = {
        "rationales": quality.check(
            "rationales", rationales, quality_cfg, source=str(out / "rationales.parquet")
        ),
        "sft": quality.check("sft", pd.DataFrame(full), quality_cfg, source=str(out / "sft.jsonl")),
        "sft_direct": quality.check(
            "sft_direct", pd.DataFrame(direct), quality_cfg, source=str(out / "sft_direct.jsonl")
        ),
    }
    write_parquet(out / "rationales.parquet", rationales)
    write_jsonl(out / "sft.jsonl", full)
    write_jsonl(out / "sft_direct.jsonl", direct)
    (out / "report.md").write_text(report(rationales, cfg.report_samples), encoding="utf-8")
    return checks


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: critique, filter, check, write; metrics to metrics/."""
    from components.data.io import write_json
    from components.platform.params import load_params

    params = load_params(params_path, overrides, ["synthesize", "quality"])
    cfg: SynthesizeConfig = params["synthesize"]
    started = time.perf_counter()
    frame = load_paths(cfg)
    journal = Journal(Path(cfg.output_dir) / ".progress.jsonl", run_fingerprint(cfg))
    rationales = pd.DataFrame(critique_paths(cfg, frame, journal), columns=RATIONALE_COLUMNS)
    metrics = summarize(rationales, cfg.labels)
    metrics["quality"] = write_outputs(cfg, rationales, params["quality"])
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    write_json(Path("metrics/synthesize.json"), metrics)
    journal.remove()
    log.info(
        "synthesize: kept %d of %d paths (%.1f%%)",
        metrics["kept"],
        metrics["paths"],
        100 * metrics["kept_rate"],
    )
    return metrics
