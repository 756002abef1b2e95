"""Content fingerprints of files and models: what a journal, a shard or ``register`` compares.

- ``file_sha256(path)``: the sha256 of the whole content, for every size. Files of at least
  ``_HASH_LIMIT`` bytes (64 MiB: model weights) have their hash cached, keyed by the file's resolved
  path, device, inode, size, ``mtime_ns`` and ``ctime_ns``: a file rewritten in place changes its size,
  mtime or ctime (ctime cannot be set back by a user), a file replaced by another (``save_pretrained``,
  ``cp``, ``dvc checkout``) has another inode, so either is hashed again. A file changed in the last two
  seconds is hashed but not cached (a same-size rewrite within one timestamp tick would look unchanged).
  Hashing a 15 GB checkpoint takes tens of seconds once; later fingerprints cost a ``stat`` per file.
- ``model_fingerprint(model, revision=None)``: a local model directory is the list of its files
  (relative name, size, sha256), so a retrain with the same shapes fingerprints differently; a local
  file is the same for that one file. A hub id (``org/name``) is its resolved commit, read offline from
  the local Hugging Face cache (``<HF_HUB_CACHE>/models--org--name/refs/<revision>``, the layout
  ``huggingface_hub`` writes; a 40-hex ``revision`` is a commit already); where it cannot be resolved
  (not cached yet, or a served model name that is not on the hub) it is the id with its revision as
  given (``main`` when none), so it changes once the model is cached: a journal begun before the first
  download of its model is refused after it (delete it, or download first). Anything else (a path that
  does not exist yet) is the string itself.

The hash cache is one small jsonl file, ``$GENPRM_HASH_CACHE`` (default
``$XDG_CACHE_HOME/genprm/sha256.jsonl``, i.e. ``~/.cache/genprm/sha256.jsonl``), one line per hashed
file, compacted to the newest entry per path when it grows past ``_CACHE_COMPACT_LINES`` lines. It is
only an accelerator: a missing, unreadable, unwritable or torn cache file means hashing again, never a
wrong hash (an entry is used only when every part of its key matches the file as it is now).

    file_sha256(Path("models/genprm/model.safetensors"))   # '9f86d0...' (cached when >= 64 MiB)
    model_fingerprint("models/genprm")     # [['config.json', 712, 'ab12...'], ['model.safetensors', ...]]
    model_fingerprint("Qwen/Qwen2.5-7B-Instruct")   # {'hub': ..., 'commit': 'a09a3545...'} when cached
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

_HASH_LIMIT = 64 * 2**20
"""Files of at least this many bytes are hashed in full once and their hash kept in the hash cache."""

_CACHE_COMPACT_LINES = 4096
"""The hash cache is rewritten with the newest entry per path once it holds more lines than this."""

_RACY_NS = 2 * 10**9
"""A file changed less than this long ago is hashed but not cached: a rewrite within the same clock tick
of the file system's timestamps (same size) could not be told from the cached version ("racy git")."""

_BLOCK = 8 * 2**20
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def cache_path() -> Path:
    """Where the hash cache lives: ``$GENPRM_HASH_CACHE``, else ``<XDG cache>/genprm/sha256.jsonl``."""
    explicit = os.environ.get("GENPRM_HASH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genprm" / "sha256.jsonl"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path, stat: os.stat_result) -> dict[str, Any]:
    """The cache key of a file as it is now."""
    return {
        "path": str(path),
        "dev": stat.st_dev,
        "ino": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def _read_cache(cache: Path) -> list[dict[str, Any]]:
    """The cache's entries, oldest first; unreadable or torn lines are skipped."""
    try:
        lines = cache.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            entries.append(entry)
    return entries


def _write_cache(cache: Path, entry: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Append ``entry``; past the line limit, rewrite the newest entry per path atomically instead."""
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        if len(entries) < _CACHE_COMPACT_LINES:
            with cache.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
            return
        newest = {e.get("path"): e for e in [*entries, entry]}
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(e, sort_keys=True) + "\n" for e in newest.values())
            os.replace(tmp, cache)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's whole content (cached by path, inode, size and times from 64 MiB up)."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size < _HASH_LIMIT:
        return _sha256(path)
    stamp = _stamp(path.resolve(), stat)
    cache = cache_path()
    entries = _read_cache(cache)
    for entry in reversed(entries):
        if all(entry.get(k) == v for k, v in stamp.items()):
            return str(entry["sha256"])
    digest = _sha256(path)
    settled = time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) >= _RACY_NS
    if settled and _stamp(path.resolve(), path.stat()) == stamp:  # and not changed while it was read
        _write_cache(cache, {**stamp, "sha256": digest}, entries)
    return digest


def hub_commit(repo_id: str, revision: str | None = None, cache_dir: Path | str | None = None) -> str | None:
    """The commit ``revision`` (default ``main``) of hub model ``repo_id`` resolves to, offline, or None.

    A 40-hex revision is a commit already. Otherwise ``refs/<revision>`` of the model's folder in the
    local Hugging Face cache (``cache_dir``, default ``huggingface_hub``'s ``HF_HUB_CACHE``) names it.
    """
    revision = revision or "main"
    if _COMMIT.match(revision):
        return revision
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = constants.HF_HUB_CACHE
    ref = Path(cache_dir) / ("models--" + repo_id.replace("/", "--")) / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if _COMMIT.match(commit) else None


def is_hub_id(model: str) -> bool:
    """Whether ``model`` has the shape of a hub id (``name``, ``org/name``) and is no local path.

    ``a/b`` whose ``a`` is a local directory (``models/genprm`` before it is trained) is a path.
    """
    if not _HUB_ID.match(model) or Path(model).exists():
        return False
    return "/" not in model or not Path(model.split("/")[0]).is_dir()


def model_fingerprint(model: str, revision: str | None = None) -> Any:
    """What identifies a model's weights (see the module docstring): its files' hashes or its commit."""
    path = Path(model).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        return [(str(f.relative_to(path)), f.stat().st_size, file_sha256(f)) for f in files]
    if path.is_file():
        return [(path.name, path.stat().st_size, file_sha256(path))]
    if is_hub_id(model):
        commit = hub_commit(model, revision)
        if commit is not None:
            return {"hub": model, "commit": commit}
        return {"hub": model, "revision": revision or "main"}
    return model
