"""Atomic checkpoints: written into a temp dir beside the target, then renamed into place.

A checkpoint directory `step_000012/` holds the DeepSpeed engine state (model, optimizer), an HF copy
of the weights (`model/`, for export), `trainer_state.pt` (step, data cursor, RNG states, recipe)
and, written last, `MANIFEST.json` listing every file with its size, every learner rank's included (each rank
reports the files it sees after writing its part; one the driver cannot see is an error, not a checkpoint that only
looks intact). A directory without a manifest, or whose files do not match it (a crash mid-write, a truncated
copy), is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from memrl.io import atomic_dir

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be made whole (a rank's files this process cannot see)."""


def rank_views(saved) -> list[tuple[str, list[str]]]:
    """What `save_state` returned, as (node, files seen under the checkpoint) per learner rank: a `LearnerGroup`
    returns one per rank; an in-process `Learner` returns its files (this process's own view)."""
    if saved and isinstance(saved[0], (tuple, list)):
        return [(str(node), list(files)) for node, files in saved]
    return [("this process", list(saved or []))]


def _write_manifest(root: Path, ranks: list[tuple[str, list[str]]]) -> None:
    """MANIFEST.json: every file under `root` with its size, checked to cover every file each learner rank saw
    there after writing its part. A rank's file this process cannot see means `root` is not one storage shared by
    every node: the checkpoint would look intact here and miss that rank's shard on resume or export."""
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    for rank, (node, seen) in enumerate(ranks):
        missing = sorted(set(seen) - set(files))
        if missing:
            raise CheckpointError(f"learner rank {rank} (node {node}) wrote {', '.join(missing[:3])} under {root}, "
                                  "which the driver cannot see there: output_dir must be storage every node mounts "
                                  "(an absolute path on a shared filesystem)")
    (root / MANIFEST).write_text(json.dumps(files, indent=1))


def verify(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else the reason it is not."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no MANIFEST.json (interrupted while writing)"
    try:
        files = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return "MANIFEST.json is corrupt"
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, manifest says {size} (truncated?)"
    return None


def save(root: Path, step: int, learner, state: dict, tokenizer=None, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep`."""
    final = Path(root) / f"step_{step:06d}"
    if final.exists():
        shutil.rmtree(final)

    def build(tmp: Path) -> None:
        ranks = rank_views(learner.save_state(tmp))  # engine/ (every rank's shard), model/ (HF weights, for export)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        torch.save({**state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
        _write_manifest(tmp, ranks)

    atomic_dir(final, build)
    for old in sorted(Path(root).glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    """Newest intact checkpoint under root; broken ones are reported and skipped."""
    for path in sorted(Path(root).glob("step_*"), reverse=True):
        problem = verify(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def load(path: Path, learner) -> dict:
    """Restore engine state and RNG; returns the trainer state dict (step, cursor, recipe, ...)."""
    problem = verify(path)
    if problem:
        raise ValueError(f"checkpoint {path} is not usable: {problem}")
    learner.load_state(path)
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    set_rng_state(state["rng"])
    return state
