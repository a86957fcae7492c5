"""`memrl eval`: run agents with a model on an env (optionally composed N-objective sweeps) and report.

Writes per-episode JSONL, a summary table (markdown + JSON) and, for sweeps, a PNG of peak context
tokens vs number of objectives per agent (MEM1's headline figure).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from memrl.agents.backends import SamplingConfig
from memrl.agents.evaluate import summarize

log = logging.getLogger(__name__)

COLUMNS = ["agent", "objectives", "episodes", "em", "em_stderr", "em_sum", "f1", "format_error_rate",
           "mean_turns", "peak_context_tokens", "max_context_tokens", "tokens_per_s", "failed"]


def run_eval(model: str, agents: list[str], env_id: str, env_kwargs: dict, objectives: list[int], episodes: int,
             out: Path, max_tokens: int = 128, seed_offset: int = 10_000_000, max_model_len: int = 4096,
             kv_cache_gib: float = 1.0, max_turns: int | None = None) -> list[dict]:
    from memrl.models import resolve_model_dir
    from memrl.rl.rollout import AgentSpec, EnvSpec, RolloutWorker

    out.mkdir(parents=True, exist_ok=True)
    worker = RolloutWorker(str(resolve_model_dir(model)), dict(max_model_len=max_model_len, kv_cache_gib=kv_cache_gib))
    rows = []
    seeds = [seed_offset + i for i in range(episodes)]
    with (out / "episodes.jsonl").open("w") as f:
        for agent in agents:
            for n in objectives:
                spec = EnvSpec(env_id, env_kwargs, n, max_turns)
                trajs, stats = worker.rollout(seeds, list(range(episodes)), spec, AgentSpec(agent),
                                              SamplingConfig(max_tokens, temperature=0.0))
                row = {"agent": agent, "objectives": n, **summarize(trajs), "tokens_per_s": stats.tokens_per_s}
                rows.append(row)
                for t in trajs:
                    f.write(json.dumps({"agent": agent, "objectives": n, "reward": t.reward, "failed": t.failed,
                                        **{k: v for k, v in t.info.items() if k != "memory"}}, default=str) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    (out / "summary.md").write_text(table(rows))
    if len(objectives) > 1:
        plot_peak_vs_objectives(rows, out / "peak_context_vs_objectives.png")
    return rows


def table(rows: list[dict]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_peak_vs_objectives(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for agent in dict.fromkeys(r["agent"] for r in rows):
        pts = sorted((r["objectives"], r["peak_context_tokens"]) for r in rows if r["agent"] == agent)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=agent)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("objectives per episode (N)")
    ax.set_ylabel("peak context tokens (mean)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
