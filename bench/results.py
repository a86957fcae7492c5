"""Build docs/RESULTS.md from the runs of `recipes/experiments/run_all.sh`: tables, plots, verdicts.

Reads, under --runs (default runs/):
  <run>/summary.json, <run>/sweep_episodes.jsonl   three training runs per agent (mem1-n2-s0..s2,
                                                   memsearcher-n2-s0..s2, full-context-n2-s0..s2), each with its
                                                   final N-sweep; a run counts once its summary.json exists
  untrained-sweep/episodes.jsonl                   the untrained model, every agent format
  untrained-<ds>/summary.json, <run>/<ds>/summary.json   real multi-hop QA, zero-shot vs trained
Error bars are 95% bootstrap intervals over held-out episodes (same tasks for every agent and seed); pooled over
seeds, a two-level bootstrap (seeds, then episodes within each), so they hold the seed-to-seed spread too.

Those files are first copied into --archive (default docs/results_data/, committed), and the page is built
from the archive: runs/ is scratch space that a machine reset loses, and a step re-run later replaces only
its own files, so the page can always be regenerated from the repository.

    memrl bench results [--runs runs] [--archive docs/results_data] [--out docs] [--archive-only]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from memrl.agents.audit import OUTCOMES, hop_counts, outcome_counts
from memrl.agents.evaluate import bootstrap_ci, episode_em
from memrl.bench import gain as gain_mod
from memrl.bench.walltime import wall_seconds
from memrl.io import write_atomic
from memrl.plots import figure, label_axes, log2_x, series
from memrl.rl.metrics import read_metrics
from memrl.rl.report import phases

# The papers' comparison at equal budget: each agent trained with experiments/grpo-gain's settings (recipes
# experiments/<recipe>, which differ only in agent.name) on three seeds, runs named <recipe>-s<seed>
SEEDS = (0, 1, 2)
RECIPES = {"mem1": "mem1-n2", "memsearcher": "memsearcher-n2", "full_context": "full-context-n2"}
RUNS = {agent: tuple(f"{recipe}-s{seed}" for seed in SEEDS) for agent, recipe in RECIPES.items()}
REAL_RUNS = {agent: runs[0] for agent, runs in RUNS.items()}  # the trained agents on real data: seed 0's model
# experiments/grpo-gain (bench/gain.py). First, on unseen held-out tasks (a world per episode, names of the eval split
# only; session 13): seeds 0-2, each its own task stream, with the RL control. Then the superseded sets, measured
# when held-out questions overlapped the training ones (one fixed world): on 100 held-out tasks, at 14 GRPO steps on
# seeds 0-2 and at 7 on fresh seeds 3-5; then 7 steps and 200 held-out tasks on seeds 6-8
UNSEEN = "unseen-gain"
GAIN_SETS = {"Unseen held-out tasks (a world per episode, eval-split names), 200 tasks, seeds 0-2 (each its own "
             "task stream), with the RL control": tuple(f"{UNSEEN}-s{seed}" for seed in SEEDS),
             "SUPERSEDED (held-out questions overlapped training): 7 GRPO steps, 200 held-out tasks, seeds 6-8":
             ("gain200-s6", "gain200-s7", "gain200-s8"),
             "SUPERSEDED (overlapping tasks): 14 GRPO steps, 100 held-out tasks, seeds 0-2": ("gain-s0", "gain-s1",
                                                                                            "gain-s2"),
             "SUPERSEDED (overlapping tasks): 7 GRPO steps, 100 held-out tasks, seeds 3-5": ("gain7-s3", "gain7-s4",
                                                                                           "gain7-s5")}
GAIN_RUNS = tuple(run for runs in GAIN_SETS.values() for run in runs)
# The comparison where memory is needed (experiments/multihop, issue 32): 2-hop objectives, topk 1, a curriculum over
# N; the agents differ only in agent.name (`--set agent.name=A`), runs named multihop-<agent>-s<seed>
MULTIHOP_AGENTS = ("memsearcher", "mem1", "full_context")
MULTIHOP_RUNS = {agent: tuple(f"multihop-{agent}-s{seed}" for seed in SEEDS) for agent in MULTIHOP_AGENTS}
# title -> (suffix of its plots' file names, agent -> runs); the shipped recipe first, then the seed-0 runs made at
# learner.lr 1e-4 before the lr was chosen on the tuning set (session 19)
MULTIHOP_SETS = {
    "experiments/multihop as shipped (learner.lr 1e-5, chosen on the tuning set), seeds 0-2": ("", MULTIHOP_RUNS),
    "SUPERSEDED: learner.lr 1e-4 (before the lr was tuned; every agent's training reward collapsed after the first "
    "GRPO update), seed 0 only": ("_lr1e-4", {a: (f"multihop-lr1e-4-{a}-s0",) for a in MULTIHOP_AGENTS})}
# Settings tried on the TUNING set at N = 8 (greedy unless said): template key -> (eval directories, the setting's
# column title, run_all.sh step). Step 7, the one change tried against the never-closing memories (session 20):
# memsearcher-s0's trained model with repetition penalties; step 8: mem1-s0's greedy vs sampled; step 9: memsearcher
# warm-started (SFT only, seed 1) on oracle episodes of N = 1, 2, 4 (the recipe's) vs N = 1, 2, 4, 8
TUNING = {
    "reppen": (tuple(f"reppen-tune/{p}" for p in ("1.0", "1.1", "1.3")), "repetition penalty", 7),
    "temperature": (tuple(f"temp-tune/{t}" for t in ("0.0", "0.7")), "eval temperature", 8),
    "sft_objectives": (tuple(f"sft-tune/{ns}" for ns in ("1-2-4", "1-2-4-8")), "SFT on N =", 9),
}
DATASETS = ("musique", "hotpotqa")
REAL_TRAIN = "searchqa"  # experiments/searchqa: trained on the real train split, evaluated on the eval split
RESAMPLES = 2000


def read_jsonl(path: Path) -> list[dict]:
    return read_metrics(path) if path.exists() else []


def n_of(row: dict) -> int:
    """Objectives of an episode record (older records stored the question list under `objectives`)."""
    n = row["objectives"]
    return n if isinstance(n, int) else len(n)


def points(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        out[(r["agent"], n_of(r))].append(r)
    return out


def point_row(eps: list[dict], kv_bytes: int, intervals: bool = True) -> dict:
    """Mean and 95% bootstrap interval of EM/F1; mean peak tokens, peak KV MiB, seconds per episode.
    `intervals=False` leaves EM's and peak tokens' intervals to the caller (None here)."""
    em = [episode_em(e) for e in eps]
    n = n_of(eps[0])
    peak = [e.get("peak_context_tokens", 0) for e in eps]
    secs = [e["episode_seconds"] for e in eps if "episode_seconds" in e]
    turns = sum(e.get("turns", 0) for e in eps)
    cut = [e for e in eps if "length_stops" in e]  # recorded since session 20

    def ci(values):
        return bootstrap_ci(values, resamples=RESAMPLES) if intervals else None

    return {
        "episodes": len(eps), "em": float(np.mean(em)), "em_ci": ci(em),
        "em_sum": float(np.mean(em)) * n, "f1": float(np.mean([float(e.get("f1") or 0.0) for e in eps])),
        "peak_tokens": float(np.mean(peak)), "peak_tokens_ci": ci(peak),
        "max_tokens": int(max(peak)), "peak_kv_mib": float(np.mean(peak)) * kv_bytes / 2**20,
        "episode_s": float(np.mean(secs)) if secs else None,
        "context_full": float(np.mean([bool(e.get("context_full")) for e in eps])),
        "answered": float(np.mean([bool(e.get("terminated")) for e in eps])),
        "format_errors": sum(e.get("format_errors", 0) for e in eps) / max(1, turns),
        "length_stops": (sum(e["length_stops"] for e in cut) / max(1, sum(e.get("turns", 0) for e in cut))
                         if cut else None),
        "cut_episodes": cut_episodes(cut) if cut else None,
    }


def cut_episodes(eps: list[dict]) -> tuple[int, int]:
    """Episodes with at least one cut turn, and how many of them still answered: a memory that ran into max_tokens
    tends to be written again at the next turn (greedy or sampled), so a cut rarely ends alone."""
    hit = [e for e in eps if e.get("length_stops", 0) > 0]
    return len(hit), sum(bool(e.get("terminated")) for e in hit)


def nested_ci(groups: list[list[float]], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of group means by a two-level bootstrap: draw the groups (seeds) with
    replacement, then the values (episodes) within each drawn group. One group: the plain episode bootstrap."""
    if len(groups) == 1:
        return bootstrap_ci(groups[0], resamples=resamples, seed=seed)
    rng = np.random.default_rng(seed)
    k = len(groups)
    # means[i, j]: `resamples` resampled means of group i for draw slot j (independent for every slot)
    means = np.stack([np.stack([rng.choice(np.asarray(g, dtype=float), size=(resamples, len(g))).mean(axis=1)
                                for _ in range(k)]) for g in groups])
    pick = rng.integers(k, size=(resamples, k))
    boots = means[pick, np.arange(k)[None, :], np.arange(resamples)[:, None]].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(lo), float(hi)


def pooled_row(by_run: dict[str, list[dict]], kv_bytes: int) -> dict:
    """One (agent, N) point over several runs: `point_row` of all episodes, with EM and peak tokens as means of
    the runs' means and their intervals from `nested_ci`; `per_run` keeps each run's EM and episode interval."""
    groups = list(by_run.values())
    row = point_row([e for eps in groups for e in eps], kv_bytes, intervals=False)
    em = [[episode_em(e) for e in eps] for eps in groups]
    peak = [[e.get("peak_context_tokens", 0) for e in eps] for eps in groups]
    row.update(runs=len(groups), em=float(np.mean([np.mean(g) for g in em])), em_ci=nested_ci(em),
               peak_tokens=float(np.mean([np.mean(g) for g in peak])), peak_tokens_ci=nested_ci(peak))
    row["peak_kv_mib"] = row["peak_tokens"] * kv_bytes / 2**20
    row["em_sum"] = row["em"] * n_of(groups[0][0])
    row["per_run"] = {name: (float(np.mean(g)), bootstrap_ci(g, resamples=RESAMPLES)) for name, g in zip(by_run, em, strict=True)}
    return row


FIT_MIN_N = 2  # H2's fit over N starts at the trained N: at N = 1 these recipes give one objective 2 turns, and
# every agent fails there for want of turns (EM ~0.0-0.06), which would tilt a slope fitted through it


def slope_ci(runs: list[dict[int, list[float]]], seed: int = 0, min_n: int = FIT_MIN_N) -> tuple[float, float, float]:
    """Least-squares slope of mean EM vs N over N >= `min_n` (the runs' means averaged per N), with a 95% bootstrap
    interval: runs drawn with replacement, then episodes resampled per N within each drawn run."""
    ns = sorted(n for n in runs[0] if n >= min_n)
    x = np.array(ns, dtype=float)

    def slope(means):
        return float(np.polyfit(x, means, 1)[0])

    rng = np.random.default_rng(seed)
    est = slope([np.mean([np.mean(r[n]) for r in runs]) for n in ns])
    boots = []
    for _ in range(RESAMPLES):
        drawn = [runs[i] for i in rng.integers(len(runs), size=len(runs))]
        boots.append(slope([np.mean([rng.choice(r[n], size=len(r[n])).mean() for r in drawn]) for n in ns]))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return est, float(lo), float(hi)


DODGE = 1.04  # x factor between neighbouring curves on the log-N axis


def plot(rows: dict, key: str, ylabel: str, path: Path, ci_key: str | None = None,
         trained: str = "trained at N = 2") -> None:
    """`key` of each curve in `rows` (label -> N -> point row, as `collect`'s curves) vs N on a log 2 axis, with
    the `ci_key` (low, high) intervals as error bars when given; untrained curves dashed, curves nudged apart in x
    (`DODGE`) so equal ones stay visible."""
    with figure(path, (6, 4)) as (ax,):
        for k, (label, pts) in enumerate(rows.items()):
            ns = sorted(pts)
            xs = [n * DODGE ** (k - (len(rows) - 1) / 2) for n in ns]  # side by side: equal curves stay visible
            ys = [pts[n][key] for n in ns]
            err = None
            if ci_key:
                err = [[ys[i] - pts[n][ci_key][0] for i, n in enumerate(ns)],
                       [pts[n][ci_key][1] - ys[i] for i, n in enumerate(ns)]]
            series(ax, xs, ys, err, linestyle="--" if label.startswith("untrained") else "-", label=label)
        log2_x(ax, sorted({n for pts in rows.values() for n in pts}))
        # an empty page (no runs yet) gets empty axes and no legend
        label_axes(ax, f"objectives per episode (N); {trained}", ylabel, legend_size=8)


def inputs() -> list[str]:
    """Every file under --runs that the page reads, relative to it."""
    rel = [f"{run}/{name}" for runs in RUNS.values() for run in runs for name in ("summary.json", "sweep_episodes.jsonl")]
    rel.append("untrained-sweep/episodes.jsonl")
    rel += [f"{REAL_TRAIN}/summary.json", f"{REAL_TRAIN}/metrics.jsonl"]
    rel += [f"{run}/{name}" for run in GAIN_RUNS for name in ("summary.json", "metrics.jsonl", "step7/summary.json",
                                                               "recipe.yaml")]
    for ds in DATASETS:
        rel += [f"untrained-{ds}/summary.json", *[f"{run}/{ds}/summary.json" for run in REAL_RUNS.values()]]
    rel += [f"{run}/{name}" for _, run_map in MULTIHOP_SETS.values() for runs in run_map.values() for run in runs
            for name in ("summary.json", "sweep_episodes.jsonl", "metrics.jsonl", "recipe.yaml", "viewer.html")]
    rel += [f"{run}/{name}" for evals, _, _ in TUNING.values() for run in evals
            for name in ("episodes.jsonl", "summary.json")]
    return rel


def archive_inputs(runs: Path, archive: Path) -> list[str]:
    """Copy the inputs that exist under `runs` into `archive` (each replaced atomically); returns them."""
    copied = []
    for rel in inputs():
        src = runs / rel
        if src.is_file():
            dst = archive / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(dst, src.read_bytes())
            copied.append(rel)
    return copied


def fmt_ci(v: float, ci: tuple[float, float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def collect(runs: Path, kv_bytes: int) -> dict:
    """Everything the page needs from the run folders under `runs`: `curves` (label -> N -> `pooled_row`, the
    finished training runs' sweeps and the untrained sweep), `raw` (label -> per run, N -> episode EMs, for the
    slopes), `summaries` (agent -> run -> summary.json), `real` (dataset -> label -> real-QA row), the GRPO-gain
    runs' summaries, training rewards and held-out curves (`gain`, `gain_curves`, `gain_heldout`) and
    `real_train` (the searchqa run's summary, or None). Missing runs are left out."""
    by_point, summaries = trained_points(runs, RUNS)
    for (a, n), eps in points(read_jsonl(runs / "untrained-sweep" / "episodes.jsonl")).items():
        by_point.setdefault(f"untrained {a}", {}).setdefault(n, {})["untrained"] = eps
    curves = {label: {n: pooled_row(by_run, kv_bytes) for n, by_run in pts.items()} for label, pts in by_point.items()}
    raw = episode_ems(by_point)
    real = {}
    for ds in DATASETS:
        for label, path in [("untrained", runs / f"untrained-{ds}" / "summary.json"),
                            *[(f"{a} (trained)", runs / r / ds / "summary.json") for a, r in REAL_RUNS.items()]]:
            if path.exists():
                for row in json.loads(path.read_text()):
                    key = f"untrained {row['agent']}" if label == "untrained" else label
                    real.setdefault(ds, {})[key] = row
    gain = {run: json.loads((runs / run / "summary.json").read_text()) for run in GAIN_RUNS
            if (runs / run / "summary.json").exists()}
    trained = runs / REAL_TRAIN / "summary.json"
    real_train = json.loads(trained.read_text()) if trained.exists() else None
    multihop = {title: multihop_set(runs, run_map, kv_bytes) for title, (_, run_map) in MULTIHOP_SETS.items()}
    return {"curves": curves, "raw": raw, "summaries": summaries, "real": real, "gain": gain, "real_train": real_train,
            "gain_curves": {run: gain_mod.rewards(runs / run) for run in gain},
            "gain_heldout": {run: gain_mod.heldout_curve(runs / run, s) for run, s in gain.items()},
            "multihop": multihop, **{key: tuning_table(runs, *spec) for key, spec in TUNING.items()}}


def episode_ems(by_point: dict[str, dict[int, dict[str, list[dict]]]]) -> dict[str, list[dict[int, list[float]]]]:
    """label -> per run, N -> its episodes' EMs (the input of `slope_ci`), from label -> N -> run -> episodes."""
    return {label: [{n: [episode_em(e) for e in by_run[run]] for n, by_run in pts.items()}
                    for run in next(iter(pts.values()))] for label, pts in by_point.items()}


def multihop_set(runs: Path, run_map: dict[str, tuple[str, ...]], kv_bytes: int) -> dict:
    """One set of experiments/multihop runs: `curves` (label -> N -> `pooled_row`), every finished run's `budgets`,
    `facts` (label -> N -> `agents.audit` outcome counts, seeds pooled), `hops` and `raw` (`episode_ems`, for
    H1-H3 on this set)."""
    points_, summaries = trained_points(runs, run_map)
    return {"curves": {label: {n: pooled_row(by_run, kv_bytes) for n, by_run in sorted(pts.items())}
                       for label, pts in points_.items()},
            "budgets": {run: budget(runs / run, summary) for runs_ in summaries.values()
                        for run, summary in runs_.items()},
            "facts": {label: {n: outcome_counts([e for eps in by_run.values() for e in eps])
                              for n, by_run in sorted(pts.items())} for label, pts in points_.items()},
            "hops": {label: {n: hop_counts([e for eps in by_run.values() for e in eps])
                             for n, by_run in sorted(pts.items())} for label, pts in points_.items()},
            "raw": episode_ems(points_)}


def trained_points(runs: Path, run_map: dict[str, tuple[str, ...]]) -> tuple[dict, dict]:
    """The finished training runs of `run_map` (agent -> run names) under `runs`: (label -> N -> run -> sweep
    episodes, label "<agent> (trained)"; agent -> run -> summary.json). A run counts once its summary.json exists."""
    by_point: dict[str, dict[int, dict[str, list[dict]]]] = {}
    summaries: dict[str, dict[str, dict]] = {}
    for agent, names in run_map.items():
        for run in names:
            if not (runs / run / "summary.json").exists():  # unfinished: its sweep may be partial
                continue
            summaries.setdefault(agent, {})[run] = json.loads((runs / run / "summary.json").read_text())
            for (a, n), eps in points(read_jsonl(runs / run / "sweep_episodes.jsonl")).items():
                by_point.setdefault(f"{a} (trained)", {}).setdefault(n, {})[run] = eps
    return by_point, summaries


def budget(run: Path, summary: dict) -> dict:
    """What one training run spent: SFT and GRPO optimizer steps, tokens trained on, tokens generated in GRPO
    rollouts, the largest N its curriculum reached, and wall time (all phases, evals included)."""
    rows = read_jsonl(run / "metrics.jsonl")
    sft = [r for r in rows if r.get("phase") == "sft"]
    grpo = [r for r in rows if r.get("phase") == "grpo"]
    return {"sft_steps": len(sft), "grpo_steps": len(grpo),
            "train_tokens": int(sum(r.get("train_tokens", 0) for r in sft + grpo)),
            "generated": int(sum(r.get("generated_tokens", 0) for r in grpo)),
            "max_n": max((int(r.get("curriculum_max_n", 0)) for r in grpo), default=0),
            "wall_s": wall_seconds(summary)}


def separate(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Two (point, low, high) estimates whose intervals do not overlap, on either side."""
    return a[1] > b[2] or a[2] < b[1]


def h2_word(slopes: dict[str, tuple[float, float, float]], memory: list[str]) -> str:
    """H2's verdict from EM slopes (point, low, high) per agent: CONFIRMED when every memory agent's interval
    lies above full context's, REFUTED when every memory agent's lies below it, NOT SHOWN when every interval
    overlaps (overlap decides nothing, whichever way the point estimates lean); otherwise the word per agent."""
    f = slopes["full_context"]

    def word(a: str) -> str:
        if not separate(slopes[a], f):
            return "NOT SHOWN"
        return "CONFIRMED" if slopes[a][0] > f[0] else "REFUTED"

    words = {a: word(a) for a in memory}
    if len(set(words.values())) == 1:
        only = next(iter(words.values()))
        return only + (" (the intervals overlap)" if only == "NOT SHOWN" else "")
    return "MIXED: " + ", ".join(f"{w} for {a}" for a, w in words.items())


FLOOR_EM = 0.01  # EM at or below this at every N >= FIT_MIN_N: a slope at the floor


def floor_caveat(fc: dict[int, dict]) -> str:
    """A warning when full context's EM is at most FLOOR_EM at every N >= FIT_MIN_N: its slope then can hardly
    fall, so a flatter slope there means nothing was lost because nothing was held, not a strength."""
    if all(row["em"] <= FLOOR_EM for n, row in fc.items() if n >= FIT_MIN_N):
        return (f" Full context's EM is at most {FLOOR_EM} at every N >= {FIT_MIN_N}, so its slope can hardly "
                f"fall: the comparison is at the floor and says nothing about holding accuracy.")
    return ""


def h3_word(trained: dict[str, dict[int, dict]], hi_n: int) -> str:
    """CONFIRMED for the agents that get as many objectives right per episode at N = hi_n as at N = 2 (EM sum,
    MEM1's measure) with EM's interval above 0; otherwise REFUTED, saying who at least stays above 0."""
    above = [a for a, c in trained.items() if c[hi_n]["em_ci"][0] > 0]
    held = [a for a in above if trained[a][hi_n]["em_sum"] >= trained[a][2]["em_sum"]]
    if held:
        return "CONFIRMED for " + ", ".join(held)
    if above:
        return f"REFUTED (above 0 at N = {hi_n}, but fewer objectives right than at N = 2: {', '.join(above)})"
    return "REFUTED"


def hypotheses(curves: dict[str, dict[int, dict]], raw: dict[str, list[dict[int, list[float]]]]) -> list[str]:
    """H1-H3 in words with their numbers, from curves (label -> N -> pooled row) and raw episode EMs (label -> per
    run, N -> EMs); a hypothesis whose runs are missing is marked PENDING, H3 also when no curve has N = 2."""
    trained = {a: curves[f"{a} (trained)"] for a in RUNS if f"{a} (trained)" in curves}
    memory = {a: c for a, c in trained.items() if a != "full_context"}
    out = []
    if not memory:
        return out
    first = next(iter(memory.values()))
    lo_n, hi_n = min(first), max(first)
    fc_label = "full_context (trained)" if "full_context" in trained else "untrained full_context"
    fc = curves.get(fc_label) if fc_label in curves and {lo_n, hi_n} <= set(curves[fc_label]) else None
    growth = {a: c[hi_n]["peak_tokens"] / c[lo_n]["peak_tokens"] for a, c in memory.items()}
    desc = [f"{a} {g:.2f}x ({memory[a][lo_n]['peak_tokens']:.0f} -> {memory[a][hi_n]['peak_tokens']:.0f})"
            for a, g in growth.items()]
    if fc is None:
        out.append(f"- **H1, peak context flat in N for memory agents, growing for full context: PENDING** (no "
                   f"full-context curve yet). Peak tokens N={hi_n} / N={lo_n}: " + ", ".join(desc) + ".")
    else:
        g_fc = fc[hi_n]["peak_tokens"] / fc[lo_n]["peak_tokens"]
        held = all(g < 2.5 for g in growth.values()) and g_fc > 2 * max(growth.values())
        desc.append(f"{fc_label} {g_fc:.2f}x ({fc[lo_n]['peak_tokens']:.0f} -> {fc[hi_n]['peak_tokens']:.0f})")
        out.append(f"- **H1, peak context flat in N for memory agents, growing for full context: "
                   f"{'CONFIRMED' if held else 'REFUTED'}.** Peak tokens N={hi_n} / N={lo_n}: " + ", ".join(desc) + ".")
    if "full_context" in trained and memory:
        slopes = {a: slope_ci(raw[f"{a} (trained)"]) for a in trained}  # pooled over each agent's runs
        f = slopes["full_context"]
        lines = [f"{a} {slopes[a][0]:+.4f} [{slopes[a][1]:+.4f}, {slopes[a][2]:+.4f}] vs full context {f[0]:+.4f} "
                 f"[{f[1]:+.4f}, {f[2]:+.4f}]: {'less loss' if slopes[a][0] > f[0] else 'not less loss'}"
                 f"{' (intervals separate)' if separate(slopes[a], f) else ' (intervals overlap)'}" for a in memory]
        verdict = h2_word(slopes, list(memory))
        out.append(f"- **H2, trained memory agents lose less EM per added objective than full context: {verdict}.** "
                   f"EM slope per added objective (least squares over N >= {FIT_MIN_N}, pooled over "
                   f"{runs_word(trained)}, 95% two-level bootstrap): " + "; ".join(lines) + "."
                   + floor_caveat(trained["full_context"]))
    else:
        out.append("- **H2, trained memory agents lose less EM per added objective than full context: PENDING** "
                   "(the trained full-context run has not finished).")
    if not all(2 in c for c in trained.values()):
        out.append(f"- **H3, training at N = 2 generalizes to N = {hi_n}: PENDING** (no sweep point at N = 2).")
        return out
    h3 = []
    for a, c in trained.items():
        un = curves.get(f"untrained {a}", {}).get(hi_n)
        base = f", untrained {un['em']:.3f}" if un else ""
        h3.append(f"{a}: EM at N=2 {c[2]['em']:.3f} (EM sum {c[2]['em_sum']:.2f}), at N={hi_n} "
                  f"{fmt_ci(c[hi_n]['em'], c[hi_n]['em_ci'])} (EM sum {c[hi_n]['em_sum']:.2f}){base}")
    out.append(f"- **H3, training at N = 2 generalizes to N = {hi_n}: {h3_word(trained, hi_n)}** (MEM1's claim: as "
               f"many objectives right per episode at N={hi_n} as at N=2, i.e. EM sum at N={hi_n} >= at N=2, with "
               f"EM's 95% interval above 0). " + "; ".join(h3) + ".")
    return out


def runs_word(trained: dict[str, dict[int, dict]]) -> str:
    """How many runs the pooled curves stand on: '3 seeds each', or the counts when agents differ."""
    counts = {a: next(iter(c.values()))["runs"] for a, c in trained.items()}
    if len(set(counts.values())) == 1:
        k = next(iter(counts.values()))
        return f"{k} seed{'s' if k > 1 else ''} each"
    return ", ".join(f"{a} {k} seed{'s' if k > 1 else ''}" for a, k in counts.items())


def per_run_cell(row: dict) -> str:
    """Each run's EM with its episode interval, by seed: 's0 0.125 [0.031, 0.219]; s1 ...'."""
    if row["runs"] == 1 and "untrained" in row["per_run"]:
        return "-"
    return "; ".join(f"{name.rsplit('-', 1)[-1]} {fmt_ci(em, ci)}" for name, (em, ci) in row["per_run"].items())


def training_tables(summaries: dict[str, dict[str, dict]]) -> list[str]:
    """Per agent: each seed's held-out EM after SFT and after GRPO (N = 2), its gain, and the gain pooled."""
    lines: list[str] = []
    for agent, runs in summaries.items():
        names = list(runs)
        lines += [f"**{agent}**", "", *gain_mod.table(names, [gain_mod.run_gain(runs[n]) for n in names]), ""]
    return lines or ["(runs missing: `recipes/experiments/run_all.sh` step 1)"]


def real_train_table(summary: dict | None) -> list[str]:
    """experiments/searchqa: held-out EM on the real eval split before and after training, with intervals."""
    if summary is None:
        return [f"(run missing: `memrl train experiments/{REAL_TRAIN}`, `recipes/experiments/run_all.sh` step 4)"]
    ev = summary["evals"]
    lines = ["| phase | questions | EM ± s.e. [95% CI] | F1 ± s.e. | answered | format errors / turn | mean turns |",
             "|---|---|---|---|---|---|---|"]
    for key, label, _ in phases(ev, summary["steps"]):
        if key in ev:
            e = ev[key]
            lines.append(f"| {label} | {e['episodes']} | {e['em']:.3f} ± {e['em_stderr']:.3f} "
                         f"[{e['em_ci95'][0]:.3f}, {e['em_ci95'][1]:.3f}] | {e['f1']:.3f} ± {e['f1_stderr']:.3f} | "
                         f"{e.get('answered_rate', 0):.2f} | {e['format_error_rate']:.2f} | {e['mean_turns']:.2f} |")
    return lines


def multihop_sections(sets: dict[str, dict], out: Path) -> list[str]:
    """Each set of `MULTIHOP_SETS` that has finished runs, under its title (the shipped recipe's says which step
    makes it when it has none)."""
    lines = []
    for title, (suffix, _) in MULTIHOP_SETS.items():
        mh = sets.get(title, {"curves": {}})
        if mh["curves"] or not suffix:
            lines += [f"**{title}**", "", *multihop_section(mh, out, suffix), ""]
    return lines


def multihop_section(mh: dict, out: Path, suffix: str = "") -> list[str]:
    """experiments/multihop (issue 32): EM and peak-context plots (results_multihop<suffix>_{em,peak}.png), the
    per-(agent, N) table, the N = max peak-context ratios and EM comparisons at N >= 8 (NOT SHOWN where intervals
    overlap), and every run's budget."""
    curves = mh["curves"]
    if not curves:
        return ["(runs missing: `recipes/experiments/run_all.sh` step 5)"]
    em_png, peak_png = f"results_multihop{suffix}_em.png", f"results_multihop{suffix}_peak.png"
    trained = "trained at N = 1-4 (curriculum)"
    plot(curves, "em", "EM (mean over objectives), 95% bootstrap", out / em_png, "em_ci", trained)
    plot(curves, "peak_tokens", "peak context tokens per episode", out / peak_png, "peak_tokens_ci", trained)
    lines = [f"![EM vs N, multihop]({em_png})", f"![peak tokens vs N, multihop]({peak_png})",
             "", "Format errors and cut turns are per turn; a cut turn's generation ran into `max_tokens` before any "
             "stop string (recorded since session 20: `-` where no seed's run has it, else over the seeds that do); "
             "*cut episodes*: episodes with at least one cut turn (in brackets: how many of them still answered).", "",
             "| agent | N | seeds | episodes | EM [95% CI] | EM sum | answered | format errors | cut turns | "
             "cut episodes (answered) | context full | peak tokens [95% CI] | max tokens | peak KV MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, pts in curves.items():
        for n, r in pts.items():
            cut = "-" if r.get("length_stops") is None else f"{r['length_stops']:.2f}"
            cut_eps = "-" if r.get("cut_episodes") is None else "{} ({})".format(*r["cut_episodes"])
            lines.append(f"| {label} | {n} | {r['runs']} | {r['episodes']} | {fmt_ci(r['em'], r['em_ci'])} | "
                         f"{r['em_sum']:.2f} | {r['answered']:.2f} | {r['format_errors']:.2f} | {cut} | {cut_eps} | "
                         f"{r['context_full']:.2f} | {r['peak_tokens']:.0f} "
                         f"[{r['peak_tokens_ci'][0]:.0f}, {r['peak_tokens_ci'][1]:.0f}] | {r['max_tokens']} | "
                         f"{r['peak_kv_mib']:.1f} |")
    lines += ["", *multihop_verdicts(curves), "", "H1-H3 on this set (the criteria of the old comparison's Verdicts "
              "section below, here on unseen tasks, pooled over this set's seeds):", "", *hypotheses(curves, mh["raw"]),
              "", "Budget of every run (tokens trained: SFT + GRPO learner tokens; "
              "generated: GRPO rollouts; wall: every phase, evals and the sweep included):", "",
              "| run | SFT steps | GRPO steps | largest N reached | tokens trained | tokens generated | wall min |",
              "|---|---|---|---|---|---|---|"]
    for run, b in mh["budgets"].items():
        lines.append(f"| {run} | {b['sft_steps']} | {b['grpo_steps']} | {b['max_n']} | {b['train_tokens']:,} | "
                     f"{b['generated']:,} | {b['wall_s'] / 60:.1f} |")
    return lines + fact_table(mh.get("facts", {}), mh.get("hops", {}))


def tuning_table(runs: Path, evals: tuple[str, ...], setting: str, step: int) -> list[str]:
    """One row per eval of a setting tried on the tuning set (the setting is the eval directory's name): EM,
    answered, format errors and cut turns per turn, episodes with a cut turn (answered), turns, the share of
    objectives whose facts were not found."""
    rows = []
    for run in evals:
        eps = read_jsonl(runs / run / "episodes.jsonl")
        if not eps:
            continue
        turns = sum(e["turns"] for e in eps)
        facts = outcome_counts(eps)
        rows.append(f"| {run.rsplit('/', 1)[1]} | {len(eps)} | {fmt_ci(*em_and_ci(eps))} | "
                    f"{np.mean([bool(e.get('terminated')) for e in eps]):.2f} | "
                    f"{sum(e['format_errors'] for e in eps) / turns:.2f} | "
                    f"{sum(e.get('length_stops', 0) for e in eps) / turns:.2f} | "
                    "{} ({}) | ".format(*cut_episodes(eps)) + f"{turns / len(eps):.1f} | "
                    f"{facts['not found'] / max(1, sum(facts.values())):.0%} |")
    if not rows:
        return [f"(runs missing: `recipes/experiments/run_all.sh` step {step})"]
    return [f"| {setting} | episodes | EM [95% CI] | answered | format errors | cut turns | cut episodes (answered) | "
            "turns | facts not found |", "|---|---|---|---|---|---|---|---|---|", *rows]


def em_and_ci(eps: list[dict]) -> tuple[float, tuple[float, float]]:
    em = [episode_em(e) for e in eps]
    return float(np.mean(em)), bootstrap_ci(em, resamples=RESAMPLES)


def fact_table(facts: dict[str, dict[int, dict[str, int]]],
               hops: dict[str, dict[int, dict[str, dict[int, int]]]] | None = None) -> list[str]:
    """Where the sweep's objectives lost their facts (`agents.audit`), per agent and N, seeds pooled; runs recorded
    before the audit existed have no outcomes and are left out. The last column: of the lost objectives whose hop
    was recorded (`lost_hops`, since session 20), how many lost it at hop 2 (the dependent search's fact)."""
    rows = [(label, n, c) for label, pts in facts.items() for n, c in pts.items() if sum(c.values())]
    if not rows:
        return []
    lines = ["", "Where each objective's facts were lost (sweep objectives, seeds pooled; `agents.audit`: the first "
             "fact of the gold chain that was not found, not written to memory, cut by the memory budget, or "
             "dropped before the last turn; \"lost at hop 2\": the fact that only the search for the first hop's "
             "answer returns, i.e. the first hop was found and kept):", "",
             "| agent | N | objectives | " + " | ".join(OUTCOMES) + " | lost at hop 2 |",
             "|---|---|---|" + "---|" * (len(OUTCOMES) + 1)]
    for label, n, c in rows:
        total = sum(c.values())
        by_hop = [k for per_hop in ((hops or {}).get(label, {}).get(n) or {}).values() for k in per_hop.items()]
        lost = sum(k for _, k in by_hop)
        hop2 = f"{sum(k for h, k in by_hop if h >= 2)} of {lost}" if lost else "-"
        lines.append(f"| {label} | {n} | {total} | " + " | ".join(f"{c[o]} ({c[o] / total:.0%})" for o in OUTCOMES)
                     + f" | {hop2} |")
    return lines


def multihop_verdicts(curves: dict[str, dict[int, dict]]) -> list[str]:
    """At the largest N: each memory agent's peak context over full context's (goal <= 0.2); at N >= 8 whether each
    memory agent's EM is at least full context's (CONFIRMED only when the intervals separate)."""
    fc = curves.get("full_context (trained)")
    memory = {label.split(" ")[0]: c for label, c in curves.items() if label != "full_context (trained)"}
    if fc is None or not memory:
        return ["- Verdicts PENDING: a memory agent and the full-context agent must both have finished."]
    hi = max(fc)
    out = []
    for a, c in memory.items():
        if hi in c:
            out.append(f"- **Peak context at N = {hi}, {a} / full context: {c[hi]['peak_tokens'] / fc[hi]['peak_tokens']:.3f}"
                       f"** ({c[hi]['peak_tokens']:.0f} vs {fc[hi]['peak_tokens']:.0f} tokens; goal <= 0.2; full context "
                       f"filled its window in {fc[hi]['context_full']:.0%} of episodes).")
    for n in sorted(x for x in fc if x >= 8):
        for a, c in memory.items():
            if n not in c:
                continue
            m, f = (c[n]["em"], *c[n]["em_ci"]), (fc[n]["em"], *fc[n]["em_ci"])
            word = ("CONFIRMED (intervals separate)" if m[0] > f[0] and separate(m, f) else
                    "REFUTED (intervals separate)" if m[0] < f[0] and separate(m, f) else
                    "NOT SHOWN (the intervals overlap)")
            out.append(f"- **N = {n}, {a} EM >= full context: {word}.** {fmt_ci(c[n]['em'], c[n]['em_ci'])} vs "
                       f"{fmt_ci(fc[n]['em'], fc[n]['em_ci'])}.")
    return out


def write(data: dict, out: Path, kv_bytes: int) -> Path:
    """Draw the EM and peak-token plots and one gain plot per set of seeds (results_gain_<i>.png) into `out`, and
    fill results_template.md with the verdicts and tables from `collect`'s `data` (plus results_notes.md from
    `out`, if any) into `out`/RESULTS.md; returns its path."""
    curves = data["curves"]
    out.mkdir(parents=True, exist_ok=True)
    plot(curves, "em", "EM (mean over objectives), 95% bootstrap", out / "results_em_vs_n.png", "em_ci")
    plot(curves, "peak_tokens", "peak context tokens per episode", out / "results_peak_tokens_vs_n.png",
         "peak_tokens_ci")
    lines = ["| agent | N | seeds | episodes | EM [95% CI] | EM per seed [95% CI] | EM sum | F1 | answered | "
             "peak tokens | max tokens | peak KV MiB | s / episode | context full |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, pts in curves.items():
        for n in sorted(pts):
            r = pts[n]
            secs = f"{r['episode_s']:.1f}" if r["episode_s"] is not None else "-"
            seeds = "-" if label.startswith("untrained") else str(r["runs"])
            lines.append(f"| {label} | {n} | {seeds} | {r['episodes']} | {fmt_ci(r['em'], r['em_ci'])} | "
                         f"{per_run_cell(r)} | {r['em_sum']:.2f} | {r['f1']:.3f} | {r['answered']:.2f} | "
                         f"{r['peak_tokens']:.0f} | {r['max_tokens']} | {r['peak_kv_mib']:.1f} | {secs} | "
                         f"{r['context_full']:.2f} |")
    real = ["| dataset | agent | episodes | EM ± s.e. | F1 | answered | peak tokens |", "|---|---|---|---|---|---|---|"]
    for ds, rows in data["real"].items():
        for label, r in rows.items():
            real.append(f"| {ds} | {label} | {r['episodes']} | {r['em']:.3f} ± {r['em_stderr']:.3f} | {r['f1']:.3f} | "
                        f"{r.get('answered_rate', 0):.2f} | {r['peak_context_tokens']:.0f} |")
    parts = []
    for i, (title, runs) in enumerate(GAIN_SETS.items()):
        names = [n for n in runs if n in data.get("gain", {})]
        if not names:
            continue
        heldout = [data["gain_heldout"][n] for n in names]
        png = f"results_gain_{i}.png"
        gain_mod.plot(names, [data["gain_curves"][n] for n in names], out / png, heldout)
        parts += [f"**{title}**", "", *gain_mod.table(names, [gain_mod.run_gain(data["gain"][n]) for n in names]), "",
                  *gain_mod.curve_table(names, heldout), "", f"![training reward and held-out EM per GRPO step]({png})",
                  ""]
    gain = "\n".join(parts) or "(runs missing: `recipes/experiments/run_all.sh` step 0)"
    template = (Path(__file__).parent / "results_template.md").read_text()
    notes = out / "results_notes.md"
    text = template.format(
        verdicts="\n".join(hypotheses(data["curves"], data["raw"])) or "(runs missing)", training="\n".join(training_tables(data["summaries"])),
        sweep="\n".join(lines),
        real="\n".join(real), kv_bytes=kv_bytes, gain=gain, notes=notes.read_text() if notes.exists() else "",
        real_train="\n".join(real_train_table(data.get("real_train"))),
        multihop="\n".join(multihop_sections(data.get("multihop", {}), out)),
        **{key: "\n".join(data.get(key, [])) for key in TUNING})
    path = out / "RESULTS.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> Path:
    """`memrl bench results`: archive the inputs from --runs into --archive, then (unless --archive-only) build
    the page from the archive into --out. Returns the page's path (the archive's with --archive-only)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--archive", default="docs/results_data", help="committed copy of the inputs the page is built from")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--archive-only", action="store_true", help="copy the inputs into --archive, write no page")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="for KV bytes per token")
    args = ap.parse_args(argv)
    copied = archive_inputs(Path(args.runs), Path(args.archive))
    print(f"archived {len(copied)} input files from {args.runs} into {args.archive}")
    if args.archive_only:
        return Path(args.archive)
    from memrl.models import kv_bytes_per_token

    kv = kv_bytes_per_token(args.model)
    path = write(collect(Path(args.archive), kv), Path(args.out), kv)
    print(path)
    return path


if __name__ == "__main__":
    main()
