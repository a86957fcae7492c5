"""Bounded staleness: stale contexts are trained with decoupled PPO (ratio against the learner's weights before
the update, policy-gradient term times the truncated importance weight pi_prox / pi_behav), each context with its own
behaviour log-probs; fresh contexts are trained as before, so staleness 0 is today's update."""

from __future__ import annotations

import math

import pytest
import torch

from memrl.records import Context, Trajectory
from memrl.rl import losses
from memrl.rl.learner import Learner
from memrl.rl.step import VersionMismatch, check_versions
from memrl.testing import float_tolerance, learner_sections


def test_truncated_is_weights_on_a_hand_example():
    prox, behav = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -2.0])
    w, stats = losses.truncated_is_weights(prox, behav, clip=2.0)
    assert torch.allclose(w, torch.tensor([math.exp(0.5), math.exp(-1.0), 2.0]))  # exp(1.5) = 4.48 truncated at 2
    assert stats == pytest.approx({"offpolicy_tokens": 3.0, "offpolicy_clipped": 1.0,
                                   "offpolicy_ratio": math.exp(0.5) + math.exp(-1.0) + math.exp(1.5)})
    out = losses.finish_stats({"tokens": 10.0, **stats})
    assert out["offpolicy_clip_frac"] == pytest.approx(1 / 3) and out["offpolicy_tokens"] == 3.0
    assert out["offpolicy_ratio_mean"] == pytest.approx((math.exp(0.5) + math.exp(-1.0) + math.exp(1.5)) / 3)


def test_versions_within_the_staleness_bound_pass_and_older_ones_name_the_key():
    def traj(*versions):
        ctxs = [Context([1, 2, 3], [0, 1, 1], [0.0, -1.0, -1.0], v) for v in versions]
        return Trajectory(ctxs, reward=1.0, weight_version=versions[-1])

    check_versions([traj(4, 5)], version=5, max_staleness=1)
    with pytest.raises(VersionMismatch, match=r"version\(s\) \[4\].*synchronous"):
        check_versions([traj(4, 5)], version=5)
    with pytest.raises(VersionMismatch, match=r"version\(s\) \[3\].*algorithm.max_staleness allows versions 4..5"):
        check_versions([traj(3, 5)], version=5, max_staleness=1)
    assert traj(4, 5).context_versions() == [4, 5]
    assert Trajectory([Context([1, 2], [0, 1], [0.0, -1.0])], 0.0, weight_version=7).context_versions() == [7]


def _two_version_trajectory(vocab: int) -> Trajectory:
    g = torch.Generator().manual_seed(3)
    ctxs = []
    for version, n in ((4, 17), (5, 21)):  # the stale context is the shorter: micro-batching reorders them
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        mask = [0] * 6 + [1] * (n - 6)
        ctxs.append(Context(ids, mask, [0.0] * n, version))
    return Trajectory(ctxs, reward=1.0, weight_version=5, advantage=0.8)


def test_each_context_of_a_two_version_trajectory_uses_its_own_behaviour_logprobs():
    """Context 0 (11 loss tokens) was sampled at version 4, context 1 (15) at version 5; the learner is at 5.
    Each context's behaviour log-probs are set to the current policy's minus +1.0 / -0.6 on alternate loss
    tokens, so every ratio is known by hand: pi_prox / pi_behav = e (truncated at is_clip 2) or e^-0.6.
    Context 0's tokens have ratio 1 against the proximal policy and pg times that importance weight; context
    1's tokens have the plain PPO ratio against their behaviour log-probs, e (clipped at 1.28) or e^-0.6."""
    clip, adv, coef = 2.0, 0.8, 0.01
    learner = Learner("tiny:0", **learner_sections(zero_stage=2, lr=1e-3, max_staleness=1, is_clip=clip,
                                                   loss_agg="token_mean", clip_low=0.2, clip_high=0.28,
                                                   entropy_coef=coef, old_logprobs="engine"), seed=0)
    traj = _two_version_trajectory(learner.module.config.vocab_size)
    for c in traj.contexts:  # the current policy's log-probs from a plain forward (not the learner's batches)
        ids = torch.tensor([c.token_ids], device=learner.device.torch_device)
        with torch.no_grad():
            now = losses.token_logprobs(learner.module(input_ids=ids).logits, ids, learner.temperature)[0].cpu()
        k = 0
        for t, m in enumerate(c.loss_mask):
            if m:
                c.logprobs[t] = float(now[t]) - (1.0 if k % 2 == 0 else -0.6)
                k += 1
    assert [sum(c.loss_mask) for c in traj.contexts] == [11, 15]  # 6 + 5 and 8 + 7 tokens at +1.0 / -0.6

    low = math.exp(-0.6)  # 0.5488: below 1 - clip_low, but A > 0 clips only above 1 + clip_high
    stale_pg = -adv * (6 * 2.0 + 5 * low)  # ratio 1 before the update; pg times min(e, 2) or e^-0.6
    fresh_pg = 8 * (-adv * 1.28) + 7 * (-adv * low)  # ratio e clipped at 1.28; e^-0.6 not clipped
    expected = (stale_pg + fresh_pg) / 26  # token_mean over 26 loss tokens

    metrics = learner.train_step([traj], version=5)
    tol = max(1e-4, 10 * float_tolerance())  # our forward and the learner's batches differ in summation order
    assert metrics["pg_loss"] == pytest.approx(expected, rel=tol)
    # the importance weight is on the pg term only: the entropy bonus of stale tokens is not reweighted
    assert metrics["loss"] == pytest.approx(metrics["pg_loss"] - coef * metrics["entropy"], rel=1e-5, abs=1e-7)
    assert metrics["offpolicy_tokens"] == 11.0
    assert metrics["offpolicy_clip_frac"] == pytest.approx(6 / 11)
    assert metrics["offpolicy_ratio_mean"] == pytest.approx((6 * math.e + 5 * low) / 11, rel=tol)
    assert metrics["staleness_0"] == 1.0 and metrics["staleness_1"] == 1.0
    # trained as if fresh (plain PPO against its own behaviour log-probs), context 0 would give another loss
    uncorrected = (6 * (-adv * 1.28) + 5 * (-adv * low) + fresh_pg) / 26
    assert abs(uncorrected - expected) > 1e-2


def test_with_no_stale_context_the_update_is_the_synchronous_one():
    """max_staleness 1 on fresh trajectories changes nothing: same loss, gradient norm and weights as 0."""
    from tests.rl.test_learner import _trajs

    results = []
    for staleness in (0, 1):
        learner = Learner("tiny:0", **learner_sections(zero_stage=2, lr=1e-3, max_staleness=staleness,
                                                       old_logprobs="engine"), seed=0)
        trajs = _trajs(0)
        for t in trajs:
            t.weight_version = 3
        metrics = learner.train_step(trajs, version=3)
        results.append((metrics, learner.state_dict()))
    (m0, w0), (m1, w1) = results
    for key in ("loss", "pg_loss", "grad_norm", "approx_kl", "clip_frac"):
        assert m0[key] == m1[key], key
    assert "offpolicy_tokens" not in m1 and m1["staleness_0"] == 6.0
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
