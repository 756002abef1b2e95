"""scripts/critique_audit.py: copy and verdict-follows-output rates, on critiques in the teacher's format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from components.method.rationale import format_turn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import critique_audit

STEP = "Removing 3 liters leaves 7 - 3 = 4 liters."


def turn(claim: str, check: str, output: str, yes: bool) -> str:
    return format_turn(1, f"The paragraph claims {claim}.", [(f"check = {check}\nprint(check)", output)], yes)


def test_rates_count_copies_and_verdicts_against_the_output() -> None:
    right = turn("7 - 3 = 4", "7 - 3 == 4", "True", True)
    miscopied = turn("7 - 3 = 4", "7 - 3 == 1", "False", False)  # follows its output, copied wrong
    contradicts = turn("7 - 2 = 4", "7 - 3 == 4", "True", False)
    result = critique_audit.audit(
        [([STEP, STEP, STEP, "No calculation here."], [right, miscopied, contradicts, right])]
    )
    assert result.rates() == {
        "steps": 3,
        "analysis_copies_claim": 66.7,
        "code_copies_claim": 66.7,
        "verdict_follows_output": 66.7,
        "judged_outputs": 3,
    }


def test_the_script_reads_the_benchmark_tables(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "pb.jsonl"
    data.write_text(json.dumps({"id": "r1", "steps": [STEP], "label": -1}) + "\n")
    scores = tmp_path / "scores.parquet"
    critique = [turn("7 - 3 = 4", "7 - 3 == 4", "True", True)]
    frame = pd.DataFrame([{"system": "genprm", "id": "r1", "critique": critique},
                          {"system": "teacher", "id": "r1", "critique": critique}])  # fmt: skip
    frame.to_parquet(scores)
    assert critique_audit.main(["--scores", str(scores), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("genprm: {'steps': 1, 'analysis_copies_claim': 100.0") and "teacher" not in out
    assert critique_audit.main(["--scores", str(tmp_path / "absent.parquet"), "--data", str(data)]) == 2


def test_the_claim_code_style_counts_as_a_copy() -> None:
    printed = format_turn(1, "The paragraph claims 7 - 3 = 4.", [("print(7 - 3 == 4)", "True")], True)
    miscopied = format_turn(1, "The paragraph claims 7 - 3 = 4.", [("print(7 - 2 == 4)", "False")], False)
    result = critique_audit.audit([([STEP, STEP], [printed, miscopied])])
    assert result.rates()["code_copies_claim"] == 50.0
