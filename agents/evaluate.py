"""Summaries of a batch of episodes: EM/F1 with standard errors, format errors, turns, context tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence

from memrl.agents.audit import lost_hops, objective_outcomes
from memrl.records import Trajectory


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


def bootstrap_ci(xs: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling episodes with replacement); (m, m) for n < 2."""
    import numpy as np

    a = np.asarray(xs, dtype=float)
    if a.size < 2:
        m = float(a.mean()) if a.size else 0.0
        return m, m
    means = np.random.default_rng(seed).choice(a, size=(resamples, a.size), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def episode_em(info: dict) -> float:
    """An episode's EM (its `info`, or its eval record) as the mean over its objectives (`objective_em`), whatever
    `env.aggregate` made of them (`sum`, MEM1's, makes `info["em"]` the count of right answers); `em` when there
    are no per-objective scores (a failed episode, a single-objective env that reports none)."""
    per = info.get("objective_em")
    return sum(per) / len(per) if per else float(info.get("em", 0.0) or 0.0)


def summarize(trajs: Sequence[Trajectory]) -> dict:
    """EM, F1, reward (mean and stderr), format-error rate, turns and token accounting over episodes."""
    out: dict = {"episodes": len(trajs), "failed": sum(t.failed for t in trajs)}
    em = [episode_em(t.info) for t in trajs]
    for key, values in (
        ("em", em),
        ("f1", [float(t.info.get("f1", 0.0) or 0.0) for t in trajs]),
        ("reward", [t.reward for t in trajs]),
    ):
        out[key], out[f"{key}_stderr"] = mean_stderr(values)
        out[f"{key}_ci95"] = bootstrap_ci(values)
    out["em_sum"] = out["em"] * _mean_objectives(trajs)  # MEM1 reports EM summed over the N objectives
    # per episode, in input (task seed) order: two evals on the same tasks pair up (rl.report.sft_gain)
    out["em_per_episode"] = em
    turns = sum(t.info.get("turns", 0) for t in trajs)
    out["format_error_rate"] = sum(t.info.get("format_errors", 0) for t in trajs) / max(1, turns)
    out["length_stop_rate"] = sum(t.info.get("length_stops", 0) for t in trajs) / max(1, turns)
    out["answered_rate"] = sum(bool(t.info.get("terminated")) for t in trajs) / max(1, len(trajs))
    out["mean_turns"] = turns / max(1, len(trajs))
    peaks = [t.info.get("peak_context_tokens", 0) for t in trajs]
    out["peak_context_tokens"] = sum(peaks) / max(1, len(peaks))
    out["max_context_tokens"] = max(peaks, default=0)
    out["context_full_rate"] = sum(bool(t.info.get("context_full")) for t in trajs) / max(1, len(trajs))
    out["generated_tokens"] = sum(t.info.get("generated_tokens", 0) for t in trajs)
    out["prefilled_tokens"] = sum(t.info.get("prefilled_tokens", 0) for t in trajs)
    return out


def _mean_objectives(trajs: Sequence[Trajectory]) -> float:
    counts = [len(t.info.get("objectives") or [None]) for t in trajs]
    return sum(counts) / max(1, len(counts))


def timing_row(stats, summary: dict, kv_bytes_per_token: int) -> dict:
    """Throughput and memory columns of an eval row: tokens/s, seconds per episode, peak KV-cache MiB
    (mean over episodes of peak context tokens x KV bytes per token)."""
    return {"tokens_per_s": stats.tokens_per_s, "wall_s": stats.wall_time,
            "wall_s_per_episode": stats.wall_time / max(1, stats.episodes),
            "episode_latency_s": sum(stats.episode_latency) / max(1, len(stats.episode_latency)),
            "peak_kv_mib": summary["peak_context_tokens"] * kv_bytes_per_token / 2**20}


def episode_records(trajs: Sequence[Trajectory], kv_bytes_per_token: int | None = None, **fields) -> list[dict]:
    """One JSON-able dict per episode (scores, tokens, peak KV bytes) for bootstrap intervals and plots;
    `fields` (agent, objectives, ...) are added to every row."""
    rows = []
    for t in trajs:
        info = {k: v for k, v in t.info.items() if k not in ("memory", "context_tokens", "turn_log")}
        info["questions"] = info.pop("objectives", None)  # the objective texts; `objectives` is N
        row = {"reward": t.reward, "failed": t.failed, **info, **fields}
        if info.get("chains") and info.get("objective_em"):  # where each objective lost its facts (agents.audit)
            turns = t.info.get("turn_log") or []
            row["facts"] = objective_outcomes(turns, info["chains"], info["objective_em"], bool(info.get("context_full")))
            row["lost_hops"] = lost_hops(turns, info["chains"], info["objective_em"])
        if kv_bytes_per_token:
            row["peak_kv_bytes"] = info.get("peak_context_tokens", 0) * kv_bytes_per_token
        rows.append(row)
    return rows


def eval_point(trajs: Sequence[Trajectory], stats, kv_bytes_per_token: int, **fields) -> tuple[dict, list[dict]]:
    """One (agent, N) point of an eval: the summary row with its timing columns, and the per-episode
    records tagged with `fields`. Shared by the trainer's evals and `memrl eval`."""
    row = summarize(trajs)
    row.update(timing_row(stats, row, kv_bytes_per_token))
    return row, episode_records(trajs, kv_bytes_per_token=kv_bytes_per_token, **fields)


def version_mix(trajs: list[Trajectory]) -> dict:
    """How many trajectories an update landed in (contexts of two or more weight versions), and the share of
    contexts sampled by a newer version than their trajectory started with (partial rollouts)."""
    versions = [t.context_versions() for t in trajs]
    contexts = sum(len(v) for v in versions)
    newer = sum(x > t.weight_version for t, vs in zip(trajs, versions, strict=True) for x in vs)
    return {"mixed_version_trajectories": float(sum(len(set(v)) > 1 for v in versions)),
            "newer_version_context_share": newer / contexts if contexts else 0.0}


def mean_per_turn(trajs: list[Trajectory]) -> list[float]:
    """Mean context tokens at each turn index over the episodes that reached it (for the plots)."""
    per: dict[int, list[int]] = {}
    for t in trajs:
        for i, n in enumerate(t.info.get("context_tokens", [])):
            per.setdefault(i, []).append(n)
    return [sum(v) / len(v) for _, v in sorted(per.items())]
