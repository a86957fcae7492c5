"""Scale-out costs, measured in one process: weight sync as a share of a GRPO step on the native path (vLLM's
weight-transfer protocol, layer by layer) vs the blob path (one safetensors blob through Ray), and the GRPO step
time with 1 vs 2 data-parallel learner ranks.

Each configuration builds the recipe's real Trainer (learner ranks as Ray actors, vLLM rollout workers), runs
`--steps` GRPO steps (rollout, learn, sync) from the untrained model, then `--syncs` bare syncs (no training in
between) for a clean sync time. The configurations run one after the other on the same local Ray.

    memrl bench scaling                                   # SmolLM2-135M, the quickstart recipe
    memrl bench scaling --configs native:1,blob:1 --set train.steps=1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from memrl.bench.common import machine


def _config(text: str) -> tuple[str, int]:
    mode, ranks = text.split(":")
    if mode not in ("native", "blob"):
        raise argparse.ArgumentTypeError(f"a configuration is native:RANKS or blob:RANKS, got {text!r}")
    return mode, int(ranks)


def measure(recipe_name: str, overrides: list[str], mode: str, ranks: int, steps: int, syncs: int, out: str) -> dict:
    """GRPO step and sync times of one configuration (its own Trainer, closed afterwards)."""
    from memrl.recipes.schema import load_recipe
    from memrl.rl.trainer import Trainer

    recipe = load_recipe(recipe_name, [*overrides, f"rollout.weight_sync={mode}", f"learner.ranks={ranks}",
                                       f"output_dir={out}/{mode}-{ranks}", "logging.progress=false"])
    t0 = time.perf_counter()
    trainer = Trainer(recipe)
    startup = time.perf_counter() - t0
    try:
        rows = [trainer.grpo_step(s) for s in range(steps)]
        bare = [trainer.sync_weights() for _ in range(syncs)]
    finally:
        trainer.close()
    mean = statistics.fmean
    return {"mode": mode, "ranks": ranks, "startup_s": startup,
            "step_s": mean(r["time_step"] for r in rows), "rollout_s": mean(r["time_rollout"] for r in rows),
            "learn_s": mean(r["time_learn"] for r in rows), "sync_in_step_s": mean(r["time_sync"] for r in rows),
            "sync_share": mean(r["sync_share"] for r in rows),
            "bare_sync_s": mean(bare), "bare_sync_sd": statistics.pstdev(bare),
            "train_tokens": mean(r.get("train_tokens", 0.0) for r in rows)}


def ratios(rows: list[dict]) -> dict:
    """The comparisons that the measured rows allow: native / blob bare sync time and each path's sync share
    (native:1 and blob:1), and 2-rank / 1-rank GRPO step and learn times (native:1 and native:2)."""
    by = {(r["mode"], r["ranks"]): r for r in rows}
    out = {}
    if ("native", 1) in by and ("blob", 1) in by:
        n, b = by["native", 1], by["blob", 1]
        out["native_over_blob_sync"] = n["bare_sync_s"] / b["bare_sync_s"]
        out["native_sync_share"], out["blob_sync_share"] = n["sync_share"], b["sync_share"]
    if ("native", 1) in by and ("native", 2) in by:
        one, two = by["native", 1], by["native", 2]
        out["two_over_one_rank_step"] = two["step_s"] / one["step_s"]
        out["two_over_one_rank_learn"] = two["learn_s"] / one["learn_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    """`memrl bench scaling`: `measure` each `--configs` MODE:RANKS in turn (no zero-shot eval, 0.5 CPU per
    learner rank), print the table and `ratios`, and return the rows with the ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--configs", type=lambda s: [_config(c) for c in s.split(",")],
                    default=[("native", 1), ("blob", 1), ("native", 2)], help="MODE:RANKS,... (MODE native or blob)")
    ap.add_argument("--steps", type=int, default=2, help="GRPO steps per configuration")
    ap.add_argument("--syncs", type=int, default=3, help="bare syncs per configuration after the steps")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override a.b=c")
    args = ap.parse_args(argv)

    base = ["train.zero_shot_eval=false", "resources.cpus_per_learner_rank=0.5", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="memrl-bench-scaling-") as out:
        rows = [measure(args.recipe, base, mode, ranks, args.steps, args.syncs, out) for mode, ranks in args.configs]
    print(f"machine: {machine()}")
    print(f"recipe {args.recipe} {' '.join(args.overrides)}; {args.steps} GRPO steps + {args.syncs} bare syncs each")
    print("| sync path | learner ranks | GRPO step s | rollout s | learn s | sync s (in step) | sync share | "
          "bare sync s (sd) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['ranks']} | {r['step_s']:.1f} | {r['rollout_s']:.1f} | {r['learn_s']:.1f} | "
              f"{r['sync_in_step_s']:.2f} | {100 * r['sync_share']:.1f}% | {r['bare_sync_s']:.2f} "
              f"({r['bare_sync_sd']:.2f}) |")
    ratio = ratios(rows)
    if "native_over_blob_sync" in ratio:
        print(f"ratio native / blob sync time: {ratio['native_over_blob_sync']:.3f} (sync share of the step: native "
              f"{100 * ratio['native_sync_share']:.1f}%, blob {100 * ratio['blob_sync_share']:.1f}%)")
    if "two_over_one_rank_step" in ratio:
        print(f"ratio 2 ranks / 1 rank: GRPO step {ratio['two_over_one_rank_step']:.3f}, learn "
              f"{ratio['two_over_one_rank_learn']:.3f}")
    return {"rows": rows, **ratio}


if __name__ == "__main__":
    main()
