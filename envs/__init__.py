"""Text environments: the API (`TextEnv`, `TaskEnv`), MEM1 composition, tasks and retrieval."""

from memrl.envs.compose import ComposedEnv, compose
from memrl.envs.core import AnyText, OracleStep, Task, TaskEnv, TextEnv, TurnEnv, parse_action
from memrl.envs.registry import ENVS, build, list_envs, make, register_all
from memrl.envs.rewards import exact_match, f1_score, normalize_answer

register_all()

__all__ = [
    "ENVS", "AnyText", "build", "ComposedEnv", "OracleStep", "Task", "TaskEnv", "TextEnv", "TurnEnv", "compose",
    "exact_match", "f1_score", "list_envs", "make", "normalize_answer", "parse_action", "register_all",
]
