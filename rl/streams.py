"""The training task streams: which task seeds the SFT warm start, GRPO and the RL control draw.

Every seed is a hash of (env.train_seed_offset, the run seed, the stream, the step, the task index), so the
run seed replicates the experiment: another seed trains on other tasks (and other SFT data), not only on
other samples of the same ones. The streams never overlap each other in practice (64-bit hashes cut to 31
bits) and need not avoid the held-out seeds: held-out tasks come from the env's eval split, which shares no
task with its train split by construction (`memrl.envs.core.split_of`), whatever the seed values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from memrl.recipes.schema import Recipe

STREAMS = ("grpo", "sft", "control", "prior")


def stream_seed(offset: int, run_seed: int, stream: str, step: int, index: int) -> int:
    """The seed of task `index` of `step` in `stream` (one of STREAMS) of run `run_seed`: a pure hash, < 2**31."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    keys = [int(offset), int(run_seed) & 0xFFFFFFFF, STREAMS.index(stream), int(step), int(index)]
    return int(np.random.SeedSequence(keys).generate_state(1, dtype=np.uint64)[0] % 2**31)


def stream_seeds(offset: int, run_seed: int, stream: str, step: int, count: int) -> list[int]:
    """Seeds of the `count` tasks of one step of a stream."""
    return [stream_seed(offset, run_seed, stream, step, i) for i in range(count)]


def task_seeds(recipe: Recipe, step: int) -> tuple[list[int], list[int]]:
    """Seeds (each repeated G times) and group ids of GRPO step `step` (the data cursor is the step; the run seed
    picks the stream: `rl.streams`)."""
    a = recipe.algorithm
    tasks = stream_seeds(recipe.env.train_seed_offset, recipe.seed, "grpo", step, a.tasks_per_step)
    seeds = [s for s in tasks for _ in range(a.group_size)]
    groups = [step * a.tasks_per_step + i for i in range(a.tasks_per_step) for _ in range(a.group_size)]
    return seeds, groups


def oracle_seeds(recipe: Recipe, stream: str, step: int) -> list[int]:
    """Task seeds of one SFT step of the warm start (`stream` "sft") or of the RL control ("control")."""
    return stream_seeds(recipe.env.train_seed_offset, recipe.seed, stream, step, recipe.sft.tasks_per_step)


def eval_sample_seeds(recipe: Recipe, seeds: list[int]) -> list[int] | None:
    """Per-episode sampling seeds of a sampled held-out eval (`train.eval_temperature` > 0), mixed from the run seed
    and each task's seed, so that it repeats and moves with the run seed; None for the (default) greedy evals."""
    if recipe.train.eval_temperature == 0:
        return None
    from memrl.agents import sampling_seed

    return [sampling_seed(recipe.seed, s) for s in seeds]
