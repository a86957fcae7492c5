"""Policy losses (rl/policy_losses.py): GSPO's sequence-level ratio against a hand computation, its equality
with token-level PPO when every context has one token, and a GSPO step of the tiny model's learner whose loss
is recomputed by hand from the learner's own log-probs."""

import math

import pytest
import torch

from memrl.records import Context, Trajectory
from memrl.rl import losses as L
from memrl.rl.policy_losses import gspo_policy_loss, ppo_policy_loss


def test_gspo_by_hand():
    # context 0: two tokens, log-ratios 0.2 and -0.4 -> s0 = exp(-0.1), inside [0.8, 1.2]: unclipped
    # context 1: one token, log-ratio 0.5 -> s1 = exp(0.5) = 1.649 > 1.2 with A = +1: clipped at 1.2, no gradient
    old = torch.tensor([-1.0, -2.0, -3.0])
    logp = (old + torch.tensor([0.2, -0.4, 0.5])).requires_grad_(True)
    adv, seq, w = torch.tensor([2.0, 2.0, 1.0]), torch.tensor([0, 0, 1]), torch.tensor([0.25, 0.25, 0.5])
    pg, stats = gspo_policy_loss(logp, old, adv, seq, clip_low=0.2, clip_high=0.2)
    s0 = math.exp(-0.1)
    assert pg.tolist() == pytest.approx([-2 * s0, -2 * s0, -1.2], abs=1e-6)
    assert stats["clip_frac"].tolist() == [False, False, True]
    (pg * w).sum().backward()
    # d/dlogp_t of -A * sg[s_i] * exp(logp_t - sg[logp_t]) = -A * s_i (the whole sequence's ratio, per token)
    assert logp.grad.tolist() == pytest.approx([-0.25 * 2 * s0, -0.25 * 2 * s0, 0.0], abs=1e-6)


def test_gspo_equals_ppo_when_every_context_has_one_token():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(12, generator=g) * 3
    base = old + torch.randn(12, generator=g) * 0.4
    adv = torch.randn(12, generator=g)
    seq = torch.arange(12)
    grads = []
    for fn in (ppo_policy_loss, gspo_policy_loss):
        logp = base.clone().requires_grad_(True)
        pg, stats = fn(logp, old, adv, seq, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
        pg.sum().backward()
        grads.append((pg.detach(), logp.grad, stats["clip_frac"]))
    (pa, ga, ca), (pb, gb, cb) = grads
    assert torch.allclose(pa, pb, atol=1e-6) and torch.allclose(ga, gb, atol=1e-6) and torch.equal(ca, cb)


def test_the_objective_takes_its_policy_term_from_the_registry():
    old, logp = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-0.8, -2.4, -2.5])
    adv, seq, w = torch.tensor([2.0, 2.0, 1.0]), torch.tensor([0, 0, 1]), torch.tensor([0.25, 0.25, 0.5])
    pg, _ = gspo_policy_loss(logp, old, adv, seq, clip_low=0.2, clip_high=0.2)
    loss, stats = L.objective(logp, old, adv, w, clip_low=0.2, clip_high=0.2, seq=seq, policy_loss="gspo")
    assert float(loss) == pytest.approx(float((pg * w).sum())) and stats["clip_frac"] == 1.0
    with pytest.raises(ValueError, match="unknown policy loss 'gpso': did you mean 'gspo'"):
        L.objective(logp, old, adv, w, clip_low=0.2, clip_high=0.2, seq=seq, policy_loss="gpso")


def _trajs() -> list[Trajectory]:
    g = torch.Generator().manual_seed(7)
    out = []
    for adv in (1.0, -1.0, 0.5):
        ctxs = []
        for n in (12, 17):
            ids = torch.randint(3, 250, (n,), generator=g).tolist()
            mask = [0] * 5 + [1] * (n - 5)
            ctxs.append(Context(ids, mask, [-5.55 if m else 0.0 for m in mask]))
        out.append(Trajectory(ctxs, reward=adv, advantage=adv))
    return out


@pytest.mark.slow
def test_a_gspo_step_of_the_learner_matches_the_hand_computation():
    """seq_mean_token_mean weights a context's tokens 1 / (n_c * C), so the step's pg_loss is the mean over the
    C contexts of max(-A s_c, -A clip(s_c)) with s_c = exp(mean over its loss tokens of logp - old_logp)."""
    from memrl.rl.learner import Learner
    from memrl.testing import float_tolerance, learner_sections, visible_lr

    clip = 0.05  # the ratio against the engine's log-probs, also on GPU (where old_logprobs auto is recompute)
    learner = Learner("tiny:0", **learner_sections(policy_loss="gspo", clip_low=clip, clip_high=clip,
                                                   loss_agg="seq_mean_token_mean", lr=visible_lr(),
                                                   old_logprobs="engine"), seed=0)
    trajs = _trajs()
    contexts = [(c, t.advantage) for t in trajs for c in t.contexts]
    now = learner.context_logprobs([c for c, _ in contexts])
    per_context = []
    for (c, a), lp in zip(contexts, now, strict=True):
        at = torch.tensor(c.loss_mask, dtype=torch.bool)
        at[0] = False
        s = math.exp(float((lp[at] - torch.tensor(c.logprobs)[at]).mean()))
        per_context.append(max(-a * s, -a * min(max(s, 1 - clip), 1 + clip)))
    want = sum(per_context) / len(per_context)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    m = learner.train_step(trajs)
    assert m["skipped"] == 0.0 and m["contexts"] == 6
    assert m["pg_loss"] == pytest.approx(want, rel=max(1e-4, float_tolerance()), abs=1e-6)
    assert 0 < m["clip_frac"] < 1  # some contexts clipped as a whole, others not
    after = learner.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trains
