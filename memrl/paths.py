"""Where memrl keeps its caches and finds user data; every location is overridable by env var."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of memrl's on-disk caches (converted models, retrieval indexes): $MEMRL_CACHE or ~/.cache/memrl."""
    root = Path(os.environ.get("MEMRL_CACHE", Path.home() / ".cache" / "memrl"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir() -> Path | None:
    """Folder of real QA samples: $MEMRL_DATA_DIR, else ../shared/data next to a checkout; None if absent."""
    env = os.environ.get("MEMRL_DATA_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data", here / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None
