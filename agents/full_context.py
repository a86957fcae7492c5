"""Full-context baseline (Search-R1 / ReAct style): everything is appended each turn.

Prompt format (one growing assistant stream):
  [system + user(task)] <assistant> {completion 1} {information 1} {completion 2} {information 2} ...
The trajectory is ONE context whose loss mask covers every sampled completion and masks the prompt
and the observations, so its length grows with the turns (the cost memory agents avoid).
"""

from __future__ import annotations

from memrl.agents.backends import Generation
from memrl.agents.base import Agent, EpisodeState, tool_lines
from memrl.records import Context

SYSTEM = """You solve tasks by searching. You may think inside <think> </think>. Then write exactly one \
action:
{tools}
- <answer>...</answer>: the final answer (for several questions: answers in order, separated by ';').
Example: <think>I need the city where Ana Lim was born.</think><search>Ana Lim</search>"""


class FullContextAgent(Agent):
    """The baseline without memory (Search-R1 style): one context per episode that grows with every turn's
    completion and observation, so its length grows with the number of turns (module docstring)."""

    name = "full_context"
    memory_tag = None

    def start(self, observation: str, info: dict) -> EpisodeState:
        state = super().start(observation, info)
        prefix = self.chat_ids(SYSTEM.format(tools=tool_lines(state.tools)), observation)
        state.contexts.append(Context(prefix, [0] * len(prefix), [0.0] * len(prefix)))
        return state

    def context_ids(self, state: EpisodeState) -> list[int]:
        ctx = state.contexts[0]
        if state.turn > 0:  # the observation of the previous turn joins the stream now
            ctx.extend(self.observation_ids(state.last_observation), sampled=False)
        return list(ctx.token_ids)

    def record(self, state: EpisodeState, prompt: list[int], gen: Generation) -> None:
        ctx = state.contexts[0]
        ctx.extend(gen.token_ids, sampled=True, logprobs=gen.logprobs)
        if gen.weight_version is not None:  # one growing context: it is as old as its oldest generation
            ctx.weight_version = min(v for v in (ctx.weight_version, gen.weight_version) if v is not None)

    def gold_completion(self, note: str, action: str) -> str:
        return f"<think>{note}</think>{action}"
