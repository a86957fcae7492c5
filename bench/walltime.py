"""A training run's wall time from its summary.json, each second counted once.

Runs written before `timings_exclusive` (session 24) timed a phase nested in another twice: the control's eval is
inside `control`, each mid-GRPO held-out eval (`eval_step_<K>`) inside `grpo`; their time is taken out of the outer
phase here. A sweep resumed after a kill timed only its last process: its points' own times (each sweep row's
`wall_s`) are summed instead.
"""

from __future__ import annotations

NESTED = {"control": ("eval_control",), "grpo": ("eval_step_",)}  # outer phase -> phases timed inside it (prefixes)


def exclusive(timings: dict[str, float]) -> dict[str, float]:
    """Legacy timings with each nested phase's time taken out of its outer phase."""
    out = dict(timings)
    for outer, inner in NESTED.items():
        if outer in out:
            out[outer] -= sum(v for k, v in timings.items() if k.startswith(inner))
    return out


def wall_seconds(summary: dict) -> float:
    """A run's wall time over every phase (evals, the sweep and the control included)."""
    timings = dict(summary.get("timings", {}))
    if not summary.get("timings_exclusive"):
        timings = exclusive(timings)
    rows = summary.get("evals", {}).get("sweep") or []
    if rows and all("wall_s" in r for r in rows):
        timings["eval_sweep"] = sum(r["wall_s"] for r in rows)
    return float(sum(timings.values()))
