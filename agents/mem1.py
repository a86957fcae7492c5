"""MEM1 agent: an internal state `<IS>...</IS>` that replaces the history every turn.

Prompt format (one assistant stream, as in MEM1's released code):
  turn 1:  [system + user(task)] <assistant>            -> model writes `<IS>..</IS><search>q</search>`
  turn t:  [system + user(task)] <assistant> {completion t-1} {information t-1}
                                                          -> model writes `<IS>..</IS>` + action
Only the task, the latest completion (internal state + action) and the latest observation are kept;
everything older is dropped, so the context is bounded by
prompt + 2 x max_tokens + max_observation_tokens, whatever the number of turns.
The previous completion re-enters as the exact sampled token ids (masked in the new context).
"""

from __future__ import annotations

from memrl.agents.base import Agent, EpisodeState, tool_lines

SYSTEM = """Solve the task by searching. Older turns are deleted: each turn, first write your internal \
state inside <IS> </IS> with every fact you still need. Then write one action:
{tools}
- <answer>...</answer>: the final answer (several questions: answers in order, separated by ';')."""


class Mem1Agent(Agent):
    """MEM1: the model writes an internal state <IS> each turn and everything older than the last completion and
    observation is dropped; one context per turn (module docstring)."""

    name = "mem1"
    memory_tag = "IS"

    def start(self, observation: str, info: dict) -> EpisodeState:
        state = super().start(observation, info)
        state.prefix = self.chat_ids(SYSTEM.format(tools=tool_lines(state.tools)), observation)
        return state

    def context_ids(self, state: EpisodeState) -> list[int]:
        if state.turn == 0:
            return list(state.prefix)
        return [*state.prefix, *state.last_completion, *self.observation_ids(state.last_observation)]

    def gold_completion(self, note: str, action: str) -> str:
        return f"<IS>{note}</IS>{action}"
