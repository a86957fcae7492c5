"""Atomic writes, the one implementation: a file or a directory is built beside its target and renamed
into place, so a killed process never leaves half of it (checkpoints, metrics, caches, exports)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` in one step."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows as JSON lines atomically."""
    write_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows).encode())


def atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory with `build(tmp_path)` in a temp dir beside `final`, then rename it into place.
    When another process finished `final` first, its result is kept and ours discarded."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_once(target: Path, build: Callable[[Path], None], complete: Callable[[Path], bool] | None = None) -> Path:
    """The cached directory `target`, built once per node when missing: processes that share the cache directory
    (a node's rollout workers, its learner ranks) take a file lock, so the first builds it (atomically,
    `atomic_dir`) and the others wait and read its result instead of building their own. `complete(target)` says
    whether an existing `target` is whole (default: it exists); one that is not (left by an older build) is built
    again."""
    import fcntl

    complete = complete or Path.exists
    target = Path(target)
    if complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not complete(target):
            if target.exists():
                shutil.rmtree(target)
            atomic_dir(target, build)
        lock_path.unlink(missing_ok=True)  # a waiter holding the old file finds the result when it gets the lock
    return target

