"""One step's bookkeeping around the loss: a GRPO step's rewards made advantages (`assign_advantages`); then,
whoever runs the optimizer step (one `Learner`, or the ranks of a `LearnerGroup`), the weight versions checked,
the minibatch built and shared out, the ranks' summed stats turned into metrics, and a GRPO step's metrics merged
over its minibatches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from memrl.envs.rewards import shaped_reward
from memrl.records import Trajectory
from memrl.rl import losses
from memrl.rl.batching import Part, minibatch

if TYPE_CHECKING:
    from memrl.recipes.schema import AlgorithmCfg


def run_step(trajectories: list[Trajectory], sft: bool, version: int | None, loss_agg: str, max_tokens: int,
             train_shares: Callable[[Part], list[tuple[dict[str, float], dict]]], max_staleness: int = 0) -> dict:
    """One optimizer step, whoever runs it (one Learner, or the ranks of a LearnerGroup): the versions checked
    (at most `max_staleness` behind `version`), the loss weights computed over the whole minibatch,
    `train_shares(part)` -> each rank's (summed stats, step info), then the step's metrics (with the staleness
    histogram of the contexts: `staleness_K` = contexts K versions behind)."""
    t0 = time.perf_counter()
    if version is not None:
        check_versions(trajectories, version, max_staleness)
    part = minibatch(trajectories, loss_agg, max_tokens, sft)
    if not part.contexts:
        return {"skipped": 1.0, "reason_no_tokens": 1.0}
    results = train_shares(part)
    metrics = step_metrics([t for t, _ in results], [i for _, i in results], part, time.perf_counter() - t0)
    if version is not None and max_staleness:
        for lag in range(max_staleness + 1):
            metrics[f"staleness_{lag}"] = float(sum(version - v == lag for v in part.versions))
    return metrics


def step_metrics(totals: list[dict[str, float]], infos: list[dict], part: Part, seconds: float) -> dict:
    """One step's metrics from every rank's summed stats and step info (the step is global: rank 0's info)."""
    summed: dict[str, float] = {}
    for t in totals:
        for k, v in t.items():
            summed[k] = summed.get(k, 0.0) + v
    metrics = losses.finish_stats(summed)
    metrics.pop("tokens", None)
    metrics.update(infos[0], train_tokens=summed.get("tokens", 0.0), learner_time=seconds,
                   learner_tokens_per_s=part.tokens / seconds, contexts=float(len(part.contexts)))
    return metrics


# Metrics of one minibatch's step that count something (tokens, contexts, skipped steps): a GRPO step's value is
# their sum over its minibatches. `staleness_K` (contexts K versions behind) are matched by prefix.
COUNT_METRICS = frozenset({"train_tokens", "contexts", "offpolicy_tokens", "skipped", "reason_no_tokens"})
COUNT_PREFIXES = ("staleness_",)


def merge_minibatch_metrics(parts: list[dict]) -> dict:
    """The metrics of one GRPO step from those of its minibatches' optimizer steps (`run_step`, in order): counts
    (`COUNT_METRICS`, `staleness_*`) are summed (a minibatch without the key counts 0); every other value is
    averaged over the minibatches that report it (a minibatch skipped for having no token reports no loss)."""
    keys = dict.fromkeys(k for p in parts for k in p)
    out = {}
    for k in keys:
        if k in COUNT_METRICS or k.startswith(COUNT_PREFIXES):
            out[k] = float(sum(p.get(k, 0.0) for p in parts))
        else:
            values = [p[k] for p in parts if k in p]
            out[k] = sum(values) / len(values)
    return out


class VersionMismatch(RuntimeError):
    """A trajectory sampled by other weights than the learner's, in synchronous mode."""


def check_versions(trajectories: list[Trajectory], version: int, max_staleness: int = 0) -> None:
    """Every context must have been sampled by weight `version` (synchronous training is on-policy), or by one
    at most `max_staleness` versions older (bounded staleness: `algorithm.max_staleness`)."""
    bad = sorted({v for t in trajectories for v in t.context_versions() if not 0 <= version - v <= max_staleness})
    if bad:
        rule = ("in synchronous mode every rollout must use the latest weights (a worker missed a weight sync)"
                if max_staleness == 0 else f"algorithm.max_staleness allows versions {version - max_staleness}.."
                                           f"{version}")
        raise VersionMismatch(f"contexts sampled by weight version(s) {bad}, the learner is at version {version}: "
                              f"{rule}")


def assign_advantages(trajs: list[Trajectory], algorithm: AlgorithmCfg) -> None:
    """The reward rule of the recipe's `algorithm` section (`envs.rewards.shaped_reward`), then group-relative
    advantages over the non-failed trajectories. A trajectory's env reward is its EM when it answered."""
    al = algorithm
    for t in trajs:
        if not t.failed:
            t.reward = shaped_reward(t.reward, t.info.get("f1", 0.0), t.info.get("format_errors", 0) > 0,
                                     t.info.get("format_reward", 0.0) == 1.0, score=al.reward,
                                     format_penalty=al.format_penalty, format_floor=al.format_floor)
    live = [t for t in trajs if not t.failed]
    if not live:
        return
    rewards = torch.tensor([t.reward for t in live], dtype=torch.float32)
    groups = torch.tensor([t.group_id for t in live])
    adv = losses.compute_advantages(al.advantage, rewards, groups)
    for t, a in zip(live, adv.tolist(), strict=True):
        t.advantage = a
