"""scripts/orderings.py: experiments named per seed and variant, gathered from real ``dvc exp show`` data.

A throwaway git + DVC project has one stage that writes ``metrics/benchmark.json`` and
``metrics/label.json`` from the params the script sets (seeds and the variants' keys), so the gathered
table is checked against numbers known in advance, in the layout DVC really returns.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import orderings  # noqa: E402

pytestmark = pytest.mark.slow

STAGE = """
import json, yaml
p = yaml.safe_load(open("params.yaml"))
seed = p["train"]["seed"]
hard = p["synthesize"]["labels"] == "hard_labels"
off = not p["synthesize"]["consensus"]
genprm = 60 + seed - (5 if hard else 0) - (3 if off else 0)
f1 = lambda v: {"mean_f1": v}
bench = {"processbench": {"genprm": {"maj@1": f1(genprm), "maj@8": f1(genprm + 2)},
                          "genprm_no_code": {"maj@1": f1(40)}, "direct": {"maj@1": f1(70)}},
         "seconds": 1}
label = {"processbench": {"rpe": {"f1": 0.5 + seed / 100}, "hard_mc": {"f1": 0.6}}, "seconds": 2}
json.dump(bench, open("metrics/benchmark.json", "w")); json.dump(label, open("metrics/label.json", "w"))
"""


def run(cwd: Path, *args: str) -> str:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_commands_name_each_seed_and_variant() -> None:
    commands = orderings.queue_commands([0, 7])
    assert len(commands) == 6 and all(c[:4] == ["dvc", "exp", "run", "--queue"] for c in commands)
    hard = next(c for c in commands if "ord-s7-hard" in c)
    assert {"prepare.seed=7", "bootstrap.seed=7", "train.seed=7", "synthesize.labels=hard_labels"} <= set(
        hard
    )
    rows = [{"Experiment": c[5]} for c in commands] + [{"Experiment": "other-exp"}, {"Experiment": None}]
    assert {s: sorted(v) for s, v in orderings.by_seed(rows).items()} == {
        0: ["base", "hard", "noconsensus"],
        7: ["base", "hard", "noconsensus"],
    }


def test_gather_reads_real_dvc_experiments(tmp_path: Path) -> None:
    import dvc.api

    (tmp_path / "metrics").mkdir()
    (tmp_path / "stage.py").write_text(STAGE)
    params = {
        "prepare": {"seed": 0}, "bootstrap": {"seed": 0}, "train": {"seed": 0},
        "synthesize": {"labels": "rpe_labels", "consensus": True},
    }  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    dvc_yaml = {"stages": {"all": {"cmd": f"{sys.executable} stage.py", "deps": ["stage.py"],
                "params": ["prepare", "bootstrap", "train", "synthesize"],
                "metrics": [{"metrics/benchmark.json": {"cache": False}},
                            {"metrics/label.json": {"cache": False}}]}}}  # fmt: skip
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(tmp_path, "git", "init", "-q")
    run(tmp_path, "dvc", "init", "-q")
    run(tmp_path, *git, "add", "-A")
    run(tmp_path, *git, "commit", "-qm", "init")
    for command in orderings.queue_commands([1, 2]):
        run(tmp_path, *[arg for arg in command if arg != "--queue"])  # the same experiments, run at once
    table = {row["ordering"]: row for row in orderings.ordering_rows(dvc.api.exp_show(repo=str(tmp_path)))}
    label = table["label F1: RPE vs hard-MC"]
    assert label["first"] == pytest.approx([51.0, 52.0]) and label["won"] == 0  # fractions -> percent
    assert table["GenPRM Pass@1 trained on RPE vs hard-MC"]["diff"] == [5.0, 5.0]
    assert table["consensus filter on vs off"]["diff"] == [3.0, 3.0]
    assert table["Maj@8 vs Pass@1"]["won"] == 2 and table["GenPRM vs direct"]["won"] == 0
    text = orderings.markdown(list(table.values()))
    assert (
        "| code execution on vs off | on > off | 61.5 ± 0.7 | 40.0 ± 0.0 | 21.5 ± 0.7 (+21.0, +22.0) | 2/2 |"
        in text
    )
    orderings.plot(list(table.values()), tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 1000
