"""Session-wide test setup: offline, quiet, an isolated Hugging Face cache, and the shared data folder.

``pytest_configure`` runs before any test module is imported, so libraries that read their settings at
import time (``huggingface_hub``, ``datasets``) see the offline flags and the temporary cache too.

Fixtures: ``repo_root`` (the checkout), ``shared_data`` (the real benchmark files, ``$GENPRM_SHARED_DATA``
or ``<repo>/../shared/data``; skips with the reason where absent) and ``shared_file`` (one of its files
by stem, skipping where that file is absent).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

_HF_TMP_KEY = pytest.StashKey[Path]()


def shared_data_dir() -> Path:
    """Where the real benchmark files are expected (they may be absent)."""
    return Path(os.environ.get("GENPRM_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.update(QUIET_ENV)
    hf_home = Path(tempfile.mkdtemp(prefix="genprm-tests-hf-"))
    config.stash[_HF_TMP_KEY] = hf_home
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_DATASETS_CACHE"] = str(hf_home / "datasets")


def pytest_unconfigure(config: pytest.Config) -> None:
    hf_home = config.stash.get(_HF_TMP_KEY, None)
    if hf_home is not None:
        shutil.rmtree(hf_home, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository checkout (holds params.yaml, components/, tests/)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared benchmark folder; the test is skipped with the reason where it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found: {path} is absent (set GENPRM_SHARED_DATA to the folder)")
    return path


@pytest.fixture(scope="session")
def shared_file(shared_data: Path) -> Callable[[str], Path]:
    """``shared_file("gsm8k_test")`` -> the path of that jsonl file; skips where the file is absent."""

    def get(stem: str) -> Path:
        path = shared_data / f"{stem}.jsonl"
        if not path.is_file():
            pytest.skip(f"shared data file not found: {path} is absent (set GENPRM_SHARED_DATA)")
        return path

    return get


@pytest.fixture(autouse=True)
def restore_environment() -> Iterator[None]:
    """Undo environment changes a test leaves behind. ``mlflow.set_tracking_uri`` (called by tracking,
    training and registry code in-process) also sets ``MLFLOW_TRACKING_URI`` in ``os.environ``, which would
    otherwise send every later test's subprocesses to an earlier test's store."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
