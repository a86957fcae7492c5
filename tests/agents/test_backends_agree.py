"""Greedy decoding through whole multi-turn episodes: the vLLM engine and the HF reference agree."""

import pytest

from memrl.agents import HFBackend, SamplingConfig, backend_policy, make_agent, run_episodes
from memrl.envs.arith import ArithEnv
from memrl.models import load_model
from memrl.recipes.schema import AgentCfg


@pytest.mark.parametrize("agent_name", ["mem1", "memsearcher", "full_context"])
def test_vllm_and_hf_greedy_episodes_are_token_identical(agent_name, tiny_dir, tiny_tokenizer, vllm_tiny):
    agent = make_agent(tiny_tokenizer, AgentCfg(name=agent_name, max_observation_tokens=64, memory_tokens=32))
    hf = HFBackend(load_model(tiny_dir), tiny_tokenizer)
    cfg = SamplingConfig(max_tokens=12, temperature=0.0)
    seeds = [0, 1, 2]
    runs = [run_episodes(agent, [ArithEnv(max_turns=3) for _ in seeds], seeds, backend_policy(b), cfg)
            for b in (hf, vllm_tiny)]
    for ref, fast in zip(*runs, strict=True):
        assert ref.info["turns"] == fast.info["turns"] == 3  # the random model never answers: all turns used
        assert [c.token_ids for c in ref.contexts] == [c.token_ids for c in fast.contexts]
        assert [c.loss_mask for c in ref.contexts] == [c.loss_mask for c in fast.contexts]
        for a, b in zip(ref.contexts, fast.contexts, strict=True):
            sampled = [(x, y) for x, y, m in zip(a.logprobs, b.logprobs, a.loss_mask, strict=True) if m]
            assert max(abs(x - y) for x, y in sampled) < 1e-3
