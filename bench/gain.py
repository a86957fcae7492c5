"""Does GRPO improve the SFT warm start, and by more than more SFT would? Held-out EM after SFT, after GRPO and
after the RL control (`train.control`: as many SFT optimizer steps as GRPO took, from the same warm start), per
run and pooled over runs.

Each run directory is a `memrl train` output (summary.json with the `after_sft` and `after_grpo` evals on the
same held-out tasks, metrics.jsonl with the per-step training reward). Per run: the gain in EM, its
standard error (paired over the same tasks when both evals kept per-episode EM, else the combined
sqrt(se_sft^2 + se_grpo^2)), and whether the gain is above twice that. Pooled over runs
(different seeds): the mean gain, the between-run standard deviation (seed to seed) and the mean's standard
error: one run's held-out error (the runs share their held-out tasks and warm start) plus the seed spread.
Also the held-out EM at every evaluated step (after SFT, mid-run checkpoints evaluated into `<run>/step<K>/`,
after GRPO), and a plot of it beside the training reward.

    memrl bench gain RUN_DIR [RUN_DIR ...] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from memrl.bench.walltime import wall_seconds
from memrl.plots import figure, label_axes, series
from memrl.rl.metrics import read_metrics
from memrl.rl.report import gain as paired_gain
from memrl.rl.report import heldout_points, sft_gain


def run_gain(summary: dict) -> dict:
    """EM after SFT and after GRPO with their standard errors, the gain, its s.e. (paired over tasks where both
    evals kept per-episode EM, else combined: rl.report.sft_gain), and the verdict; with the RL control, its EM,
    its gain over SFT (`control_gain`, `control_se`) and GRPO's over it (`rl_gain`, `rl_se`); the answer prior's
    EM when the run measured it."""
    ev = summary["evals"]
    sft, grpo = ev["after_sft"], ev["after_grpo"]
    gain, se, paired = sft_gain(ev)
    out = {"sft_em": sft["em"], "sft_se": sft["em_stderr"], "grpo_em": grpo["em"], "grpo_se": grpo["em_stderr"],
           "tasks": int(grpo.get("episodes", 0)), "gain": gain, "se": se, "paired": paired,
           "significant": gain > 2 * se, "seconds": wall_seconds(summary)}
    if ev.get("control"):
        c = ev["control"]
        out.update(control_em=c["em"], control_em_se=c["em_stderr"], control_steps=c.get("optimizer_steps"))
        out["control_gain"], out["control_se"], _ = paired_gain(sft, c)
        out["rl_gain"], out["rl_se"], _ = paired_gain(c, grpo)
    if ev.get("answer_prior"):
        out["prior_em"] = ev["answer_prior"]["em"]
    return out


def pooled(rows: list[dict], key: str = "gain", se_key: str = "se") -> dict:
    """Mean gain over runs, the between-run s.d. of the gain, and the mean's s.e. The runs of a set are evaluated
    on the same held-out tasks, and SFT does not depend on the seed (one warm start), so their held-out errors do
    not average out over runs: the s.e. keeps one run's (the runs' mean s.e.: fully correlated errors) and adds
    the seed-to-seed spread of the mean, s.d. / sqrt(runs). Conservative: the s.d. holds some held-out noise too."""
    k = len(rows)
    mean = sum(r[key] for r in rows) / k
    sd = math.sqrt(sum((r[key] - mean) ** 2 for r in rows) / (k - 1)) if k > 1 else float("nan")
    run_se = sum(r[se_key] for r in rows) / k
    se = math.sqrt(run_se**2 + sd**2 / k) if k > 1 else run_se
    return {"runs": k, "gain": mean, "se": se, "between_run_sd": sd, "significant": mean > 2 * se,
            "all_significant": all(r["significant"] for r in rows)}


def table(names: list[str], rows: list[dict]) -> list[str]:
    """Markdown rows, one per run (`run_gain` rows, named by `names`): held-out tasks, EM after SFT and after
    GRPO, the gain, its s.e., whether it is above twice that, and wall minutes; a pooled row (`pooled`) when
    there are several runs; then `control_table`'s rows for the runs with an RL control."""
    lines = ["| run | held-out tasks | EM after SFT | EM after GRPO | gain | s.e. of the gain | gain > 2 s.e. | "
             "wall min |", "|---|---|---|---|---|---|---|---|"]
    for name, r in zip(names, rows, strict=True):
        lines.append(f"| {name} | {r['tasks']} | {r['sft_em']:.3f} ± {r['sft_se']:.3f} | "
                     f"{r['grpo_em']:.3f} ± {r['grpo_se']:.3f} | {r['gain']:+.3f} | {r['se']:.3f}{' (paired)' if r['paired'] else ''} | "
                     f"{'yes' if r['significant'] else 'no'} | {r['seconds'] / 60:.1f} |")
    if len(rows) > 1:
        p = pooled(rows)
        lines.append(f"| pooled ({p['runs']} runs) | | {sum(r['sft_em'] for r in rows) / len(rows):.3f} | "
                     f"{sum(r['grpo_em'] for r in rows) / len(rows):.3f} | {p['gain']:+.3f} | {p['se']:.3f} "
                     f"(between-run s.d. {p['between_run_sd']:.3f}) | {'yes' if p['significant'] else 'no'} | |")
    return lines + control_table(names, rows)


def _ci(gain: float, se: float) -> str:
    return f"{gain:+.3f} ± {se:.3f} [{gain - 1.96 * se:+.3f}, {gain + 1.96 * se:+.3f}]"


def control_table(names: list[str], rows: list[dict]) -> list[str]:
    """Is it RL, or just more SFT? Per run with a control: the control's EM, its gain over SFT, GRPO's gain over
    SFT and GRPO's over the control (paired s.e., 95% interval), and the answer prior; pooled as `pooled`."""
    have = [(n, r) for n, r in zip(names, rows, strict=True) if "control_gain" in r]
    if not have:
        return []
    lines = ["", "| run | answer prior EM | EM after control (SFT steps) | control - SFT | GRPO - SFT | GRPO - control |",
             "|---|---|---|---|---|---|"]
    for name, r in have:
        prior = f"{r['prior_em']:.3f}" if "prior_em" in r else "-"
        lines.append(f"| {name} | {prior} | {r['control_em']:.3f} ± {r['control_em_se']:.3f} ({r['control_steps']}) | "
                     f"{_ci(r['control_gain'], r['control_se'])} | {_ci(r['gain'], r['se'])} | "
                     f"{_ci(r['rl_gain'], r['rl_se'])} |")
    if len(have) > 1:
        rs = [r for _, r in have]
        cells = [pooled(rs, k, s) for k, s in (("control_gain", "control_se"), ("gain", "se"), ("rl_gain", "rl_se"))]
        lines.append(f"| pooled ({len(rs)} runs) | | {sum(r['control_em'] for r in rs) / len(rs):.3f} | "
                     + " | ".join(_ci(p["gain"], p["se"]) for p in cells) + " |")
    return lines


def rewards(run: Path) -> list[float]:
    return [r["reward_mean"] for r in read_metrics(run / "metrics.jsonl") if r.get("phase") == "grpo"]


def heldout_curve(run: Path, summary: dict) -> list[tuple[int, float, float]]:
    """(GRPO step, held-out EM, s.e.): the run's own evals (after SFT = step 0, mid-GRPO `train.eval_every` evals,
    after GRPO = the last step) and any mid-run checkpoint evaluated later with `memrl eval` into
    `<run>/step<K>/summary.json` (the same held-out tasks), in step order."""
    points = heldout_points(summary["evals"], int(summary["steps"]))
    for path in run.glob("step*/summary.json"):
        row = json.loads(path.read_text())[0]
        points.append((int(path.parent.name.removeprefix("step")), row["em"], row["em_stderr"]))
    return sorted(points, key=lambda p: p[0])


def plot(names: list[str], curves: list[list[float]], path: Path,
         heldout: list[list[tuple[int, float, float]]] | None = None) -> None:
    """Training reward per GRPO step (left) and held-out EM with 95% intervals (1.96 s.e.) per step (right)."""
    with figure(path, (10 if heldout else 6.4, 3.6), ncols=2 if heldout else 1, dpi=110) as axes:
        for name, ys in zip(names, curves, strict=True):
            series(axes[0], range(len(ys)), ys, ms=3, label=name)
        label_axes(axes[0], "GRPO step", "training reward (mean over rollouts)",
                   "training rollouts (each step: its own 4 tasks)", title_size=9, legend_size=8)
        if heldout:
            for i, (name, pts) in enumerate(zip(names, heldout, strict=True)):
                xs = [p[0] + 0.15 * (i - 1) for p in pts]  # dodge the seeds apart
                series(axes[1], xs, [p[1] for p in pts], [1.96 * p[2] for p in pts], ms=4, label=name)
            label_axes(axes[1], "GRPO step (0 = after SFT)", "held-out EM, 95% interval",
                       "the same held-out tasks at every point, greedy", title_size=9, legend_size=8)


def curve_table(names: list[str], heldout: list[list[tuple[int, float, float]]]) -> list[str]:
    steps = sorted({p[0] for pts in heldout for p in pts})
    lines = ["| run | " + " | ".join(f"EM at step {k}" for k in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, pts in zip(names, heldout, strict=True):
        at = {p[0]: p for p in pts}
        lines.append(f"| {name} | " + " | ".join(f"{at[k][1]:.3f} ± {at[k][2]:.3f}" if k in at else "-"
                                                  for k in steps) + " |")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    """`memrl bench gain`: print the gain table and the held-out EM per step of the given run directories, and
    with --plot draw `plot` to that PNG. Returns the printed lines."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (memrl train outputs)")
    ap.add_argument("--plot", default=None, help="write the training-reward curves to this PNG")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    names = [r.name for r in runs]
    heldout = [heldout_curve(r, s) for r, s in zip(runs, summaries, strict=True)]
    lines = table(names, [run_gain(s) for s in summaries]) + [""] + curve_table(names, heldout)
    print("\n".join(lines))
    if args.plot:
        plot(names, [rewards(r) for r in runs], Path(args.plot), heldout)
        print(args.plot)
    return lines


if __name__ == "__main__":
    main()
