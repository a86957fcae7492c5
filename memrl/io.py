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
