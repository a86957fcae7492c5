"""The Agent interface: what the model sees each turn (its context) and how its text becomes an action.

An agent never touches the optimizer or the engine. Per turn the episode runner asks
`context_ids(state)` for the prompt token ids, samples a completion, asks `parse(...)` for the env
action, steps the env, and calls `update(...)`, which records the turn as a `Context` (token ids,
loss mask, log-probs) and carries the memory forward. The state an agent carries is what makes it
MEM1, MemSearcher or full context.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from memrl.agents.backends import Generation
from memrl.agents.parsing import Parsed, parse_output
from memrl.records import Context


@dataclass
class TokenStats:
    """Token accounting of one episode."""

    context_tokens: list[int] = field(default_factory=list)  # per turn: prompt + completion length
    generated: int = 0  # sampled tokens over the episode
    prefilled: int = 0  # prompt tokens over the episode (what the engine had to read)

    @property
    def peak(self) -> int:
        return max(self.context_tokens, default=0)

    def as_dict(self) -> dict:
        return {
            "context_tokens": list(self.context_tokens),
            "peak_context_tokens": self.peak,
            "generated_tokens": self.generated,
            "prefilled_tokens": self.prefilled,
        }


@dataclass
class EpisodeState:
    """What an agent carries through one episode (from `Agent.start`): the task, the recorded contexts, the
    memory, the last turn's completion and observation, and counters for turns, parse failures and format errors."""

    task: str  # the env's reset observation (one or N numbered questions)
    tools: dict[str, str]  # tool name -> description, from the env's reset info
    prefix: list[int] = field(default_factory=list)  # fixed prompt ids of the episode (task + instructions)
    contexts: list[Context] = field(default_factory=list)
    memory: str = ""  # MemSearcher memory / MEM1 internal state, as text (for logs and prompts)
    last_completion: list[int] = field(default_factory=list)  # previous turn's sampled ids
    last_observation: str = ""
    turn: int = 0
    parse_failures: int = 0
    format_errors: int = 0
    stats: TokenStats = field(default_factory=TokenStats)


def tool_lines(tools: dict[str, str]) -> str:
    return "\n".join(f"- <{name}>...</{name}>: {desc}" for name, desc in tools.items())


class Agent(ABC):
    """Base class: subclasses define the prompt layout (`context_ids`) and what they carry forward."""

    name: str = "agent"
    memory_tag: str | None = None  # tag of the memory block the model writes each turn

    def __init__(self, tokenizer, *, max_observation_tokens: int, memory_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_observation_tokens = max_observation_tokens
        self.memory_tokens = memory_tokens

    # ----------------------------------------------------------------- per-episode protocol
    def start(self, observation: str, info: dict) -> EpisodeState:
        return EpisodeState(task=observation, tools=dict(info.get("tools", {})))

    @abstractmethod
    def context_ids(self, state: EpisodeState) -> list[int]:
        """Token ids of this turn's prompt."""

    def parse(self, text: str, state: EpisodeState) -> Parsed:
        parsed = parse_output(text, list(state.tools), self.memory_tag)
        state.parse_failures += not parsed.ok
        state.format_errors += not (parsed.ok and (self.memory_tag is None or parsed.memory is not None))
        return parsed

    def update(self, state: EpisodeState, prompt: list[int], gen: Generation, parsed: Parsed,
               observation: str | None) -> None:
        """Record the turn (prompt + sampled ids) and carry memory forward; observation None = episode over."""
        state.stats.context_tokens.append(len(prompt) + len(gen.token_ids))
        state.stats.generated += len(gen.token_ids)
        state.stats.prefilled += len(prompt)
        self.record(state, prompt, gen)
        if parsed.memory is not None:
            state.memory = self.bound_memory(parsed.memory)
        state.last_completion = list(gen.token_ids)
        state.last_observation = observation or ""
        state.turn += 1

    def record(self, state: EpisodeState, prompt: list[int], gen: Generation) -> None:
        """Memory agents: each turn is its own context (the prompt is masked, the completion trained)."""
        ctx = Context(list(prompt), [0] * len(prompt), [0.0] * len(prompt), gen.weight_version)
        ctx.extend(gen.token_ids, sampled=True, logprobs=gen.logprobs)
        state.contexts.append(ctx)

    def stop_strings(self, state: EpisodeState) -> tuple[str, ...]:
        return tuple(f"</{name}>" for name in [*state.tools, "answer"])

    # ----------------------------------------------------------------- formats
    @abstractmethod
    def gold_completion(self, note: str, action: str) -> str:
        """The completion text an ideal model writes for an oracle step (for the SFT warm start)."""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat_ids(self, system: str, user: str) -> list[int]:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        out = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    def observation_ids(self, observation: str) -> list[int]:
        """The observation as tokens between two turns, cut to `max_observation_tokens`."""
        ids = self.encode("\n" + observation.strip() + "\n")
        if len(ids) <= self.max_observation_tokens:
            return ids
        tail = self.encode(" ...</information>\n")
        return ids[: max(0, self.max_observation_tokens - len(tail))] + tail

    def bound_memory(self, memory: str) -> str:
        """Memory beyond `memory_tokens` is cut (token level) so the next context stays bounded."""
        ids = self.encode(memory)
        return memory if len(ids) <= self.memory_tokens else self.tokenizer.decode(ids[: self.memory_tokens])
