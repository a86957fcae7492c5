"""A second domain, and the README's "define an environment" example: arithmetic with a calculator.

The model must call `<calc>expression</calc>` (it is not expected to multiply 3-digit numbers in its
head), then answer. Composing it with `memrl/KBQA-v0` gives heterogeneous multi-objective episodes.
"""

from __future__ import annotations

import ast
import operator

from memrl.envs.core import OracleStep, Task, TaskEnv

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.USub: operator.neg}


def safe_eval(expression: str) -> int:
    """Evaluate + - * on integers (no names, no calls, no powers); raises ValueError otherwise."""
    def ev(node):
        if isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) < 10**12:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {expression!r}")

    try:
        return ev(ast.parse(expression.strip()[:200], mode="eval").body)
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc


class ArithEnv(TaskEnv):
    """`What is a * b + c?` with 3-digit integers, to be solved with the `<calc>` tool, then `<answer>`.

    Task meta: `expression`. The oracle is one calc call, then the answer."""

    default_max_turns = 3

    def sample_task(self, rng) -> Task:
        """a * b + c with 3-digit numbers whose answer this split owns (`owns`): held-out answers, and so
        held-out questions, never occur in training."""
        while True:
            a, b, c = (int(x) for x in rng.integers(100, 1000, size=3))
            expression = f"{a} * {b} + {c}"
            answer = str(safe_eval(expression))
            if self.owns(answer):
                return Task(f"What is {expression}?", [answer], {"expression": expression})

    def tool_calc(self, expression: str) -> str:
        """evaluate an integer expression with + - *"""
        try:
            return str(safe_eval(expression))
        except ValueError as exc:
            return str(exc)

    def oracle(self, task: Task) -> list[OracleStep]:
        expr, answer = task.meta["expression"], task.answers[0]
        return [OracleStep(f"<calc>{expr}</calc>", f"Need {expr}."),
                OracleStep(f"<answer>{answer}</answer>", f"{expr} = {answer}.")]
