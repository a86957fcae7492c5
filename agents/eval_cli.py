"""`memrl eval`: run agents with a model on an env (optionally composed N-objective sweeps) and report.

Writes per-episode JSONL, a summary table (markdown + JSON) and, for sweeps, a PNG of peak context
tokens vs number of objectives per agent (MEM1's headline figure).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from memrl.agents.backends import SamplingConfig
from memrl.agents.evaluate import eval_point
from memrl.rl.metrics import write_jsonl

log = logging.getLogger(__name__)

COLUMNS = ["agent", "objectives", "episodes", "em", "em_stderr", "em_sum", "f1", "format_error_rate",
           "mean_turns", "peak_context_tokens", "max_context_tokens", "peak_kv_mib", "wall_s_per_episode",
           "tokens_per_s", "context_full_rate", "failed"]


@dataclass
class EvalSetup:
    """Everything an eval needs besides the model and the agents; `from_recipe` copies a training recipe's
    env, agent budgets, turn budget and held-out seeds so a trained model is evaluated as it was trained."""

    env_id: str = "memrl/KBQA-v0"
    env_kwargs: dict = field(default_factory=dict)
    max_turns: int | None = None
    max_tokens: int = 128
    max_observation_tokens: int = 256
    memory_tokens: int = 256
    seed_offset: int = 10_000_000
    max_model_len: int = 4096
    kv_cache_gib: float = 1.0

    @classmethod
    def from_recipe(cls, recipe) -> EvalSetup:
        return cls(recipe.env.id, dict(recipe.env.kwargs), recipe.env.max_turns, recipe.rollout.max_tokens,
                   recipe.agent.max_observation_tokens, recipe.agent.memory_tokens, recipe.env.eval_seed_offset,
                   recipe.rollout.max_model_len, recipe.rollout.kv_cache_gib)


def run_eval(model: str, agents: list[str], objectives: list[int], episodes: int, out: Path,
             setup: EvalSetup | None = None) -> list[dict]:
    """Greedy episodes of each agent at each N on the same held-out seeds; writes episodes.jsonl,
    summary.json/.md and (for sweeps) the peak-context plot under `out`."""
    from memrl.models import kv_bytes_per_token, resolve_model_dir
    from memrl.rl.rollout import AgentSpec, EnvSpec, RolloutWorker

    s = setup or EvalSetup()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(model)
    kvb = kv_bytes_per_token(model_dir)
    worker = RolloutWorker(str(model_dir), dict(max_model_len=s.max_model_len, kv_cache_gib=s.kv_cache_gib))
    try:
        rows, records = [], []
        seeds = [s.seed_offset + i for i in range(episodes)]
        for agent in agents:
            for n in tqdm(objectives, desc=f"eval {agent}"):
                spec = EnvSpec(s.env_id, s.env_kwargs, n, s.max_turns)
                trajs, stats = worker.rollout(seeds, list(range(episodes)), spec,
                                              AgentSpec(agent, s.max_observation_tokens, s.memory_tokens),
                                              SamplingConfig(s.max_tokens, temperature=0.0))
                row, recs = eval_point(trajs, stats, kvb, agent=agent, objectives=n, model=str(model))
                rows.append({"agent": agent, "objectives": n, "model": str(model), **row})
                records.extend(recs)
                write_jsonl(out / "episodes.jsonl", records)
    finally:
        worker.close()  # stop the engine process now, even on SIGTERM or an error
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
