"""Fingerprints of files and models (components/data/fingerprints.py, re-exported by journal.py).

Large weights are real files over the 64 MiB limit (sparse, so they cost no disk): two checkpoints with
the same file names and sizes but different bytes must fingerprint differently, repeated fingerprints
must come from the hash cache, and any change to a file (in place, or a replaced file) must be hashed
again. Hub ids resolve offline through a fake Hugging Face cache laid out as huggingface_hub writes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from components.data import fingerprints
from components.data.fingerprints import file_sha256, hub_commit, model_fingerprint
from components.data.journal import fingerprint
from components.data.journal import model_fingerprint as journal_model_fingerprint

BIG = fingerprints._HASH_LIMIT + 2**20  # just over the limit: 65 MiB


@pytest.fixture(autouse=True)
def hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private hash cache file; files count as settled at once (no 2 s racy window to wait out)."""
    cache = tmp_path / "cache" / "sha256.jsonl"
    monkeypatch.setenv("GENPRM_HASH_CACHE", str(cache))
    monkeypatch.setattr(fingerprints, "_RACY_NS", 0)
    return cache


def sparse(path: Path, size: int = BIG, tail: bytes = b"a") -> Path:
    """A sparse file of ``size`` bytes whose last bytes are ``tail`` (zeros before)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size - len(tail))
        fh.seek(size - len(tail))
        fh.write(tail)
    return path


def checkpoint(folder: Path, tail: bytes) -> Path:
    """A model dir: a small config and a >64 MiB weights file that differs between checkpoints only
    in its last byte (a retrain with the same shapes)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    sparse(folder / "model.safetensors", tail=tail)
    return folder


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every full read of a file's content."""
    calls: list[Path] = []
    real = fingerprints._sha256

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fingerprints, "_sha256", counting)
    return calls


def test_same_shapes_different_weights_fingerprint_differently(tmp_path: Path) -> None:
    first, retrained = checkpoint(tmp_path / "a", b"1"), checkpoint(tmp_path / "b", b"2")
    assert (first / "model.safetensors").stat().st_size > 64 * 2**20
    fa, fb = model_fingerprint(str(first)), model_fingerprint(str(retrained))
    assert [(name, size) for name, size, _ in fa] == [(name, size) for name, size, _ in fb]
    assert fa != fb and fingerprint(fa) != fingerprint(fb)
    # the journal's name for it is the same function
    assert journal_model_fingerprint(str(first)) == fa
    # and the weights' entry is the real content hash
    import hashlib

    content = (first / "model.safetensors").read_bytes()
    assert fa[1] == ("model.safetensors", BIG, hashlib.sha256(content).hexdigest())


def test_large_hashes_are_cached_and_rehashed_on_any_change(
    tmp_path: Path, hash_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = sparse(tmp_path / "w.bin", tail=b"x")
    calls = count_hashing(monkeypatch)
    digest = file_sha256(weights)
    assert calls == [weights] and hash_cache.is_file()
    assert file_sha256(weights) == digest and len(calls) == 1, "the second fingerprint is a cache hit"

    # rewritten in place, same size, mtime set back: the ctime moved, so it is hashed again
    before = weights.stat()
    time.sleep(0.02)
    with weights.open("r+b") as fh:
        fh.seek(BIG - 1)
        fh.write(b"y")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns == before.st_mtime_ns
    changed = file_sha256(weights)
    assert changed != digest and len(calls) == 2

    # replaced by another file (a new inode) with the old bytes: hashed again, right again
    sparse(tmp_path / "new.bin", tail=b"x").replace(weights)
    assert file_sha256(weights) == digest and len(calls) == 3


def test_small_files_are_hashed_without_the_cache(tmp_path: Path, hash_cache: Path) -> None:
    small = tmp_path / "config.json"
    small.write_text("{}")
    assert file_sha256(small) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert not hash_cache.exists()


def test_fresh_files_are_not_cached(
    tmp_path: Path, hash_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fingerprints, "_RACY_NS", 2 * 10**9)
    weights = sparse(tmp_path / "w.bin")
    calls = count_hashing(monkeypatch)
    assert file_sha256(weights) == file_sha256(weights) and len(calls) == 2
    assert not hash_cache.exists()


def test_a_broken_or_unwritable_cache_only_costs_a_rehash(
    tmp_path: Path, hash_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = sparse(tmp_path / "w.bin", tail=b"z")
    digest = file_sha256(weights)
    # a torn last line and garbage: ignored, the good entry still hits
    with hash_cache.open("a") as fh:
        fh.write('not json\n{"path": "x", "sha256"')
    calls = count_hashing(monkeypatch)
    assert file_sha256(weights) == digest and calls == []
    # a forged entry with another key is never used
    entry = json.loads(hash_cache.read_text().splitlines()[0])
    hash_cache.write_text(json.dumps({**entry, "ino": entry["ino"] + 1, "sha256": "0" * 64}) + "\n")
    assert file_sha256(weights) == digest and len(calls) == 1
    # a cache that cannot be written (its folder is a file)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("GENPRM_HASH_CACHE", str(blocker / "sha256.jsonl"))
    assert file_sha256(weights) == digest and len(calls) == 2


def test_the_cache_is_compacted(tmp_path: Path, hash_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprints, "_CACHE_COMPACT_LINES", 3)
    files = [sparse(tmp_path / f"w{i}.bin", tail=bytes([65 + i])) for i in range(3)]
    for path in files:
        file_sha256(path)
    for _ in range(4):  # the same file changing again and again: stale lines pile up, then go
        time.sleep(0.01)
        sparse(tmp_path / "w9.bin", tail=b"q").replace(files[0])
        file_sha256(files[0])
    lines = hash_cache.read_text().splitlines()
    assert len(lines) <= 4
    paths = [json.loads(line)["path"] for line in lines]
    assert sorted(set(paths)) == sorted(str(p.resolve()) for p in files)
    calls = count_hashing(monkeypatch)
    assert [file_sha256(p) for p in files] and calls == []


# ----------------------------------------------------------------------------------------- hub ids


def fake_hub(cache: Path, repo: str, refs: dict[str, str]) -> Path:
    """The part of huggingface_hub's cache layout that resolves revisions: refs/<name> -> commit."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    for name, commit in refs.items():
        (folder / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / name).write_text(commit)
        (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / commit / "config.json").write_text("{}")
    return folder


def test_hub_ids_fingerprint_by_their_resolved_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)
    repo = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    old, new, tagged = "a" * 40, "b" * 40, "c" * 40
    folder = fake_hub(hub, repo, {"main": old, "v1": tagged})
    assert model_fingerprint(repo) == {"hub": repo, "commit": old}
    assert model_fingerprint(repo, "v1") == {"hub": repo, "commit": tagged}
    assert hub_commit(repo, "d" * 40) == "d" * 40, "a commit needs no lookup"
    # the hub moved main to a new commit and it was downloaded: the fingerprint follows
    (folder / "refs" / "main").write_text(new)
    assert model_fingerprint(repo) == {"hub": repo, "commit": new}
    # not cached (or a served name that is no hub model): the id with its revision as given
    assert model_fingerprint("Qwen/QwQ-32B") == {"hub": "Qwen/QwQ-32B", "revision": "main"}
    assert model_fingerprint("Qwen/QwQ-32B", "v2") == {"hub": "Qwen/QwQ-32B", "revision": "v2"}
    (folder / "refs" / "main").write_text("garbage")
    assert model_fingerprint(repo) == {"hub": repo, "revision": "main"}


def test_local_paths_are_never_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert model_fingerprint("models/genprm") == "models/genprm", "a model dir not trained yet"
    assert model_fingerprint(str(tmp_path / "missing")) == str(tmp_path / "missing")
    single = sparse(tmp_path / "model.gguf", size=10, tail=b"k")
    assert model_fingerprint(str(single)) == [("model.gguf", 10, file_sha256(single))]
