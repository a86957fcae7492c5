"""`memrl eval`: run agents with a model on an env (optionally composed N-objective sweeps) and report.

Writes per-episode JSONL, a summary table (markdown + JSON) and, for sweeps, a PNG of peak context
tokens vs number of objectives per agent (MEM1's headline figure).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from memrl.agents.backends import SamplingConfig
from memrl.agents.evaluate import eval_point
from memrl.io import write_jsonl
from memrl.plots import figure, label_axes, log2_x, series
from memrl.recipes.schema import Recipe

log = logging.getLogger(__name__)

COLUMNS = ["agent", "objectives", "episodes", "em", "em_stderr", "em_sum", "f1", "format_error_rate",
           "mean_turns", "peak_context_tokens", "max_context_tokens", "peak_kv_mib", "wall_s_per_episode",
           "tokens_per_s", "context_full_rate", "failed"]


def run_eval(model: str, agents: list[str], objectives: list[int], episodes: int, out: Path,
             recipe: Recipe) -> list[dict]:
    """Greedy (or, with train.eval_temperature, sampled) episodes of each agent at each N on the same held-out
    seeds, with the recipe's env, agent budgets, turn budget, generation budget, engine window and held-out seeds
    (so a trained model is evaluated as it was trained); writes episodes.jsonl, summary.json/.md and (for sweeps)
    the peak-context plot under `out`."""
    from memrl.models import kv_bytes_per_token, resolve_model_dir
    from memrl.rl.rollout import RolloutWorker
    from memrl.rl.streams import eval_sample_seeds

    r = recipe.rollout
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(model)
    kvb = kv_bytes_per_token(model_dir)
    worker = RolloutWorker(str(model_dir), r, seed=recipe.seed)
    try:
        rows, records = [], []
        seeds = recipe.held_out_seeds(episodes)
        for agent in agents:
            for n in tqdm(objectives, desc=f"eval {agent}"):
                trajs, stats = worker.rollout(seeds, list(range(episodes)), recipe.env.at(n, held_out=True),
                                              recipe.agent.named(agent),
                                              SamplingConfig(**recipe.eval_sampling),
                                              sample_seeds=eval_sample_seeds(recipe, seeds))
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
    """Mean peak context tokens vs objectives per episode (N, log 2 axis), one curve per agent (MEM1's headline
    figure: whether a memory agent's peak stays flat as N grows while full context's grows with it)."""
    with figure(path, (5, 3.5)) as (ax,):
        for agent in dict.fromkeys(r["agent"] for r in rows):
            pts = sorted((r["objectives"], r["peak_context_tokens"]) for r in rows if r["agent"] == agent)
            series(ax, [p[0] for p in pts], [p[1] for p in pts], label=agent)
        log2_x(ax)
        label_axes(ax, "objectives per episode (N)", "peak context tokens (mean)")
