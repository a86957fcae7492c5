"""Agents: how an episode becomes per-turn model contexts (MEM1, MemSearcher, full context)."""

from memrl.agents.backends import Generation, HFBackend, SamplingConfig, VLLMBackend
from memrl.agents.base import Agent, EpisodeState, TokenStats
from memrl.agents.episode import (
    StreamingPolicy,
    backend_policy,
    oracle_policy,
    run_episodes,
    sampling_seed,
    streaming_policy,
)
from memrl.agents.full_context import FullContextAgent
from memrl.agents.mem1 import Mem1Agent
from memrl.agents.memsearcher import MemSearcherAgent
from memrl.agents.parsing import Parsed, parse_output
from memrl.registry import AGENTS, accepted_kwargs, unknown_kwargs


def make_agent(tokenizer, section) -> Agent:
    """Build the agent of a recipe's `agent` section (read by keyword: name, max_observation_tokens, memory_tokens,
    and the agent's own settings, `section.settings()`): `name` is resolved in `memrl.registry.AGENTS` (built-in,
    registered by a plugin, or 'module:Class'); a setting the agent's constructor does not take is an error that
    names it and the ones it takes."""
    cls = AGENTS.get(section.name)
    settings = section.settings() if hasattr(section, "settings") else {}
    unknown = unknown_kwargs(cls, settings)
    if unknown:
        raise ValueError(f"agent {section.name!r} does not take {unknown}; its settings: "
                         f"{', '.join(accepted_kwargs(cls)) or 'none'}")
    return cls(tokenizer, max_observation_tokens=section.max_observation_tokens, memory_tokens=section.memory_tokens,
               **settings)


__all__ = [
    "AGENTS", "Agent", "EpisodeState", "FullContextAgent", "Generation", "HFBackend", "Mem1Agent",
    "MemSearcherAgent", "Parsed", "SamplingConfig", "TokenStats", "VLLMBackend", "backend_policy",
    "make_agent", "oracle_policy", "parse_output", "run_episodes", "sampling_seed", "StreamingPolicy", "streaming_policy",
]
