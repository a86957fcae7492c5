"""Baselines that need no model, reported beside every held-out EM so that a number can be read against them.

`answer_prior`: answer every held-out objective with the most frequent gold answer of the training tasks (the
constant guess; what memorizing the training answer distribution scores). On tasks whose train and eval
splits share no answer (generated envs, `envs.core.split_of`) it is 0 by construction; on real data it is
not (HotpotQA's "yes"/"no" questions).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence

import gymnasium as gym

from memrl.envs.rewards import exact_match, normalize_answer


def objective_tasks(env: gym.Env, seed: int) -> list:
    """The tasks (`envs.core.Task`) an episode of `env` asks at reset `seed`, one per objective."""
    env.reset(seed=seed)
    return list(env.unwrapped.objectives())


def most_common_answer(env: gym.Env, seeds: Sequence[int]) -> str:
    """The most frequent normalized first gold alias over the objectives of the episodes at `seeds` (ties: first
    seen), in the text of its first occurrence."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for seed in seeds:
        for task in objective_tasks(env, seed):
            key = normalize_answer(task.answers[0])
            counts[key] += 1
            first.setdefault(key, task.answers[0])
    if not counts:
        raise ValueError("no training answers to take a prior from")
    return first[counts.most_common(1)[0][0]]


def answer_prior(train_env: gym.Env, train_seeds: Sequence[int], eval_env: gym.Env,
                 eval_seeds: Sequence[int]) -> dict:
    """EM (mean over each episode's objectives, then over episodes; with its s.e.) of answering every held-out
    objective with the training tasks' most common answer."""
    guess = most_common_answer(train_env, train_seeds)
    per_episode = []
    for seed in eval_seeds:
        tasks = objective_tasks(eval_env, seed)
        per_episode.append(sum(exact_match(guess, t.answers) for t in tasks) / len(tasks))
    em = statistics.fmean(per_episode)
    se = statistics.stdev(per_episode) / math.sqrt(len(per_episode)) if len(per_episode) > 1 else 0.0
    return {"guess": guess, "em": em, "em_stderr": se, "train_tasks": len(train_seeds), "episodes": len(per_episode)}
