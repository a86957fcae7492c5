"""Summaries of a batch of episodes: EM/F1 with standard errors, format errors, turns, context tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence

from memrl.rl.trajectory import Trajectory


def mean_stderr(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n)); stderr 0 for n < 2."""
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def summarize(trajs: Sequence[Trajectory]) -> dict:
    """EM, F1, reward (mean and stderr), format-error rate, turns and token accounting over episodes."""
    out: dict = {"episodes": len(trajs), "failed": sum(t.failed for t in trajs)}
    for key, values in (
        ("em", [float(t.info.get("em", 0.0) or 0.0) for t in trajs]),
        ("f1", [float(t.info.get("f1", 0.0) or 0.0) for t in trajs]),
        ("reward", [t.reward for t in trajs]),
    ):
        out[key], out[f"{key}_stderr"] = mean_stderr(values)
    out["em_sum"] = out["em"] * _mean_objectives(trajs)  # MEM1 reports EM summed over the N objectives
    turns = sum(t.info.get("turns", 0) for t in trajs)
    out["format_error_rate"] = sum(t.info.get("format_errors", 0) for t in trajs) / max(1, turns)
    out["answered_rate"] = sum(bool(t.info.get("terminated")) for t in trajs) / max(1, len(trajs))
    out["mean_turns"] = turns / max(1, len(trajs))
    peaks = [t.info.get("peak_context_tokens", 0) for t in trajs]
    out["peak_context_tokens"] = sum(peaks) / max(1, len(peaks))
    out["max_context_tokens"] = max(peaks, default=0)
    out["generated_tokens"] = sum(t.info.get("generated_tokens", 0) for t in trajs)
    out["prefilled_tokens"] = sum(t.info.get("prefilled_tokens", 0) for t in trajs)
    return out


def _mean_objectives(trajs: Sequence[Trajectory]) -> float:
    counts = [len(t.info.get("objectives") or [None]) for t in trajs]
    return sum(counts) / max(1, len(counts))
