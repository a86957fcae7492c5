"""The text-environment API: Gymnasium envs whose observations and actions are strings.

A new multi-turn task is a `TaskEnv` subclass with two things: `sample_task(rng) -> Task` and one
method per tool, `tool_<name>(self, argument) -> str` (its docstring is the tool's description shown
to the model). The base class owns the turn loop:

- the action is the model's text; the first complete `<tool>argument</tool>` or `<answer>...</answer>`
  block is used (agents send a canonical block; raw text is handled the same way);
- a tool call returns `<information>result</information>` (plus MEM1's "[HINT] N turns left");
- an `<answer>` is scored against the gold aliases (EM reward, F1 and per-objective scores in `info`)
  and *terminates* the episode: the task reached its end;
- running out of turns *truncates* it with reward 0: the task was cut, not finished, which is why
  Gymnasium keeps the two flags apart (a learner may bootstrap on truncation, never on termination);
- anything else is an invalid action: an explanatory observation, the turn is consumed, and the
  episode's format reward becomes 0.

`reset` info carries `objectives` (questions), `answers` (gold aliases per objective), `tools`
(name -> description) and `max_turns`; `step` info carries `turn`, `invalid_action` and, at the end,
`em`, `f1`, `objective_em`, `objective_f1`, `objective_rewards` and `format_reward`.
"""

from __future__ import annotations

import inspect
import re
import zlib
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from memrl.envs.rewards import exact_match, f1_score

MAX_TEXT = 1_000_000
_TOOL_PREFIX = "tool_"
SPLITS = ("train", "eval")
EVAL_SHARE = 5  # one name (or answer) in EVAL_SHARE belongs to the eval split


def split_of(key: str) -> str:
    """The split that owns a name or an answer, fixed by its text alone: "eval" for one key in `EVAL_SHARE`
    (by CRC32), "train" for the rest. A generated env draws training tasks only from train-owned names and
    answers and held-out tasks only from eval-owned ones, so the two splits share no entity, question or
    answer by construction, whatever the seeds (tests/envs/test_splits.py checks every shipped env)."""
    return "eval" if zlib.crc32(key.strip().lower().encode("utf-8")) % EVAL_SHARE == 0 else "train"


class AnyText(gym.spaces.Text):
    """A Text space holding any Python string up to `max_length` characters (no charset limit)."""

    def __init__(self, max_length: int = MAX_TEXT) -> None:
        super().__init__(max_length=max_length)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length


class TextEnv(gym.Env):
    """A Gymnasium env with string observations and actions."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = AnyText()
        self.action_space = AnyText()


@dataclass(frozen=True)
class Task:
    """One objective of an episode: the question posed to the model and the answers that score."""

    question: str  # what the model is asked
    answers: list[str]  # gold aliases; any one counts as correct
    meta: dict = field(default_factory=dict)  # env-specific facts (e.g. the gold reasoning chain)


@dataclass(frozen=True)
class OracleStep:
    """One gold turn: the action an ideal agent takes and the memory it would write with it."""

    action: str  # e.g. "<search>Ana Lim</search>" or "<answer>Velmora</answer>"
    note: str  # everything an ideal agent still needs to know after this turn


_ANY_TAG = re.compile(r"</?[A-Za-z_][\w-]*(\s[^<>]*)?>")


def tag_block(tag: str) -> re.Pattern[str]:
    """A complete `<tag ...>content</tag>` block (case-insensitive, attributes allowed, content lazy)."""
    return re.compile(rf"<{re.escape(tag)}(?:\s[^<>]*)?>(.*?)</{re.escape(tag)}\s*>", re.DOTALL | re.IGNORECASE)


def find_action(text: str, names: list[str] | tuple[str, ...]) -> tuple[int, str, str] | None:
    """The action grammar, the one implementation (envs and agents both parse with it): the first complete
    `<name>content</name>` block whose name is in `names` -> (start offset, name, content with nested tags
    removed and whitespace trimmed; "" when empty), or None when there is no complete block."""
    best = None
    for name in names:
        m = tag_block(name).search(text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), name, m.group(1))
    if best is None:
        return None
    return best[0], best[1], _ANY_TAG.sub("", best[2]).strip()


def parse_action(text: str, names: list[str] | tuple[str, ...]) -> tuple[str, str] | None:
    """(name, argument) of the action in `text` (`find_action`), or None when there is none or it is empty."""
    found = find_action(text, names)
    return None if found is None or not found[2] else (found[1], found[2])


class TurnEnv(TextEnv):
    """The turn loop shared by single tasks and composed ones; subclasses say what a tool call and an
    answer mean (`tools`, `call_tool`, `score_answer`)."""

    turn_hint: bool = True

    def __init__(self, max_turns: int) -> None:
        super().__init__()
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = int(max_turns)
        self._turn = 0
        self._invalid = 0
        self._done = True

    @abstractmethod
    def tools(self) -> dict[str, str]:
        """Tool name -> one-line description."""

    def prepare(self) -> None:
        """Build what episodes will need (a search index) now, outside every episode's timeout: a rollout worker
        calls it when it adds the env to its pool. The default needs nothing."""

    @abstractmethod
    def call_tool(self, name: str, argument: str) -> str:
        """Run a tool; the result becomes the next observation."""

    @abstractmethod
    def score_answer(self, text: str) -> dict:
        """Score the final answer text: keys objective_em, objective_f1 (lists, one per objective)."""

    def aggregate(self, values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    def _begin(self) -> None:
        self._turn, self._invalid, self._done = 0, 0, False

    def step(self, action: str):
        """One turn (the rules in the module docstring): an `<answer>` ends the episode (terminated, reward
        = aggregated EM); a tool call or an invalid action returns `<information>...</information>` with
        reward 0, or, on the last allowed turn, ends it truncated with reward 0. Returns Gymnasium's
        (observation, reward, terminated, truncated, info). Raises RuntimeError after the episode ended."""
        if self._done:
            raise RuntimeError("step() after the episode ended; call reset() first")
        self._turn += 1
        text = action if isinstance(action, str) else ""
        parsed = parse_action(text, [*self.tools(), "answer"])
        info: dict[str, Any] = {"turn": self._turn, "invalid_action": parsed is None}
        if parsed is not None and parsed[0] == "answer":
            return self._finish(parsed[1], info)
        if parsed is None:
            self._invalid += 1
            names = ", ".join(f"<{n}>" for n in [*self.tools(), "answer"])
            body = f"Invalid action. Write exactly one of {names} with its closing tag."
        else:
            body = self.call_tool(*parsed)
        if self._turn >= self.max_turns:
            return self._finish(None, info)
        left = self.max_turns - self._turn
        hint = f"\n[HINT] {left} turn{'s' * (left != 1)} left." if self.turn_hint else ""
        return f"<information>{body}</information>{hint}", 0.0, False, False, info

    def _finish(self, answer: str | None, info: dict):
        self._done = True
        if answer is None:  # out of turns: truncated, nothing answered
            n = len(self.objectives())
            scores = {"objective_em": [0.0] * n, "objective_f1": [0.0] * n}
        else:
            scores = self.score_answer(answer)
        em, f1 = scores["objective_em"], scores["objective_f1"]
        info.update(scores, objective_rewards=list(em), em=self.aggregate(em), f1=self.aggregate(f1),
                    format_reward=float(answer is not None and self._invalid == 0))
        reward = info["em"] if answer is not None else 0.0
        return "Episode over.", float(reward), answer is not None, answer is None, info

    @abstractmethod
    def objectives(self) -> list[Task]:
        """The tasks of the current episode (one for a plain env, N for a composed one)."""

    def reset_info(self) -> dict:
        tasks = self.objectives()
        info = {"objectives": [t.question for t in tasks], "answers": [list(t.answers) for t in tasks],
                "tools": self.tools(), "max_turns": self.max_turns}
        if any("entities" in t.meta for t in tasks):  # gold reasoning chains: where facts get lost (agents.audit)
            info["chains"] = [list(t.meta["entities"]) if "entities" in t.meta else None for t in tasks]
        return info


class TaskEnv(TurnEnv):
    """Base of single-objective tasks: implement `sample_task(rng)` and `tool_<name>(argument)` methods.

    `split` ("train" or "eval") says which tasks the env draws: the trainer builds training envs with
    split="train" and held-out ones with split="eval", and a task of one split must never be a task of the
    other (held-out means unseen). A generated env keeps them apart by what it draws, e.g. only names or
    answers that `self.owns(...)` (`split_of`); a data-backed env by which rows it reads.

    Optionally override `oracle(task) -> list[OracleStep]` (gold trajectories for SFT and tests) and
    `score(prediction, task)` (default: normalized EM and F1 over the gold aliases).
    """

    default_max_turns: int = 4
    splits: tuple[str, ...] = SPLITS

    def __init__(self, max_turns: int | None = None, split: str = "train") -> None:
        super().__init__(max_turns or self.default_max_turns)
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        self.split = split
        self.task: Task | None = None
        self.episode_seed: int | None = None

    def owns(self, key: str) -> bool:
        """Whether a name or an answer belongs to this env's split (`split_of`)."""
        return split_of(key) == self.split

    @abstractmethod
    def sample_task(self, rng: np.random.Generator) -> Task:
        """Draw one task; all randomness comes from `rng` so a seed fixes the task."""

    def tools(self) -> dict[str, str]:
        return {name[len(_TOOL_PREFIX):]: inspect.getdoc(fn) or name[len(_TOOL_PREFIX):]
                for name, fn in inspect.getmembers(type(self), inspect.isfunction) if name.startswith(_TOOL_PREFIX)}

    def call_tool(self, name: str, argument: str) -> str:
        return str(getattr(self, _TOOL_PREFIX + name)(argument))

    def backend_of(self, name: str) -> object:
        """What answers tool `name`; composed episodes call a shared backend once per turn, not N times."""
        return (type(self), name)

    def score(self, prediction: str, task: Task) -> tuple[float, float]:
        return exact_match(prediction, task.answers), f1_score(prediction, task.answers)

    def score_answer(self, text: str) -> dict:
        em, f1 = self.score(text.strip(), self.task)
        return {"objective_em": [em], "objective_f1": [f1]}

    def objectives(self) -> list[Task]:
        return [self.task]

    def render_task(self, task: Task) -> str:
        return f"Question: {task.question}"

    def reset(self, seed: int | None = None, options: dict | None = None):
        """`options`: `task` (a Task to pose instead of drawing one), `episode_seed` (a seed every part of one
        composed episode shares, e.g. to draw one world for all its questions; default: this reset's seed)."""
        super().reset(seed=seed)
        opts = options or {}
        shared = opts.get("episode_seed", seed)
        self.episode_seed = int(self.np_random.integers(2**31)) if shared is None else int(shared)
        task = opts.get("task")
        self.task = task if isinstance(task, Task) else self.sample_task(self.np_random)
        self._begin()
        return self.render_task(self.task), self.reset_info()

    def oracle(self, task: Task) -> list[OracleStep]:
        return [OracleStep(f"<answer>{task.answers[0]}</answer>", f"The answer is {task.answers[0]}.")]

    def oracle_steps(self) -> list[OracleStep]:
        """Gold turns for the current episode."""
        if self.task is None:
            raise RuntimeError("oracle_steps() before reset()")
        return self.oracle(self.task)
