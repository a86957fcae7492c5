"""MEM1 composition: N objectives in one episode, from the same env or different ones.

The episode shows the N questions numbered; the agent may use every tool of every part and ends with
one `<answer>a_1; a_2; ...; a_N</answer>` (answers in order, separated by ';'). Each objective is
scored by its own env; `info` keeps the per-objective EM/F1 and the reward aggregates them (mean by
default, or MEM1's sum). A tool that several parts share through the same backend (e.g. one search
index) is called once per turn; parts with different backends for a tool name each answer and their
results are joined.
"""

from __future__ import annotations

import numpy as np

from memrl.envs.core import OracleStep, Task, TaskEnv, TurnEnv
from memrl.envs.rewards import split_answers

AGGREGATES = ("mean", "sum")


class ComposedEnv(TurnEnv):
    """MEM1's composition: N single-objective envs (`TaskEnv`s) played as one episode with N numbered questions,
    the union of their tools, one `;`-separated answer scored part by part, and the reward aggregated by
    `aggregate` (mean or sum); all parts share the episode's seed, so they live in one world."""

    def __init__(self, envs: list[TaskEnv], max_turns: int | None = None, aggregate: str = "mean") -> None:
        if not envs:
            raise ValueError("compose() needs at least one env")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.parts = [getattr(e, "unwrapped", e) for e in envs]
        bad = [type(e).__name__ for e in self.parts if not isinstance(e, TaskEnv)]
        if bad:
            raise TypeError(f"compose() takes TaskEnv instances (single-objective tasks); got {bad}")
        super().__init__(max_turns or sum(e.max_turns for e in self.parts))
        self.aggregate_mode = aggregate

    def aggregate(self, values: list[float]) -> float:
        return float(np.sum(values) if self.aggregate_mode == "sum" else np.mean(values))

    def prepare(self) -> None:
        """Every part's `prepare` (shared backends are built once: they are cached by the parts)."""
        for part in self.parts:
            part.prepare()

    def tools(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in self.parts:
            for name, desc in part.tools().items():
                out.setdefault(name, desc)
        return out

    def call_tool(self, name: str, argument: str) -> str:
        seen: dict[object, str] = {}
        for part in self.parts:
            if name in part.tools():
                backend = part.backend_of(name)
                if backend not in seen:
                    seen[backend] = part.call_tool(name, argument)
        return "\n".join(seen.values())

    def score_answer(self, text: str) -> dict:
        preds = split_answers(text, len(self.parts))
        scores = [part.score(pred, part.task) for part, pred in zip(self.parts, preds, strict=True)]
        return {"objective_em": [s[0] for s in scores], "objective_f1": [s[1] for s in scores]}

    def objectives(self) -> list[Task]:
        return [part.task for part in self.parts]

    def reset(self, seed: int | None = None, options: dict | None = None):
        """A new episode: every part reset with its own sub-seed of `seed` and the shared `episode_seed` (one world
        for all parts); returns the N numbered questions with the answer instructions, and the info (tools...)."""
        super().reset(seed=seed)
        base = int(self.np_random.integers(2**31)) if seed is None else int(seed)
        for i, part in enumerate(self.parts):  # distinct, reproducible sub-seeds even for copies of one env
            part.reset(seed=int(np.random.SeedSequence([base, i]).generate_state(1)[0]), options={"episode_seed": base})
        self._begin()
        questions = "\n".join(f"{i + 1}. {t.question}" for i, t in enumerate(self.objectives()))
        n = len(self.parts)
        head = (f"Answer all {n} questions. Give the answers in order in one <answer>, separated by ';'."
                if n > 1 else "Answer the question.")
        return f"{head}\n{questions}", self.reset_info()

    def oracle_steps(self) -> list[OracleStep]:
        """The parts' tool steps in order, then one answer; notes keep what earlier parts found."""
        steps: list[OracleStep] = []
        finals: list[str] = []
        answers: list[str] = []
        for i, part in enumerate(self.parts):
            plan = part.oracle_steps()
            tool_steps, last = plan[:-1], plan[-1]
            for step in tool_steps:
                steps.append(OracleStep(step.action, " ".join([*finals, f"Q{i + 1}: {step.note}"])))
            finals.append(f"Q{i + 1}: {last.note}")
            answers.append(last.action.removeprefix("<answer>").removesuffix("</answer>"))
        steps.append(OracleStep(f"<answer>{'; '.join(answers)}</answer>", " ".join(finals)))
        return steps


def compose(envs: list[TaskEnv], max_turns: int | None = None, aggregate: str = "mean") -> ComposedEnv:
    """N objectives in one episode (see the module docstring)."""
    return ComposedEnv(envs, max_turns=max_turns, aggregate=aggregate)
