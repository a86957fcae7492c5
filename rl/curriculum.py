"""Curriculum over composed objectives: which N (objectives per episode, MEM1 composition) each training
task of a GRPO step gets.

Two modes, from the recipe's `curriculum` section:

- `mix`: every task draws its N from `curriculum.objectives` with probabilities `curriculum.weights`
  (uniform when absent): training on a distribution of N.
- `grow`: training starts with the smallest N only; when the mean training reward at the largest N
  unlocked so far reaches `curriculum.promote_at` over the last `curriculum.window` steps, the next N
  is unlocked. Tasks draw their N uniformly from the unlocked ones, so the easier Ns keep being rehearsed.

Draws are seeded by the step, so a resumed run makes the same choices; the unlocked level is part of the
trainer's checkpoint. The trainer logs the reward of every N each step (`reward_n{N}`) and the level.
"""

from __future__ import annotations

import numpy as np


class Curriculum:
    """The N of each task, step by step. `section` is the recipe's `curriculum` section (read by keyword)."""

    def __init__(self, section, seed: int = 0) -> None:
        self.ns = sorted(section.objectives)
        self.mode = section.mode
        self.weights = section.weights
        self.promote_at, self.window = section.promote_at, section.window
        self.seed = seed
        self.level = 1  # grow: how many of `ns` are unlocked
        self.history: dict[int, list[float]] = {}  # N -> mean training reward per step

    @property
    def unlocked(self) -> list[int]:
        return self.ns if self.mode == "mix" else self.ns[: self.level]

    def objectives(self, step: int, tasks: int) -> list[int]:
        """The N of each of `tasks` tasks at GRPO step `step` (seeded by the step)."""
        rng = np.random.default_rng([self.seed, step])
        ns = self.unlocked
        p = None
        if self.mode == "mix" and self.weights is not None:
            w = np.asarray(self.weights, dtype=float)
            p = w / w.sum()
        return [int(n) for n in rng.choice(ns, size=tasks, p=p)]

    def observe(self, rewards: dict[int, list[float]]) -> bool:
        """Record one step's training rewards by N; returns True when a new N was unlocked (grow mode)."""
        for n, rs in rewards.items():
            if rs:
                self.history.setdefault(n, []).append(float(np.mean(rs)))
        if self.mode != "grow" or self.level >= len(self.ns):
            return False
        top = self.history.get(self.ns[self.level - 1], [])
        if len(top) >= self.window and float(np.mean(top[-self.window:])) >= self.promote_at:
            self.level += 1
            return True
        return False

    def state_dict(self) -> dict:
        return {"level": self.level, "history": {str(k): v for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.level = int(state["level"])
        self.history = {int(k): list(v) for k, v in state["history"].items()}
