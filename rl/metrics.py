"""Per-step metrics to JSONL (one flushed line per step), then to the run's trackers (`rl.trackers`: TensorBoard,
W&B, MLflow)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from memrl.io import write_jsonl
from memrl.rl.trackers import Tracker, numbers

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends one record per call to `out_dir/metrics.jsonl` (synced to disk at once), then gives its numbers to
    each of `trackers` (`rl.trackers.make_trackers`). With `resume_step`, the GRPO lines of steps >= `resume_step`
    (written after the checkpoint a run resumes from) are dropped first, so no step repeats."""

    def __init__(self, out_dir: Path, trackers: list[Tracker] | None = None, resume_step: int | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_from(resume_step)
        self.trackers = list(trackers or [])

    def _truncate_from(self, step: int) -> None:
        """Drop lines of steps >= `step` (written after the checkpoint we resume from) so none repeat."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("phase") != "grpo" or rec.get("step", -1) < step:
                kept.append(rec)
        write_jsonl(self.path, kept)

    def write(self, record: dict) -> None:
        """Append `record` as one JSON line (NaN and inf become null), flushed and fsynced. To the trackers go its
        finite int and float values (not bools, not `step`: `rl.trackers.numbers`) under its phase (default
        "train") at `record["step"]` (default 0)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._each("log", str(record.get("phase", "train")), int(record.get("step", 0)), numbers(record))

    def _each(self, method: str, *args) -> None:
        """Call `method` on every tracker; one that raises is reported and dropped (metrics.jsonl has it all)."""
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must not end the run
                log.warning("tracker %s failed in %s (%r): dropped for the rest of the run", type(t).__name__,
                            method, exc)
                self.trackers.remove(t)

    def close(self, artifacts: list[Path] = ()) -> None:
        """Give the trackers the run's files (`artifacts` that exist) and close them; closing twice is harmless."""
        files = [Path(p) for p in artifacts if Path(p).is_file()]
        if files:
            self._each("artifacts", files)
        self._each("close")
        self.trackers = []


def read_metrics(path: Path) -> list[dict]:
    """JSON lines of a file, skipping a line cut by a kill."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
