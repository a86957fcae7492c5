"""MemSearcher agent: a memory field the model rewrites each turn, inside a fresh chat context.

Prompt format (a new chat each turn):
  system: instructions + tools
  user:   <question> task </question>
          <memory> memory written last turn (empty at first) </memory>
          <information> latest observation </information>        (absent on turn 1)
  model:  <memory> updated memory </memory> then one action
Memory beyond `memory_tokens` tokens is cut before it enters the next prompt, so the context is
bounded by prompt + memory_tokens + max_observation_tokens + max_tokens for any number of turns.
A turn whose output has no `<memory>` block keeps the previous memory (and counts a format error).
"""

from __future__ import annotations

from memrl.agents.base import Agent, EpisodeState, tool_lines

SYSTEM = """Answer by searching. Only your memory is kept between turns: first rewrite it inside \
<memory> </memory> with every fact you still need. Then write one action:
{tools}
- <answer>...</answer>: the final answer (several questions: answers in order, separated by ';')."""


class MemSearcherAgent(Agent):
    """MemSearcher: a fresh chat per turn holding the question, the memory the model rewrote last turn (cut to
    `memory_tokens`) and the latest observation; one context per turn (module docstring)."""

    name = "memsearcher"
    memory_tag = "memory"

    def context_ids(self, state: EpisodeState) -> list[int]:
        user = f"<question>\n{state.task}\n</question>\n<memory>\n{state.memory}\n</memory>"
        if state.turn > 0:
            obs_ids = self.observation_ids(state.last_observation)
            user += "\n" + self.tokenizer.decode(obs_ids).strip()
        return self.chat_ids(SYSTEM.format(tools=tool_lines(state.tools)), user)

    def gold_completion(self, note: str, action: str) -> str:
        return f"<memory>{note}</memory>{action}"
