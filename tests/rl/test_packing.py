"""MEM1 packed mode: one forward over all contexts of a trajectory equals separate per-context forwards."""

from __future__ import annotations

import pytest
import torch

from memrl.models import load_model
from memrl.rl.losses import token_logprobs
from memrl.rl.packing import Packed, block_causal_mask, pack_contexts

LENGTHS = (9, 17, 5)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny:0").eval()  # fp32


@pytest.fixture(scope="module")
def contexts(model):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def separate(model, contexts):
    with torch.no_grad():
        return [token_logprobs(model(input_ids=torch.tensor([c])).logits, torch.tensor([c]))[0] for c in contexts]


def per_context(logits: torch.Tensor, p: Packed) -> list[torch.Tensor]:
    """Log-probs (len_i,) of each context of a packed forward's logits (1, L, V): each segment scored on its
    own, so a context's first token has no prefix (0), as in a separate forward."""
    return [token_logprobs(logits[:, s:e], p.input_ids[:, s:e])[0] for s, e in p.segments]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def test_pack_layout_positions_restart_and_mask_is_block_causal():
    p = pack_contexts([[5, 6], [7, 8, 9]])
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert p.position_ids.tolist() == [[0, 1, 0, 1, 2]]
    assert p.segments == [(0, 2), (2, 5)] and p.lengths == [2, 3]
    assert p.attention_mask.shape == (1, 1, 5, 5) and p.attention_mask.dtype == torch.float32
    allowed = (p.attention_mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert float(p.attention_mask.min()) == torch.finfo(torch.float32).min
    assert torch.equal(block_causal_mask([2, 3], torch.bool)[0, 0].int(), torch.tensor(allowed))
    with pytest.raises(ValueError, match="empty context"):
        pack_contexts([[1], []])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_equal_separate_per_context_forwards(model, contexts, separate, attn):
    model.set_attn_implementation(attn)
    try:
        p = pack_contexts(contexts)
        assert p.position_ids[0].tolist() == [i for n in LENGTHS for i in range(n)]
        with torch.no_grad():
            packed = per_context(model(**p.model_inputs()).logits, p)
    finally:
        model.set_attn_implementation("sdpa")
    assert [len(x) for x in packed] == list(LENGTHS)
    assert max_diff(packed, separate) < 1e-5


def test_boolean_block_mask_works_with_sdpa(model, contexts, separate):
    p = pack_contexts(contexts, dtype=torch.bool)
    with torch.no_grad():
        packed = per_context(model(**p.model_inputs()).logits, p)
    assert max_diff(packed, separate) < 1e-5


def test_packed_gradients_equal_summed_per_context_gradients(model, contexts):
    def grads(loss_fn):
        model.zero_grad()
        loss_fn().backward()
        return torch.cat([q.grad.flatten() for q in model.parameters()])

    p = pack_contexts(contexts)
    g_packed = grads(lambda: sum(lp.sum() for lp in per_context(model(**p.model_inputs()).logits, p)))
    g_sep = grads(lambda: sum(token_logprobs(model(input_ids=torch.tensor([c])).logits, torch.tensor([c])).sum()
                              for c in contexts))
    model.zero_grad()
    assert float((g_packed - g_sep).abs().max()) < 1e-4


def test_naive_packing_without_the_block_mask_gives_different_logprobs(model, contexts, separate):
    """The MEM1 bug: a plain causal mask lets later contexts attend to earlier ones."""
    p = pack_contexts(contexts)
    ones = torch.ones_like(p.input_ids)  # 2D padding mask -> plain causal over the whole pack
    global_pos = torch.arange(p.input_ids.shape[1])[None]  # positions running over the pack (MEM1)
    with torch.no_grad():
        restart = per_context(model(input_ids=p.input_ids, position_ids=p.position_ids, attention_mask=ones).logits, p)
        mem1 = per_context(model(input_ids=p.input_ids, position_ids=global_pos, attention_mask=ones).logits, p)
    for naive in (restart, mem1):
        assert float((naive[0] - separate[0]).abs().max()) < 1e-5  # the first context sees nothing extra
        assert max_diff(naive[1:], separate[1:]) > 1e-3  # later ones see earlier contexts
