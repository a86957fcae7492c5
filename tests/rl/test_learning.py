"""End to end on a tiny model with real Ray, vLLM and DeepSpeed: multi-context GRPO learns."""

import json

import pytest

from memrl.rl.metrics import read_metrics
from memrl.testing import letters_recipe

pytestmark = pytest.mark.slow


def _recipe(tmp_path, steps: int, **extra):
    return letters_recipe(tmp_path / "run", steps, **extra)


def test_multi_context_grpo_raises_reward_on_a_learnable_env(tmp_path, ray_local):
    from memrl.rl.trainer import Trainer

    trainer = Trainer(_recipe(tmp_path, steps=10))
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "grpo"]
    assert [r["step"] for r in recs] == list(range(10))
    # each step's rollouts were sampled by the workers' engines at the version the learner had (recorded in every
    # trajectory by the engine that sampled it, and checked by the learner before it trains); then a sync
    assert [r["rollout_weight_version"] for r in recs] == list(range(10))
    assert [r["weight_version"] for r in recs] == list(range(1, 11))
    first, last = recs[0]["reward_mean"], sum(r["reward_mean"] for r in recs[-3:]) / 3
    print(f"reward first step {first:.3f} -> last 3 steps {last:.3f}", [round(r["reward_mean"], 3) for r in recs])
    assert last > first + 0.15
    ev = summary["evals"]
    assert ev["after_grpo"]["reward"] > ev["zero_shot"]["reward"] + 0.15
    assert all(r["skipped"] == 0.0 for r in recs)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["steps"] == 10 and written["evals"]["after_grpo"]["reward"] == ev["after_grpo"]["reward"]


def test_staleness_one_overlaps_rollout_and_learning_and_still_learns(tmp_path, ray_local):
    """algorithm.max_staleness=1: the rollout of step t+1 runs while step t learns, so from step 1 on every
    trajectory is one version old and trained with the truncated importance correction; the reward still rises."""
    from memrl.rl.trainer import Trainer

    trainer = Trainer(_recipe(tmp_path, steps=10, **{"algorithm.max_staleness": 1}))
    try:
        trainer.run()
    finally:
        trainer.close()
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "grpo"]
    assert [r["rollout_weight_version"] for r in recs] == [0, *range(9)]  # step t+1 sampled before step t's sync
    assert [r["weight_version"] for r in recs] == list(range(1, 11))
    assert recs[0]["staleness_0"] > 0 and "offpolicy_tokens" not in recs[0]
    for r in recs[1:]:
        assert r["staleness_1"] > 0 and r["staleness_0"] == 0 and r["offpolicy_tokens"] > 0
        assert 0 <= r["offpolicy_clip_frac"] <= 1 and r["offpolicy_ratio_mean"] > 0
    rewards = [r["reward_mean"] for r in recs]
    print("staleness 1 rewards", [round(x, 3) for x in rewards],
          "clip frac", [round(r.get("offpolicy_clip_frac", 0.0), 3) for r in recs])
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.15
