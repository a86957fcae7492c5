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

AGENTS = {a.name: a for a in (Mem1Agent, MemSearcherAgent, FullContextAgent)}


def make_agent(tokenizer, section) -> Agent:
    """Build the agent of a recipe's `agent` section (read by keyword: name, max_observation_tokens,
    memory_tokens); the names are the keys of `AGENTS`, which the recipe schema allows."""
    if section.name not in AGENTS:
        raise ValueError(f"unknown agent {section.name!r}; choose one of {sorted(AGENTS)}")
    return AGENTS[section.name](tokenizer, max_observation_tokens=section.max_observation_tokens,
                                memory_tokens=section.memory_tokens)


__all__ = [
    "AGENTS", "Agent", "EpisodeState", "FullContextAgent", "Generation", "HFBackend", "Mem1Agent",
    "MemSearcherAgent", "Parsed", "SamplingConfig", "TokenStats", "VLLMBackend", "backend_policy",
    "make_agent", "oracle_policy", "parse_output", "run_episodes", "sampling_seed", "StreamingPolicy", "streaming_policy",
]
