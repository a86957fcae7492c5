"""The run report: report.md with before/after numbers (with standard errors), phase times, and plots."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from memrl.plots import figure, label_axes, series
from memrl.rl.metrics import read_metrics

MID = "step_"  # evals during GRPO (train.eval_every): evals["step_<K>"], after K GRPO steps


def phases(evals: dict, steps: int) -> list[tuple[str, str, int | None]]:
    """(eval key, label, GRPO step) in the order they ran: zero-shot (no step), after SFT (step 0), each mid-GRPO
    eval `step_<K>` (step K), after GRPO (`steps`, the run's last step)."""
    mid = sorted(int(k[len(MID):]) for k in evals if k.startswith(MID) and k[len(MID):].isdigit())
    return [("zero_shot", "zero-shot", None), ("after_sft", "after SFT", 0),
            *((f"{MID}{k}", f"after GRPO step {k}", k) for k in mid), ("after_grpo", "after GRPO", steps)]


def heldout_points(evals: dict, steps: int) -> list[tuple[int, float, float]]:
    """(GRPO step, held-out EM, its s.e.) at every eval on the held-out tasks from the SFT warm start on."""
    return [(step, evals[key]["em"], evals[key]["em_stderr"]) for key, _, step in phases(evals, steps)
            if step is not None and key in evals]


def gain(base: dict, after: dict) -> tuple[float, float, bool]:
    """Held-out EM gain of eval `after` over eval `base` and its standard error: paired over tasks (the s.e. of the
    per-task differences) when both evals kept their per-episode EM on the same tasks, otherwise the combined
    sqrt(se_base^2 + se_after^2), which ignores that the same tasks are easy or hard for both (conservative).
    Returns (gain, s.e., paired)."""
    a, b = base.get("em_per_episode"), after.get("em_per_episode")
    if a and b and len(a) == len(b) > 1:
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        return after["em"] - base["em"], statistics.stdev(diffs) / math.sqrt(len(diffs)), True
    return after["em"] - base["em"], math.hypot(base["em_stderr"], after["em_stderr"]), False


def sft_gain(evals: dict) -> tuple[float, float, bool]:
    """GRPO's held-out EM gain over the SFT warm start (`gain`)."""
    return gain(evals["after_sft"], evals["after_grpo"])


def verdict(margin: float, se: float) -> str:
    """How a gain stands against its standard error, in words."""
    return "above twice" if margin > 2 * se else "above once but NOT twice" if margin > se else "NOT above"


def gain_line(name: str, margin: float, se: float, paired: bool) -> str:
    kind = "paired standard error over the same held-out tasks" if paired else "combined standard error"
    return (f"{name}: EM {margin:+.3f} ± {se:.3f} ({kind}; 95% interval [{margin - 1.96 * se:+.3f}, "
            f"{margin + 1.96 * se:+.3f}]): the gain is {verdict(margin, se)} its standard error.")


def write_report(trainer) -> Path:
    """Write `<trainer.out>/report.md` from a finished run: the held-out results per phase (and the control and
    answer prior, when run), the gains with their standard errors, the agent sweep, seconds per phase, links to
    the plots (drawn here: reward_em_vs_step.png, and with a sweep context_tokens_per_turn.png and
    peak_context_vs_objectives.png) and to viewer.html when present. Returns the report's path."""
    out = Path(trainer.out)
    evals, timings, rc = trainer.evals, trainer.timings, trainer.recipe
    plots = plot_training(out / "metrics.jsonl", out / "reward_em_vs_step.png", heldout_points(evals, trainer.step))
    sweep = evals.get("sweep") or []
    if sweep:
        plot_context_per_turn(sweep, out / "context_tokens_per_turn.png")
        plot_peak_vs_objectives(sweep, out / "peak_context_vs_objectives.png")
    lines = [f"# memrl run: {rc.name}", "",
             f"Model `{rc.model.name}`, agent `{rc.agent.name}`, env `{rc.env.id}` x {rc.env.objectives} objectives, "
             f"{rc.sft.steps} SFT steps, {trainer.step} GRPO steps (G={rc.algorithm.group_size}, "
             f"{rc.algorithm.tasks_per_step} tasks/step). Held-out: {rc.train.eval_tasks} tasks of split eval, "
             f"greedy, the {rc.train.held_out} set (seeds from {rc.held_out_seeds(1)[0]:,}); training tasks come "
             f"from split train (run seed {rc.seed}).", "",
             "## Held-out results", "",
             "| phase | EM | F1 | reward | format errors / turn | mean turns | peak context tokens |",
             "|---|---|---|---|---|---|---|"]
    rows = [*phases(evals, trainer.step), ("control", "control: SFT instead of GRPO, equal optimizer steps", None)]
    for key, label, _ in rows:
        e = evals.get(key)
        if e:
            lines.append(f"| {label} | {e['em']:.3f} ± {e['em_stderr']:.3f} | {e['f1']:.3f} ± {e['f1_stderr']:.3f} | "
                         f"{e['reward']:.3f} | {e['format_error_rate']:.3f} | {e['mean_turns']:.2f} | "
                         f"{e['peak_context_tokens']:.0f} |")
    prior = evals.get("answer_prior")
    if prior:
        lines.append(f"| answer prior: always \"{prior['guess']}\" (most common of {prior['train_tasks']} training "
                     f"answers) | {prior['em']:.3f} ± {prior['em_stderr']:.3f} | | | | | |")
    if evals.get("after_sft") and evals.get("after_grpo"):
        lines += ["", gain_line("GRPO vs SFT", *sft_gain(evals))]
        if evals.get("control"):
            c = evals["control"]
            lines += ["", gain_line(f"Control vs SFT ({c.get('optimizer_steps', '?')} more SFT optimizer steps, as "
                                    "many as GRPO took)", *gain(evals["after_sft"], c)),
                      "", gain_line("GRPO vs control (what RL adds over more SFT)", *gain(c, evals["after_grpo"]))]
    if sweep:
        lines += ["", "## Memory agent vs baseline on the same held-out tasks (trained model)", "",
                  "| agent | objectives | EM | peak context tokens | max context tokens | mean turns |",
                  "|---|---|---|---|---|---|"]
        for r in sweep:
            lines.append(f"| {r['agent']} | {r['objectives']} | {r['em']:.3f} ± {r['em_stderr']:.3f} | "
                         f"{r['peak_context_tokens']:.0f} | {r['max_context_tokens']} | {r['mean_turns']:.2f} |")
    lines += ["", "## Time per phase (seconds)", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in [*plots, *(
        [out / "context_tokens_per_turn.png", out / "peak_context_vs_objectives.png"] if sweep else [])]]
    if (out / "viewer.html").exists():
        lines += ["", "## Memory viewer", "", "[viewer.html](viewer.html): held-out episodes at each eval point, turn by "
                  "turn (the context the model saw, the memory it wrote, its action, the reply, the reward); a static "
                  "page for any browser."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_training(metrics_path: Path, path: Path, heldout: list[tuple[int, float, float]] | None = None) -> list[Path]:
    """Training rollouts' reward and EM per GRPO step (left); with `heldout` (`heldout_points`), the held-out EM
    with its 95% interval at each eval point (right): the same tasks every time, so that curve is comparable
    across steps, which the training one is not (each step draws its own tasks)."""
    if not metrics_path.exists():
        return []
    recs = [r for r in read_metrics(metrics_path) if r.get("phase") == "grpo"]
    if not recs:
        return []
    with figure(path, (10.5 if heldout else 6, 3.6), ncols=2 if heldout else 1) as axes:
        ax = axes[0]
        steps = [r["step"] for r in recs]
        mean = [r["reward_mean"] for r in recs]
        series(ax, steps, mean, label="reward (train rollouts)")
        if all("episodes" in r for r in recs):  # 95% interval of each step's mean reward
            half = [1.96 * r["reward_std"] / max(1, r["episodes"]) ** 0.5 for r in recs]
            ax.fill_between(steps, [m - h for m, h in zip(mean, half, strict=True)],
                            [m + h for m, h in zip(mean, half, strict=True)], alpha=0.2, label="95% interval")
        series(ax, steps, [r["em"] for r in recs], marker="s", label="EM (train rollouts)")
        per_n = sorted({int(k[len("reward_n"):]) for r in recs for k in r if k.startswith("reward_n")})
        for n in per_n:  # a curriculum over N: each N's reward curve (steps where it was trained)
            pts = [(r["step"], r[f"reward_n{n}"]) for r in recs if f"reward_n{n}" in r]
            series(ax, [p[0] for p in pts], [p[1] for p in pts], linestyle="--", marker=".", label=f"reward at N={n}")
        label_axes(ax, "GRPO step", "mean over rollouts", "training rollouts (each step its own tasks)",
                   title_size=9, legend_size=8)
        if heldout:
            series(axes[1], [p[0] for p in heldout], [p[1] for p in heldout], [1.96 * p[2] for p in heldout],
                   capsize=4, color="C2", label="held-out EM, 95% interval")
            label_axes(axes[1], "GRPO step (0 = after SFT)", "held-out EM (greedy)",
                       "the same held-out tasks at every point", title_size=9, legend_size=8)
    return [path]


def plot_context_per_turn(sweep: list[dict], path: Path) -> None:
    """Mean context tokens at each turn of an episode, one curve per agent, at the sweep's largest N: whether a
    memory agent's context stays bounded while full context's grows turn by turn."""
    n_max = max(r["objectives"] for r in sweep)
    with figure(path, (6, 3.5)) as (ax,):
        for r in sweep:
            if r["objectives"] == n_max:
                ys = r.get("context_tokens_per_turn") or []
                series(ax, range(1, len(ys) + 1), ys, label=r["agent"])
        label_axes(ax, "turn", "context tokens (mean)", f"context size per turn, {n_max} objectives")


def plot_peak_vs_objectives(sweep: list[dict], path: Path) -> None:
    from memrl.rl.eval_cli import plot_peak_vs_objectives as plot

    plot(sweep, path)
