"""The served and registered GenPRM never runs model-written code unconfined by inheritance.

The register stage logs the benchmark's scorer settings as the pyfunc's ``model_config``; a benchmark
run with ``sandbox.isolation: none`` must not hand that opt-out to ``mlflow models serve``, whose
requests steer the code. Only the serving process's own ``GENPRM_SANDBOX_ISOLATION`` may opt out.
"""

from __future__ import annotations

import pytest

from components.platform.errors import ConfigError
from components.platform.pyfunc import ISOLATION_ENV, scorer_config, served_settings

BENCHMARK = {
    "model": {"backend": "hf", "model": "models/genprm"},
    "sandbox": {"isolation": "none", "workers": 1, "timeout_s": 3.0},
}


def test_logged_settings_drop_the_opt_out() -> None:
    logged = served_settings(BENCHMARK)
    assert "isolation" not in logged["sandbox"] and logged["sandbox"]["workers"] == 1
    assert BENCHMARK["sandbox"]["isolation"] == "none"  # the caller's dict is left alone


def test_served_model_requires_isolation_whatever_was_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ISOLATION_ENV, raising=False)
    cfg = scorer_config(BENCHMARK, "/models/genprm")
    assert cfg.sandbox.isolation == "required" and cfg.sandbox.timeout_s == 3.0
    assert cfg.model.model == "/models/genprm"


def test_only_the_serving_process_may_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ISOLATION_ENV, "none")
    assert scorer_config(BENCHMARK, "/m").sandbox.isolation == "none"
    monkeypatch.setenv(ISOLATION_ENV, "off")
    with pytest.raises(ConfigError, match=r"sandbox\.isolation"):
        scorer_config(BENCHMARK, "/m")
