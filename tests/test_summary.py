"""``genprm summary``: the end-of-run summary read from metrics files in the layouts the stages write.

The full-run fixture copies the key layouts of ``components/stages/*.py`` (``benchmark.json``:
``headline.f1_maj@N``, ``processbench.<system>.maj@N.{mean_f1, subsets}``, ``verdicts.<system>``,
``best_of_n.<set>.<selector>.<N>``; ``label.json`` fractions; ``synthesize.json``; ``register.json``;
``refine.json``'s ``accuracy.<set>.<critic>.turn_<t>``) with the numbers of issue 13's measured run; one
test builds the files with the stages' own functions instead, so a layout change there fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.platform.cli import app
from components.platform.summary import LAST_LINE, render


def pb(f1: float, err: float | None, corr: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "mean_f1": f1,
        "subsets": {"processbench": {"acc_error": err, "acc_correct": corr, "f1": f1}},
    } | extra


def bon(values: dict[str, list[float]], problems: int) -> dict[str, Any]:
    curves = {sel: {str(n): v for n, v in zip((1, 2, 4, 8), vs, strict=True)} for sel, vs in values.items()}
    return curves | {"problems": problems}


BENCHMARK = {
    "headline": {"f1_maj@1": 26.4, "f1_maj@2": 29.1, "f1_maj@4": 22.3, "f1_maj@8": 30.4},
    "model_fingerprint": "fafb3c8c879ff70e",
    "seconds": 1980.0,
    "processbench": {
        "genprm": {
            "maj@1": pb(26.4, 18.4, 47.1),
            "maj@2": pb(29.1, 21.0, 47.5),
            "maj@4": pb(22.3, 15.0, 43.0),
            "maj@8": pb(30.4, 22.0, 49.0),
        },
        "genprm_no_code": {"maj@1": pb(11.3, 6.1, 76.5)},
        "direct": {"maj@1": pb(0.0, 0.0, 100.0)},
        "teacher": {"maj@1": pb(72.3, 56.7, 100.0), "missing_verdict_rate": 0.0},
    },
    "verdicts": {
        "genprm": {"turns": 2900, "missing": 780, "missing_rate": 26.9, "reward_source": "logprobs"},
        "genprm_no_code": {"turns": 420, "missing": 21, "missing_rate": 5.0, "reward_source": "logprobs"},
        "direct": {"turns": 420, "missing": 0, "missing_rate": 0.0, "reward_source": "logprobs"},
    },
    "intervals": {
        "processbench": {
            "f1": {"genprm": {"maj@1": {"lo": 17.9, "hi": 34.8}}},
            "contrasts": {
                "genprm_maj@8_minus_maj@1": {"value": 4.0, "lo": -2.1, "hi": 10.3},
                "genprm_code_on_minus_off": {"value": 15.1, "lo": 6.0, "hi": 24.2},
            },
        },
        "best_of_n": {"synthetic": {"minus_majority": {"prm_last": {"value": -4.2, "lo": -12.5, "hi": 4.2}}}},
    },
    "best_of_n": {
        "synthetic": bon(
            {
                "prm_last": [59.4, 60.4, 62.5, 64.6],
                "prm_min": [59.4, 60.0, 61.5, 62.5],
                "prm_mean": [59.4, 61.0, 61.5, 62.5],
                "weighted_vote": [59.4, 60.4, 63.5, 64.6],
                "majority": [59.4, 59.4, 66.7, 68.8],
                "pass_at_n": [59.4, 68.8, 75.0, 79.2],
                "random": [59.4, 59.4, 59.4, 59.4],
            },
            48,
        )
    },
}
LABEL = {
    "processbench": {
        "paths": 100,
        "epsilon": 0.8,
        "rpe": {"acc_error": 0.6, "acc_correct": 0.8, "f1": 0.686},
        "hard_mc": {"acc_error": 0.7, "acc_correct": 0.82, "f1": 0.757},
    },
    "rollouts": {"paths": 300},
    "seconds": 180.0,
}
SYNTHESIZE = {
    "paths": 300,
    "kept": 112,
    "kept_rate": 0.3733,
    "labels": "rpe_labels",
    "step_agreement": 0.8739,
}
REGISTER = {
    "decision": "promoted",
    "reason": "no champion yet; headline.f1_maj@1=26.4",
    "version": 1,
    "champion": 1,
    "previous_champion": None,
    "metric": 26.4,
}
REFINE = {
    "accuracy": {"synthetic": {"genprm": {f"turn_{t}": v for t, v in enumerate([50.0, 54.2, 56.2, 56.2])}}},
    "gain": {"synthetic": {"genprm": 6.2}},
    "gain_ci95": {"synthetic": {"genprm": [0.1, 12.4]}},
    "problems": {"synthetic": 48},
}


def write_run(root: Path, metrics: dict[str, Any]) -> Path:
    (root / "metrics").mkdir(parents=True)
    for name, data in metrics.items():
        (root / "metrics" / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    for rel in ("plots/benchmark_f1.json", "data/benchmark/f1_vs_n.png", "data/synthesize/report.md"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x", encoding="utf-8")
    return root


def summary_of(root: Path) -> str:
    result = CliRunner().invoke(app, ["summary", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def test_a_full_run_reads_as_a_short_summary(tmp_path: Path) -> None:
    run = {"benchmark": BENCHMARK, "label": LABEL, "synthesize": SYNTHESIZE, "register": REGISTER}
    text = summary_of(write_run(tmp_path, run | {"refine": REFINE}))
    lines = text.splitlines()
    expected = [
        "  system                Pass@1   Maj@2   Maj@4   Maj@8  err acc corr acc  missing",
        "  genprm                  26.4    29.1    22.3    30.4     18.4     47.1     26.9",
        "  genprm_no_code          11.3       -       -       -      6.1     76.5      5.0",
        "  direct                   0.0       -       -       -      0.0    100.0      0.0",
        "  teacher (ceiling)       72.3       -       -       -     56.7    100.0      0.0",
        "    genprm: Pass@1 [17.9, 34.8]",
        "  genprm rewards read from: logprobs",
        "  synthetic (48, N=8)          64.6     62.5     62.5     64.6     68.8     79.2     59.4"
        "  prm_last -4.2 [-12.5, 4.2]",
        "    Maj@8 - Pass@1                 +4.0  [-2.1, 10.3]",
        "    code on - off (Pass@1)        +15.1  [6.0, 24.2]",
        "Label F1 vs true first errors (100 ProcessBench paths): RPE (epsilon 0.8) 68.6, hard-MC 75.7",
        "Synthesize: kept 112 of 300 paths (37.3%): the consensus filter against rpe_labels",
        "  synthetic (48 problems), genprm       50.0 -> 54.2 -> 56.2 -> 56.2"
        "  (gain +6.2, 95% CI [0.1, 12.4])",
        "Register: version 1 promoted (champion: v1); no champion yet; headline.f1_maj@1=26.4",
        "  plots/benchmark_f1.json",
        "  data/benchmark/f1_vs_n.png",
        "  data/synthesize/report.md",
    ]
    for line in expected:
        assert line in lines, f"{line!r} not in:\n{text}"
    assert lines[-1] == LAST_LINE and "dvc metrics show" in LAST_LINE
    skipped = text.split("Skipped:\n")[1].split("\n\n")[0]
    assert skipped == "  reports/quality/data_docs/index.html: nothing there yet"  # nothing else is missing
    assert len(lines) < 45 and max(map(len, lines)) <= 120  # short, and narrow enough for a terminal


def test_missing_and_broken_files_are_skipped_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "benchmark.json").write_text(json.dumps(BENCHMARK), encoding="utf-8")
    (tmp_path / "metrics" / "label.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "metrics" / "synthesize.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "metrics" / "register.json").write_text(json.dumps({"version": 2}), encoding="utf-8")
    text = summary_of(tmp_path)
    assert "  genprm                  26.4    29.1    22.3    30.4     18.4     47.1     26.9" in text
    notes = text.split("Skipped:\n")[1].splitlines()
    assert notes[0].startswith("  metrics/label.json: not readable as JSON (")
    assert notes[1] == "  metrics/synthesize.json: holds a list, not an object; skipped"
    assert (
        notes[2]
        == "  metrics/register.json: no register summary (unexpected layout: KeyError('decision')); skipped"
    )
    assert "  plots/*.json: nothing there yet" in notes
    assert "refine" not in text  # an optional stage that did not run is no news
    assert "Label F1" not in text and "Register:" not in text


def test_nothing_run_yet(tmp_path: Path) -> None:
    text = summary_of(tmp_path)
    for name in ("benchmark", "label", "synthesize", "register"):
        assert f"  metrics/{name}.json: not found (its stage has not run); skipped" in text
    assert "Plots and reports:\n  none yet" in text
    result = CliRunner().invoke(app, ["summary", "--root", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "no such directory" in result.output


def test_the_layouts_the_stage_code_writes(tmp_path: Path) -> None:
    from components.data.records import ProcessBenchRecord
    from components.method.intervals import benchmark_intervals
    from components.method.processbench import as_percent, evaluate
    from components.stages.label import quality
    from components.stages.synthesize import summarize

    records = [
        ProcessBenchRecord(i, "g", "p", ["a", "b"], lab == -1, lab)
        for i, lab in zip("wxyz", (-1, -1, 0, 1), strict=True)
    ]
    scores = evaluate({"processbench": records}, {"w": -1, "x": 0, "y": 0, "z": -1})  # F1 = 50%
    bench = as_percent({"processbench": {"genprm": {"maj@1": scores}}, "best_of_n": {}})
    predictions = {"genprm": {"maj@1": {"w": -1, "x": 0, "y": 0, "z": -1}}}
    golds = [("processbench", r.id, r.label) for r in records]
    bench["intervals"] = benchmark_intervals(golds, predictions, {}, rounds=200)
    frame = pd.DataFrame(
        {
            "label": [-1, 0],
            "mc0": [1.0, 1.0],
            "mc": [[1.0, 1.0], [0.0, 0.0]],
            "rpe_labels": [[1, 1], [0, 0]],
            "hard_labels": [[1, 1], [1, 0]],
        }
    )
    label_scores, _ = quality(frame, [0.8])
    label = {"processbench": {**label_scores, "paths": 2, "epsilon": 0.8}}
    rationales = pd.DataFrame(
        {
            "verdicts": [[1, 1], [1, 0]],
            "labels": [[1, 1], [1, 1]],
            "kept": [True, False],
            "correct": [True, False],
            "code_runs": [2, 2],
            "code_errors": [0, 0],
            "code_timeouts": [0, 0],
            "parse_failed": [False, False],
            "rounds": [[1, 1], [1, 1]],
        }
    )
    synth = summarize(rationales, "rpe_labels")
    text = summary_of(write_run(tmp_path, {"benchmark": bench, "label": label, "synthesize": synth}))
    assert "unexpected layout" not in text, text
    assert "  genprm                  50.0     50.0     50.0        -" in text
    assert "    genprm: Pass@1 [" in text  # the interval the stage code writes is read back
    assert "RPE (epsilon 0.8) 100.0, hard-MC 0.0" in text
    assert "Synthesize: kept 1 of 2 paths (50.0%)" in text


def test_render_is_the_cli_text(tmp_path: Path) -> None:
    write_run(tmp_path, {"synthesize": SYNTHESIZE})
    assert summary_of(tmp_path) == render(tmp_path) + "\n"


@pytest.mark.parametrize("value", [None, "n/a"])
def test_undefined_numbers_print_as_a_dash(tmp_path: Path, value: Any) -> None:
    bench = json.loads(json.dumps(BENCHMARK))
    bench["processbench"]["genprm"]["maj@1"]["mean_f1"] = value
    text = summary_of(write_run(tmp_path, {"benchmark": bench}))
    assert "  genprm                     -    29.1" in text


def test_synthesize_without_the_consensus_filter_says_so(tmp_path: Path) -> None:
    write_run(tmp_path, {"synthesize": SYNTHESIZE | {"kept": 300, "kept_rate": 1.0, "consensus": False}})
    text = summary_of(tmp_path)
    assert "Synthesize: kept 300 of 300 paths (100.0%): no consensus filter" in text, text
    assert "the consensus filter against" not in text
