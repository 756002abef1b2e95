"""The synthesize stage on a label table of real small-world paths: consensus filter, SFT records, resume."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from components.data.records import problems_to_frame
from components.method.rationale import code_blocks, parse_verdict
from components.platform.errors import DataError
from components.platform.params import load_params
from components.stages import synthesize
from components.world.synthetic import (
    SyntheticConfig,
    generate_problems,
    gold_steps,
    inject_error,
    problem_text,
    to_problem,
)


def label_row(pid: str, k: int, text: str, steps: list[str], labels: list[int], correct: bool) -> dict:
    return {
        "path_id": f"{pid}/{k}",
        "problem_id": pid,
        "problem": text,
        "gold_answer": "0",
        "steps": steps,
        "correct": correct,
        "rpe_labels": labels,
        "hard_labels": [1] * len(steps),
    }


def build_label_table() -> tuple[pd.DataFrame, dict[str, bool]]:
    """Gold paths (all 1), arithmetic-slip paths (1 until the slip), paths the teacher disagrees with."""
    cfg, rng = SyntheticConfig(), random.Random(1)
    rows, expect = [], {}
    for p in generate_problems(cfg, 12, seed=11):
        text, gold = problem_text(p), gold_steps(p)
        rows.append(label_row(p.uid, 0, text, gold, [1] * len(gold), True))
        expect[f"{p.uid}/0"] = True
        index = rng.randrange(len(gold))
        wrong = inject_error(p, rng, cfg, "arithmetic", index)
        if wrong is not None:
            labels = [1] * index + [0] * (len(wrong) - index)
            rows.append(label_row(p.uid, 1, text, wrong, labels, False))
            expect[f"{p.uid}/1"] = True
        noisy = [1] * len(gold)
        noisy[-1] = 0  # an RPE label the teacher disagrees with: dropped
        rows.append(label_row(p.uid, 2, text, gold, noisy, True))
        expect[f"{p.uid}/2"] = False
    return pd.DataFrame(rows), expect


@pytest.fixture()
def project(tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, bool]]:
    shutil.copy(repo_root / "params.yaml", tmp_path / "params.yaml")
    table, expect = build_label_table()
    (tmp_path / "data").mkdir()
    table.to_parquet(tmp_path / "data" / "labels.parquet")
    held_out = [to_problem(p) for p in generate_problems(SyntheticConfig(), 5, seed=999, prefix="test")]
    problems_to_frame(held_out).to_parquet(tmp_path / "data" / "test.parquet")
    monkeypatch.chdir(tmp_path)
    return tmp_path, expect


OVERRIDES = [
    "synthesize.consensus=true",
    "synthesize.input=data/labels.parquet",
    "synthesize.output_dir=out",
    "synthesize.chunk_size=8",
    "quality.test_sets=[data/test.parquet]",
    "quality.reports_dir=reports",
]


def test_stage_keeps_exactly_the_agreeing_paths(project: tuple[Path, dict[str, bool]]) -> None:
    root, expect = project
    metrics = synthesize.main(root / "params.yaml", OVERRIDES)
    rationales = pd.read_parquet(root / "out" / "rationales.parquet")
    assert dict(zip(rationales.path_id, rationales.kept, strict=True)) == expect
    assert metrics["kept"] == sum(expect.values()) and metrics["paths"] == len(expect)
    assert metrics["confusion"]["verdict_yes_label_0"] == sum(not v for v in expect.values())
    assert metrics["code_error_rate"] == 0.0 and metrics["unparseable_paths"] == 0
    assert json.loads((root / "metrics" / "synthesize.json").read_text())["kept"] == metrics["kept"]
    assert "## Kept" in (root / "out" / "report.md").read_text()


def test_sft_records_follow_the_paper_format(project: tuple[Path, dict[str, bool]]) -> None:
    root, expect = project
    synthesize.main(root / "params.yaml", OVERRIDES)
    full = [json.loads(line) for line in (root / "out" / "sft.jsonl").read_text().splitlines()]
    direct = [json.loads(line) for line in (root / "out" / "sft_direct.jsonl").read_text().splitlines()]
    assert len(full) == len(direct) == sum(expect.values())
    for rec, short in zip(full, direct, strict=True):
        roles = [m["role"] for m in rec["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * len(rec["labels"])
        turns = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
        assert [parse_verdict(t) for t in turns] == rec["labels"]
        assert all(len(code_blocks(t)) == 1 and "[Code Output]" in t for t in turns)
        assert short["messages"][:2] == rec["messages"][:2]
        short_turns = [m["content"] for m in short["messages"] if m["role"] == "assistant"]
        assert [parse_verdict(t) for t in short_turns] == rec["labels"]
        assert not any("```" in t for t in short_turns)


def test_hard_label_ablation_compares_with_the_other_column(project: tuple[Path, dict[str, bool]]) -> None:
    root, _ = project
    metrics = synthesize.main(root / "params.yaml", [*OVERRIDES, "synthesize.labels=hard_labels"])
    # hard labels are all 1 here: the paths with gold steps survive (twice per problem), error paths do not
    assert metrics["kept"] == 24 and metrics["labels"] == "hard_labels"


def test_without_the_consensus_filter_every_judged_path_trains(project: tuple[Path, dict[str, bool]]) -> None:
    root, expect = project
    metrics = synthesize.main(root / "params.yaml", [*OVERRIDES, "synthesize.consensus=false"])
    assert metrics["kept"] == len(expect)  # the teacher judged every step of every path
    direct = [json.loads(line) for line in (root / "out" / "sft_direct.jsonl").read_text().splitlines()]
    disagreeing = [rec for rec in direct if not expect[rec["id"]]]
    assert len(disagreeing) == 12
    for rec in disagreeing:  # verdict-only turns carry the teacher's verdicts, not the noisy labels
        verdicts = [parse_verdict(m["content"]) for m in rec["messages"] if m["role"] == "assistant"]
        assert verdicts == rec["labels"] == [1] * len(verdicts)
    rationales = pd.read_parquet(root / "out" / "rationales.parquet")
    assert not rationales.consensus.any() and rationales.kept.all()


def test_a_second_run_resumes_from_the_journal(project: tuple[Path, dict[str, bool]]) -> None:
    root, _ = project
    params = load_params(root / "params.yaml", OVERRIDES)
    cfg = params["synthesize"]
    frame = synthesize.load_paths(cfg)
    journal_path = root / "out" / ".progress.jsonl"
    journal = synthesize.Journal(journal_path, synthesize.run_fingerprint(cfg))
    first = synthesize.critique_paths(cfg, frame.head(8), journal)
    lines_before = journal_path.read_text().splitlines()
    again = synthesize.Journal(journal_path, synthesize.run_fingerprint(cfg))
    assert again.done == set(frame.head(8).path_id)
    records = synthesize.critique_paths(cfg, frame, again)
    assert journal_path.read_text().splitlines()[: len(lines_before)] == lines_before
    assert [r["path_id"] for r in records] == list(frame.path_id)
    assert records[:8] == first


def test_bad_input_names_the_file_and_row(project: tuple[Path, dict[str, bool]]) -> None:
    root, _ = project
    table = pd.read_parquet(root / "data" / "labels.parquet")
    table["rpe_labels"] = [[1] if i == 3 else list(v) for i, v in enumerate(table.rpe_labels)]
    table.to_parquet(root / "data" / "labels.parquet")
    with pytest.raises(DataError, match=r"labels.parquet: row 3 .*one rpe_labels entry per step"):
        synthesize.main(root / "params.yaml", OVERRIDES)
    assert not (root / "out" / "sft.jsonl").exists()
