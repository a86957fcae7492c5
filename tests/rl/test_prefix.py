"""The shared-prefix forward (rl/prefix.py) is the full forward computed on fewer tokens: same logits, same gradients."""

from __future__ import annotations

import pytest
import torch

from memrl.rl.losses import predicting_positions
from memrl.rl.prefix import decoder_states, logits_at, shared_prefix


def _rows(prefix: int, tails: list[int], seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rows that share `prefix` random tokens, then rows of their own lengths (right-padded with 0); the last 3
    real tokens of each row are loss tokens. Returns (inputs, sel)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, 250, (prefix,), generator=g)
    L = prefix + max(tails)
    ids, attn, mask = torch.zeros(len(tails), L, dtype=torch.long), torch.zeros(len(tails), L, dtype=torch.long), \
        torch.zeros(len(tails), L)
    for r, n in enumerate(tails):
        ids[r, :prefix], ids[r, prefix:prefix + n] = head, torch.randint(3, 250, (n,), generator=g)
        attn[r, :prefix + n] = 1
        mask[r, prefix + n - 3:prefix + n] = 1
    return {"input_ids": ids, "attention_mask": attn}, predicting_positions(mask)


def test_shared_prefix_is_the_common_real_prefix_before_any_predicting_position():
    inputs, sel = _rows(20, [7, 4, 9])
    assert shared_prefix(inputs["input_ids"], inputs["attention_mask"], sel) == 20
    assert shared_prefix(inputs["input_ids"], inputs["attention_mask"], sel, minimum=21) == 0
    # a predicting position inside the common prefix caps it there
    sel2 = sel.clone()
    sel2[1, 12] = True
    assert shared_prefix(inputs["input_ids"], inputs["attention_mask"], sel2, minimum=1) == 12
    assert shared_prefix(inputs["input_ids"], inputs["attention_mask"], sel2) == 0  # under MIN_PREFIX: not shared
    # one row: nothing to share; identical rows keep one token for the rest
    assert shared_prefix(inputs["input_ids"][:1], inputs["attention_mask"][:1], sel[:1]) == 0
    same = inputs["input_ids"][:1].repeat(2, 1)
    assert shared_prefix(same, torch.ones_like(same), torch.zeros_like(same, dtype=torch.bool)) == same.shape[1] - 1


@pytest.mark.parametrize("tails", [[7, 4, 9], [5, 5]])
def test_logits_and_gradients_equal_the_full_forward(tails):
    from memrl.models import load_model

    inputs, sel = _rows(24, tails)
    grads = []
    outs = []
    for share in (False, True):
        model = load_model("tiny:0", dtype=torch.float32)
        model.train()
        logits = logits_at(model, inputs, sel, share=share)
        w = torch.linspace(-1, 1, logits.numel()).view_as(logits)  # a loss that weighs every logit differently
        (logits * w).sum().backward()
        outs.append(logits.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    full = load_model("tiny:0", dtype=torch.float32)(**inputs).logits.detach()
    torch.testing.assert_close(outs[0], full[sel], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
    # the embeddings of the prefix tokens get gradient through the shared forward, from every row
    assert grads[1]["model.embed_tokens.weight"][inputs["input_ids"][0, :24]].abs().sum() > 0


def test_the_shared_forward_runs_the_prefix_once():
    """It is a saving, not only the same result: the decoder sees P + R x (L - P) tokens instead of R x L."""
    from memrl.models import load_model

    model = load_model("tiny:0", dtype=torch.float32).eval()
    inputs, sel = _rows(30, [6, 6, 6, 6])
    seen: list[tuple[int, ...]] = []
    decoder = model.get_decoder()
    hook = decoder.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        P = shared_prefix(inputs["input_ids"], inputs["attention_mask"], sel)
        states = decoder_states(decoder, inputs, P)
    hook.remove()
    assert P == 30 and seen == [(1, 30), (4, 6)] and states.shape[:2] == (4, 6)
