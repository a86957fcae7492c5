"""Per-step metrics to JSONL (one flushed line per step) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from memrl.io import write_jsonl


class MetricsWriter:
    """Appends one record per call to `out_dir/metrics.jsonl` (synced to disk at once) and, optionally, its
    numbers to TensorBoard under `out_dir/tensorboard`. With `resume_step`, the GRPO lines of steps >=
    `resume_step` (written after the checkpoint a run resumes from) are dropped first, so no step repeats."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_from(resume_step)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

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
        """Append `record` as one JSON line (NaN and inf become null), flushed and fsynced. To TensorBoard
        go its finite int and float values (not bools, not `step`), as `{phase}/{key}` at `record["step"]`
        (phase default "train", step default 0)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            step = int(record.get("step", 0))
            phase = record.get("phase", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "step":
                    self.tb.add_scalar(f"{phase}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """JSON lines of a file, skipping a line cut by a kill."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
