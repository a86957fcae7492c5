"""`memrl bench async`: wall time of N GRPO steps at staleness 0 (synchronous) vs 1 (the rollout of step t+1
overlaps learning step t), both in one process run, plus a simulated-cluster estimate.

Each run is the recipe's real Trainer. On one small machine rollout and learning share the same cores, so the
overlap gains little here; the estimate takes the rollout, learning and sync times measured in the synchronous
run and overlaps them on paper, as they would overlap with the engines and the learner on separate devices:
step = max(rollout, learn) + sync instead of rollout + learn + sync. It is an estimate, not a measurement.

    memrl bench async                          # quickstart recipe (SmolLM2-135M), 4 GRPO steps each
    memrl bench async --steps 3 --set algorithm.tasks_per_step=2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from memrl.bench.common import machine


def run(recipe_name: str, overrides: list[str], staleness: int, steps: int, out: str) -> dict:
    """`steps` GRPO steps of the recipe's Trainer at `algorithm.max_staleness=staleness`, output under
    `out`; returns the wall seconds, per-step means of the rollout, learn, sync and wait times, the rewards,
    and the mean off-policy clip fraction of the steps after the first."""
    from memrl.recipes.schema import load_recipe
    from memrl.rl.trainer import Trainer

    recipe = load_recipe(recipe_name, [*overrides, f"algorithm.max_staleness={staleness}", f"train.steps={steps}",
                                       f"output_dir={out}/staleness-{staleness}", "logging.progress=false"])
    trainer = Trainer(recipe)
    try:
        t0 = time.perf_counter()
        rows = [trainer.grpo_step(s) for s in range(steps)]
        wall = time.perf_counter() - t0
    finally:
        trainer.close()
    mean = statistics.fmean
    return {"staleness": staleness, "wall_s": wall, "rollout_s": mean(r["time_rollout"] for r in rows),
            "learn_s": mean(r["time_learn"] for r in rows), "sync_s": mean(r["time_sync"] for r in rows),
            "wait_s": mean(r["time_wait_next_rollout"] for r in rows),
            "reward": [r["reward_mean"] for r in rows],
            "offpolicy_clip_frac": mean(r.get("offpolicy_clip_frac", 0.0) for r in rows[1:]) if steps > 1 else 0.0}


def estimate(sync_run: dict, steps: int) -> dict:
    """Overlap on paper (separate devices): the first step cannot overlap, every later one costs max(rollout,
    learn) + sync."""
    r, learn, s = sync_run["rollout_s"], sync_run["learn_s"], sync_run["sync_s"]
    serial = steps * (r + learn + s)
    overlapped = (r + learn + s) + (steps - 1) * (max(r, learn) + s)
    return {"serial_s": serial, "overlapped_s": overlapped, "speedup": serial / overlapped}


def main(argv: list[str] | None = None) -> dict:
    """`memrl bench async`: `run` at staleness 0 and 1 (no zero-shot eval), print both, the measured wall
    ratio and the separate-devices `estimate`; returns the rows, `ratio_wall` and the `estimate_*` numbers."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override a.b=c")
    args = ap.parse_args(argv)
    base = ["train.zero_shot_eval=false", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="memrl-bench-async-") as out:
        rows = [run(args.recipe, base, k, args.steps, out) for k in (0, 1)]
    sync, overlap = rows
    est = estimate(sync, args.steps)
    print(f"machine: {machine()}")
    print(f"recipe {args.recipe} {' '.join(args.overrides)}; {args.steps} GRPO steps per run")
    print("| max_staleness | wall s | rollout s/step (waited) | learn s/step | sync s/step | waited for next rollout "
          "s/step | offpolicy clip frac |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['staleness']} | {r['wall_s']:.1f} | {r['rollout_s']:.1f} | {r['learn_s']:.1f} | {r['sync_s']:.2f} "
              f"| {r['wait_s']:.1f} | {r['offpolicy_clip_frac']:.3f} |")
    ratio = overlap["wall_s"] / sync["wall_s"]
    print(f"ratio staleness 1 / staleness 0 wall time (measured here): {ratio:.3f}")
    print(f"estimate with rollout and learner on separate devices (times of the staleness-0 run overlapped on "
          f"paper): {est['serial_s']:.1f} s -> {est['overlapped_s']:.1f} s, speedup {est['speedup']:.2f}x (estimate)")
    return {"rows": rows, "ratio_wall": ratio, **{f"estimate_{k}": v for k, v in est.items()}}


if __name__ == "__main__":
    main()
