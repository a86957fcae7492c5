"""Greedy decoding through whole multi-turn episodes: the vLLM engine and the HF reference agree."""

import pytest
import torch

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


def test_the_repetition_penalty_is_the_same_in_both_backends(tiny_dir, tiny_tokenizer, vllm_tiny):
    """Greedy with a strong repetition penalty: the HF reference (`_penalized`) and vLLM pick the same tokens with
    the same log-probs, and the penalty changes what is picked (checked on the tiny random model)."""
    from memrl.agents.backends import _penalized

    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    assert torch.allclose(_penalized(logits, [0, 1, 1], 2.0), torch.tensor([1.0, -2.0, 0.5, 3.0]))
    hf = HFBackend(load_model(tiny_dir), tiny_tokenizer)
    prompts = [[5, 6, 7, 5, 6, 7, 5, 6], [9, 10, 11, 12]]
    plain, penalized = (SamplingConfig(max_tokens=12, temperature=0.0, repetition_penalty=p) for p in (1.0, 3.0))
    ref, fast = hf.generate(prompts, penalized), vllm_tiny.generate(prompts, penalized)
    assert [g.token_ids for g in ref] == [g.token_ids for g in fast]
    for a, b in zip(ref, fast, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-3
    assert [g.token_ids for g in hf.generate(prompts, plain)] != [g.token_ids for g in ref]
