"""Bounded staleness: stale contexts are trained with decoupled PPO (ratio against the learner's weights before
the update, loss weight times the truncated importance weight pi_prox / pi_behav), each context with its own
behaviour log-probs; fresh contexts are trained as before, so staleness 0 is today's update."""

from __future__ import annotations

import math

import pytest
import torch

from memrl.records import Context, Trajectory
from memrl.rl import losses
from memrl.rl.learner import Learner, VersionMismatch, check_versions
from memrl.testing import learner_sections


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
    """Context 0 was sampled at version 4, context 1 at version 5; the learner is at 5. By hand: context 0's
    tokens have ratio 1 against the proximal policy (the learner's own weights) and weight min(pi_prox /
    pi_behav, is_clip); context 1's tokens have the plain PPO ratio against their behaviour log-probs."""
    clip, adv = 2.0, 0.8
    learner = Learner("tiny:0", **learner_sections(zero_stage=2, lr=1e-3, max_staleness=1, is_clip=clip,
                                                   loss_agg="token_mean", clip_low=0.2, clip_high=0.28), seed=0)
    traj = _two_version_trajectory(learner.module.config.vocab_size)
    now = learner.context_logprobs(traj.contexts)  # the current policy's log-probs of every loss token
    g = torch.Generator().manual_seed(5)
    for c, lp in zip(traj.contexts, now, strict=True):  # behaviour log-probs near the current ones, both sides of clip
        noise = torch.where(torch.rand(len(c), generator=g) < 0.5, 1.0, -0.6) * torch.tensor(c.loss_mask)
        c.logprobs[:] = [float(x) for x in (lp - noise) * torch.tensor(c.loss_mask)]

    loss_tokens = [torch.tensor(c.loss_mask, dtype=torch.bool) for c in traj.contexts]
    m = sum(int(t.sum()) for t in loss_tokens)
    lp0, b0 = now[0][loss_tokens[0]], torch.tensor(traj.contexts[0].logprobs)[loss_tokens[0]]
    lp1, b1 = now[1][loss_tokens[1]], torch.tensor(traj.contexts[1].logprobs)[loss_tokens[1]]
    is_w = torch.exp(lp0 - b0).clamp(max=clip)
    stale_pg = (-adv * 1.0 * is_w).sum()  # ratio pi_theta / pi_prox = 1 before the update: never clipped
    r1 = torch.exp(lp1 - b1)
    fresh_pg = torch.maximum(-adv * r1, -adv * r1.clamp(0.8, 1.28)).sum()
    expected = float((stale_pg + fresh_pg) / m)

    metrics = learner.train_step([traj], version=5)
    assert metrics["pg_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert metrics["offpolicy_tokens"] == float(loss_tokens[0].sum())
    assert metrics["offpolicy_clip_frac"] == pytest.approx(float((torch.exp(lp0 - b0) > clip).float().mean()))
    assert 0 < metrics["offpolicy_clip_frac"] < 1
    assert metrics["staleness_0"] == 1.0 and metrics["staleness_1"] == 1.0
    # the behaviour log-probs of context 0 alone would give another loss: its own were used, not the trajectory's
    wrong = float(((-adv * torch.exp(lp0 - b0).clamp(0.8, 1.28)).sum() + fresh_pg) / m)
    assert abs(wrong - expected) > 1e-3


def test_with_no_stale_context_the_update_is_the_synchronous_one():
    """max_staleness 1 on fresh trajectories changes nothing: same loss, gradient norm and weights as 0."""
    from tests.rl.test_learner import _trajs

    results = []
    for staleness in (0, 1):
        learner = Learner("tiny:0", **learner_sections(zero_stage=2, lr=1e-3, max_staleness=staleness), seed=0)
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
