"""MEM1 packed mode in the learner (`learner.packed`): one row per trajectory gives the padded layout's
loss, gradients and update, for GRPO (with KL and entropy terms) and SFT."""

import pytest
import torch

from memrl.records import Context, Trajectory
from memrl.rl.batching import packed_batch, padded_batch
from memrl.rl.learner import Learner
from memrl.testing import float_tolerance, learner_sections
from tests.rl.test_learner import _first_step_grads

# (advantage, context lengths); every trajectory has 2-3 contexts of different lengths
SHAPES = ((1.0, (14, 23, 9)), (-0.5, (30, 11)), (2.0, (7, 19, 12)))


def _trajs(seed: int = 0) -> list[Trajectory]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for adv, lengths in SHAPES:
        ctxs = []
        for n in lengths:
            ids = torch.randint(3, 250, (n,), generator=g).tolist()
            mask = [0] * 4 + [1] * (n - 4)
            noisy = (-5.5 + 0.3 * torch.randn(n, generator=g)).tolist()  # near the tiny model's ~ -5.6: some ratios clip
            ctxs.append(Context(ids, mask, [lp if m else 0.0 for lp, m in zip(noisy, mask, strict=True)]))
        out.append(Trajectory(ctxs, reward=adv, advantage=adv))
    out[1].contexts.append(Context([5, 6, 7], [0, 0, 0], [0.0] * 3))  # no generated token: dropped in both layouts
    first = out[2].contexts[0]
    first.loss_mask[0] = 1  # a masked first token (no prefix: log-prob 0 by convention) must not read the previous context
    return out


def _step(packed: bool, sft: bool = False, perturb_ref: bool = False, **cfg):
    """One train_step from fresh, identical weights: (metrics, summed gradients before clipping, params after)."""
    learner = Learner("tiny:0", **learner_sections(**{"zero_stage": 0, "lr": 1e-5, "packed": packed, **cfg}), seed=0)
    if perturb_ref:  # the same noise in both layouts, so the KL to the reference is not 0 on the first step
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in learner.ref.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g).to(p.device, p.dtype))  # on the params' device
    grads, _ = _first_step_grads(learner)
    metrics = learner.train_step(_trajs(), sft=sft)
    assert metrics["skipped"] == 0.0
    return metrics, grads, learner.state_dict()


def _assert_same_step(a, b, keys: tuple[str, ...]) -> None:
    (ma, ga, pa), (mb, gb, pb) = a, b
    tol = float_tolerance()  # fp32 on CPU; bf16 on CUDA sums in another order with 2^-8 resolution
    for k in keys:
        assert abs(ma[k] - mb[k]) <= tol * max(1e-3, abs(ma[k])), (k, ma[k], mb[k])
    assert ma["train_tokens"] == mb["train_tokens"] and ma["contexts"] == mb["contexts"] == 8
    grad_bound = 1e-6 if tol < 1e-4 else tol  # absolute; bf16 on an H200 measured 2.4e-4 and 4.9e-4
    assert max(float((ga[k] - gb[k]).abs().max()) for k in ga) < grad_bound
    assert max(float(ga[k].abs().max()) for k in ga) > 1e-2  # the gradients compared are not all ~0
    # Adam's first step is lr * g / (|g| + eps) (lr = 1e-5): where the gradient is well above float noise the
    # two updates agree closely; on noise-level entries (~5%, e.g. embeddings of absent tokens) they can
    # differ by up to 2 lr.
    dp = torch.cat([(pa[k] - pb[k]).abs().flatten() for k in ga])
    g = torch.cat([ga[k].abs().flatten() for k in ga])
    if tol < 1e-4:
        assert float(dp[g > 1e-6].max()) < 1e-7 and float(dp.max()) <= 2e-5
    else:  # bf16 weights: the fp32 master copies (2 lr apart at most) round to one bf16 spacing apart at most
        top = torch.cat([torch.maximum(pa[k].abs(), pb[k].abs()).flatten().float() for k in ga])
        assert bool((dp.float() <= top * 2.0**-7 + 2e-5).all())


def test_packed_batch_lays_out_the_same_per_token_tensors_as_the_padded_batch():
    trajs = _trajs()[:2]
    rows = [[c for c in t.contexts if c.num_generated] for t in trajs]
    weights = [[torch.full((len(c),), 0.1 * (i + 1)) for i, c in enumerate(row)] for row in rows]
    advs = [[t.advantage] * len(row) for t, row in zip(trajs, rows, strict=True)]
    is_ws = [[torch.linspace(0.5, 2.0, len(c)) for c in row] for row in rows]
    packed = packed_batch(rows, weights, advs, pad_id=0, dtype=torch.float32, is_weights=is_ws)
    flat = [[c] for row in rows for c in row]
    padded = padded_batch(flat, [[w] for ws in weights for w in ws], [[a] for a_s in advs for a in a_s], 0,
                          torch.float32, is_weights=[[w] for ws in is_ws for w in ws])
    L = max(sum(len(c) for c in row) for row in rows)  # 46: rows padded to the longest pack
    assert packed.input_ids.shape == (2, L) and packed.inputs["attention_mask"].shape == (2, 1, L, L)
    r = 0
    for p_row, row in enumerate(rows):
        s = 0
        for c, is_w in zip(row, is_ws[p_row], strict=True):
            e = s + len(c)
            assert packed.inputs["position_ids"][p_row, s:e].tolist() == list(range(len(c)))
            assert torch.equal(packed.input_ids[p_row, s:e], padded.input_ids[r, :len(c)])
            for name in ("keep", "mask", "old_logp", "weights", "adv", "is_w"):
                assert torch.equal(getattr(packed, name)[p_row, s:e], getattr(padded, name)[r, :len(c)]), name
            assert torch.equal(packed.is_w[p_row, s:e], is_w)
            r, s = r + 1, e
        for name in ("keep", "mask", "weights", "adv", "is_w"):  # padding carries nothing
            assert not getattr(packed, name)[p_row, s:].any(), name
        allowed = packed.inputs["attention_mask"][p_row, 0] == 0
        pad = torch.arange(s, L)
        assert torch.equal(allowed[pad][:, pad], torch.eye(L - s, dtype=torch.bool))  # a pad token sees only itself
        assert not allowed[:s, s:].any() and not allowed[s:, :s].any()


@pytest.mark.parametrize("budget", [10_000, 64])  # one micro-batch; several (one pack each)
def test_packed_grpo_step_equals_unpacked(budget):
    a = _step(False, micro_batch_tokens=budget)
    b = _step(True, micro_batch_tokens=budget)
    _assert_same_step(a, b, ("pg_loss", "entropy"))


def test_packed_kl_and_entropy_terms_equal_unpacked():
    cfg = dict(kl_coef=0.5, entropy_coef=0.01)
    a = _step(False, perturb_ref=True, **cfg)
    b = _step(True, perturb_ref=True, **cfg)
    assert a[0]["kl"] > 1e-3
    _assert_same_step(a, b, ("pg_loss", "entropy", "kl", "clip_frac", "approx_kl"))


def test_packed_sft_step_equals_unpacked():
    a = _step(False, sft=True)
    b = _step(True, sft=True)
    _assert_same_step(a, b, ("sft_loss",))
