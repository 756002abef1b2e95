"""The ``register`` stage against a real sqlite MLflow store: evidence checks, decisions, the alias.

The "GenPRM" is the tiny random chat model of ``conftest_backends`` and ``metrics/benchmark.json`` is
hand-written, so what is tested is the registry logic and the pyfunc plumbing (the model's code runs
in the real sandbox; a random model rarely writes code, so rewards come from its verdict logprobs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest_backends import build_tiny_model

from components.platform.errors import ConfigError, DataError
from components.platform.registry import (
    Champion,
    RegisterConfig,
    decide,
    dvc_dir_md5,
    gather_evidence,
    lock_path,
    model_dir_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]

# Small critiques so that scoring a few steps with the random model takes a second.
TINY_BENCHMARK = {
    "genprm": {
        "model": {"backend": "hf", "model": "models/genprm", "batch_size": 8},
        "max_tokens": 12,
        "max_rounds": 1,
        "threads": 1,
        "sandbox": {"workers": 1, "timeout_s": 5.0},
    }
}


def write_metrics(project: Path, f1: float, **extra: Any) -> Path:
    """A hand-written benchmark metrics file with ``f1`` as the headline Pass@1 F1."""
    metrics = {
        "headline": {"f1_maj@1": f1, "f1_maj@8": f1 + 1},
        "processbench": {"genprm": {"maj@1": {"mean_f1": f1}}},
        "verdicts": {"genprm": {"missing_rate": 0.0, "reward_source": "logprobs"}},
        "seconds": 1.0,
        **extra,
    }
    path = project / "metrics" / "benchmark.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return path


def make_project(project: Path, f1: float, seed: int = 0, register: dict[str, Any] | None = None) -> Path:
    """A project dir with a tiny model at models/genprm, its metrics, a params.yaml and dvc.yaml."""
    project.mkdir(parents=True, exist_ok=True)
    # A DVC project with the shipped dvc.yaml: the stage's tracking reads its outputs through DVC's API,
    # which resolves every ${...} of dvc.yaml from params.yaml (the shipped sections, tiny benchmark).
    shutil.copy2(REPO / "dvc.yaml", project / "dvc.yaml")
    if not (project / ".dvc").is_dir():
        dvc = str(Path(sys.executable).parent / "dvc")
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=project, check=True)
    build_tiny_model(project / "models" / "genprm", seed=seed)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["benchmark"] = {**params["benchmark"], **TINY_BENCHMARK}
    params["register"] = {**params["register"], **(register or {})}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    write_metrics(project, f1)
    return project


def store_env(db: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{db}",
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        GENPRM_LOG_LEVEL="WARNING",
    )
    return env


def genprm_register(project: Path, db: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "components.platform.cli", "register"]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(
        args, cwd=project, env=store_env(db), capture_output=True, text=True, timeout=300, check=False
    )


def registered(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def client(db: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{db}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_tags(db: Path) -> dict[str, str]:
    return dict(client(db).get_model_version_by_alias("genprm", "champion").tags)


# ------------------------------------------------------------------------------------------ decisions

CFG = RegisterConfig(margin=1.0)


@pytest.mark.parametrize(
    ("value", "champion", "cfg", "expected"),
    [
        (10.0, None, CFG, "promoted"),
        (51.5, Champion("3", 50.0, "headline.f1_maj@1"), CFG, "promoted"),
        (50.5, Champion("3", 50.0, "headline.f1_maj@1"), CFG, "kept_champion"),  # within the margin
        (51.0, Champion("3", 50.0, "headline.f1_maj@1"), CFG, "kept_champion"),  # must beat it, not tie
        (40.0, Champion("3", 50.0, "headline.f1_maj@1"), CFG, "kept_champion"),
        (99.0, Champion("3", 50.0, "headline.f1_maj@8"), CFG, "kept_champion"),  # another metric
        (40.0, Champion("3", 50.0, "headline.f1_maj@1"), replace(CFG, force=True), "promoted"),
        (5.0, None, replace(CFG, min_metric=10.0), "rejected"),
        (5.0, None, replace(CFG, min_metric=10.0, force=True), "rejected"),
    ],
)
def test_decide(value: float, champion: Champion | None, cfg: RegisterConfig, expected: str) -> None:
    decision, reason = decide(cfg, value, champion)
    assert decision == expected
    assert reason


def test_config_refuses_torchvision_and_a_negative_margin() -> None:
    with pytest.raises(ConfigError, match=r"register\.pip_requirements"):
        RegisterConfig(pip_requirements=["torch", "torchvision==0.20"])
    with pytest.raises(ConfigError, match=r"register\.margin"):
        RegisterConfig(margin=-1)


def test_lock_sits_beside_local_stores_only(tmp_path: Path) -> None:
    assert lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.register.lock"
    assert lock_path(tmp_path.as_uri()) == tmp_path / ".register.lock"
    assert lock_path("http://127.0.0.1:5000") is None


# ------------------------------------------------------------------------------------------- evidence


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_project(tmp_path / "project", 50.0)
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


def test_complete_fresh_metrics_are_evidence(project: Path) -> None:
    evidence = gather_evidence(RegisterConfig())
    assert (evidence.value, evidence.method) == (50.0, "mtime")


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (None, "not found"),
        ('{"headline": {"f1_maj@1": 5', "not valid JSON"),
        ({"headline": {"f1_maj@8": 1.0}, "processbench": {"genprm": {}}}, r"headline\.f1_maj@1 \(missing\)"),
        ({"headline": {"f1_maj@1": float("nan")}, "processbench": {"genprm": {}}}, "incomplete"),
        ({"headline": {"f1_maj@1": 1.0}, "processbench": {"genprm": {"maj@1": None}}}, "maj@1"),
        ({"headline": {"f1_maj@1": 1.0}}, r"processbench\.genprm \(missing\)"),
    ],
)
def test_missing_or_incomplete_metrics_are_refused(project: Path, metrics: Any, message: str) -> None:
    path = project / "metrics" / "benchmark.json"
    if metrics is None:
        path.unlink()
    else:
        path.write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    with pytest.raises(DataError, match=message):
        gather_evidence(RegisterConfig())


def test_metrics_older_than_the_model_are_refused(project: Path) -> None:
    old = time.time() - 60
    os.utime(project / "metrics" / "benchmark.json", (old, old))
    with pytest.raises(DataError, match="older than models/genprm"):
        gather_evidence(RegisterConfig())


def test_a_recorded_fingerprint_must_be_this_models(project: Path) -> None:
    write_metrics(project, 50.0, model_fingerprint="0123456789abcdef")
    with pytest.raises(DataError, match="belong to another model"):
        gather_evidence(RegisterConfig())
    write_metrics(project, 50.0, model_fingerprint=model_dir_fingerprint(Path("models/genprm")))
    assert gather_evidence(RegisterConfig()).method == "fingerprint"


@pytest.mark.slow
def test_dvc_lock_md5s_are_dvcs_own(project: Path) -> None:
    """dvc_dir_md5 agrees with DVC itself, and a lock entry for other model files is refused."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    (project / "dvc.yaml").unlink()  # `dvc add` of a stage's out would be refused
    shutil.rmtree(project / ".dvc")  # made without git by make_project: this test wants DVC with git
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "models/genprm"]):
        subprocess.run(
            [Path(sys.executable).parent / cmd[0] if cmd[0] == "dvc" else cmd[0], *cmd[1:]],
            check=True,
            env=env,
            capture_output=True,
        )
    added = yaml.safe_load(Path("models/genprm.dvc").read_text())["outs"][0]["md5"]
    assert dvc_dir_md5(Path("models/genprm")) == added
    from components.platform.registry import file_md5

    metrics_md5 = file_md5(Path("metrics/benchmark.json"))
    lock = {
        "stages": {
            "benchmark": {
                "deps": [{"path": "models/genprm", "md5": added}],
                "outs": [{"path": "metrics/benchmark.json", "md5": metrics_md5}],
            }
        }
    }
    Path("dvc.lock").write_text(yaml.safe_dump(lock))
    assert gather_evidence(RegisterConfig()).method == "dvc_lock"
    lock["stages"]["benchmark"]["deps"][0]["md5"] = "0" * 32 + ".dir"
    Path("dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.raises(DataError, match=r"dvc\.lock"):
        gather_evidence(RegisterConfig())


# ------------------------------------------------------------------------------------ against MLflow

PREDICT = """
import json, sys
import mlflow.pyfunc, pandas as pd, torch
torch.set_num_threads(1)
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/genprm@champion")
frame = pd.DataFrame({
    "problem": ["Tom has 3 apples and buys 4 more. How many?", "What is 6 * 7?"],
    "steps": [["Step 1: 3 + 4 = 7.", "Step 2: The answer is 7."], ["Step 1: 6 * 7 = 42."]],
})
out = model.predict(frame, params={"samples": 2}).to_dict(orient="list")
out["requirements"] = open(mlflow.pyfunc.get_model_dependencies("models:/genprm@champion")).read()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_register_promotes_only_a_better_version_and_serves_it(tmp_path: Path) -> None:
    db, project = tmp_path / "mlflow.db", make_project(tmp_path / "project", 50.0, seed=0)
    first = registered(genprm_register(project, db))
    assert (first["version"], first["decision"], first["champion"]) == (1, "promoted", 1)
    assert registered(genprm_register(project, db))["decision"] == "unchanged"  # same files: no v2

    build_tiny_model(project / "models" / "genprm", seed=1)  # retrained, but worse
    write_metrics(project, 49.5)
    second = registered(genprm_register(project, db, "register.margin=0.1"))
    assert (second["version"], second["decision"], second["champion"]) == (2, "kept_champion", 1)

    build_tiny_model(project / "models" / "genprm", seed=2)
    write_metrics(project, 50.05)  # better, but not by the margin
    assert registered(genprm_register(project, db, "register.margin=0.1"))["decision"] == "kept_champion"
    build_tiny_model(project / "models" / "genprm", seed=3)
    write_metrics(project, 61.0)
    fourth = registered(genprm_register(project, db, "register.margin=0.1"))
    assert (fourth["version"], fourth["decision"], fourth["champion"]) == (4, "promoted", 4)

    tags = champion_tags(db)
    assert tags["genprm.decision"] == "promoted" and tags["genprm.previous_champion"] == "1"
    assert float(tags["genprm.metric"]) == 61.0 and "beats champion v1 (50)" in tags["genprm.reason"]
    assert tags["genprm.consistency"] == "mtime" and tags["genprm.run_id"]
    kept = dict(client(db).get_model_version("genprm", "2").tags)
    assert kept["genprm.decision"] == "kept_champion" and "does not beat" in kept["genprm.reason"]

    # A fresh process, elsewhere: everything it needs comes from the registry.
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT, f"sqlite:///{db}"],
        cwd=tmp_path,
        env={**store_env(db), "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [len(r) for r in out["rewards"]] == [2, 1]
    assert all(0.0 <= r <= 1.0 for row in out["rewards"] for r in row)
    assert set(out["reward_source"]) <= {"logprobs", "verdict_text", "none"}
    assert set(out) >= {"code_runs", "code_failures", "missing_verdicts"}
    reqs = out["requirements"]
    assert "torchvision" not in reqs and "torch==2." in reqs and "transformers==" in reqs


@pytest.mark.slow
def test_incomplete_run_registers_nothing(tmp_path: Path) -> None:
    db, project = tmp_path / "mlflow.db", make_project(tmp_path / "project", 50.0)
    write_metrics(project, float("nan"))
    proc = genprm_register(project, db)
    assert proc.returncode == 2, proc.stderr
    assert "incomplete benchmark metrics: headline.f1_maj@1" in proc.stderr
    assert client(db).search_registered_models() == []


@pytest.mark.slow
def test_concurrent_registers_leave_the_better_champion(tmp_path: Path) -> None:
    """Two runs reach the compare-and-set together (held at the store lock until both have logged
    their version, then released at once): the better one ends as champion, and the second to get
    the lock decides against the first one's outcome, never against the champion it saw earlier."""
    from filelock import FileLock

    db = tmp_path / "mlflow.db"
    client(db).search_experiments()  # an existing store (two first-ever runs would race on its schema)
    projects = [
        make_project(tmp_path / "worse", 40.0, seed=4),
        make_project(tmp_path / "better", 70.0, seed=5),
    ]
    lock = lock_path(f"sqlite:///{db}")
    assert lock is not None
    with FileLock(str(lock)):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "components.platform.cli", "register"],
                cwd=project,
                env=store_env(db),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for project in projects
        ]
        deadline = time.monotonic() + 240
        while not _both_waiting(db) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a register finished while the lock was held"
            time.sleep(0.5)
        assert _both_waiting(db)
        time.sleep(5)  # a run that ignored the lock would decide and exit now
        assert all(p.poll() is None for p in procs), "a register did not wait for the store lock"
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out))
    assert float(champion_tags(db)["genprm.metric"]) == 70.0
    tags = {
        str(r["version"]): dict(client(db).get_model_version("genprm", str(r["version"])).tags)
        for r in results
    }
    first = next(v for v, t in tags.items() if t["genprm.previous_champion"] == "none")
    [second] = set(tags) - {first}
    assert tags[first]["genprm.decision"] == "promoted"
    assert tags[second]["genprm.previous_champion"] == first, "the second run decided on a stale champion"
    expected = "promoted" if float(tags[first]["genprm.metric"]) == 40.0 else "kept_champion"
    assert tags[second]["genprm.decision"] == expected, tags[second]["genprm.reason"]


def _both_waiting(db: Path) -> bool:
    """Both versions are registered with their provenance: both runs are at the store lock."""
    try:
        found = client(db).search_model_versions("name='genprm'")
    except Exception:  # the registered model does not exist yet
        return False
    return len(found) == 2 and all("genprm.run_id" in v.tags for v in found)
