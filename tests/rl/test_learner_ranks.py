"""Learner ranks as Ray actors: 2 gloo ranks give the update of 1 rank on the same minibatch (ZeRO-2 and 3),
and a minibatch is split into whole trajectories balanced by tokens with its global weights."""

from __future__ import annotations

import pytest
import torch

from memrl.records import Context, Trajectory
from memrl.rl.batching import minibatch, split

pytestmark = pytest.mark.slow


def _trajs() -> list[Trajectory]:
    g = torch.Generator().manual_seed(0)
    out = []
    for adv, lengths in ((1.0, (14, 23, 9)), (-0.5, (30, 11)), (2.0, (7, 19, 12)), (-1.5, (40,)), (0.5, (9, 9))):
        ctxs = []
        for n in lengths:
            ids = torch.randint(3, 250, (n,), generator=g).tolist()
            mask = [0] * 4 + [1] * (n - 4)
            noisy = (-5.5 + 0.3 * torch.randn(n, generator=g)).tolist()
            ctxs.append(Context(ids, mask, [lp if m else 0.0 for lp, m in zip(noisy, mask, strict=True)]))
        out.append(Trajectory(ctxs, reward=adv, advantage=adv))
    return out


def test_split_keeps_trajectories_whole_balances_tokens_and_keeps_global_weights():
    part = minibatch(_trajs(), "traj_mean_token_mean", None)
    shares = split(part, 2)
    assert sorted(t for s in shares for t in s.traj) == sorted(part.traj)
    assert not set(shares[0].traj) & set(shares[1].traj)  # each trajectory on one rank
    per_traj = {t: sum(len(c) for c, tt in zip(part.contexts, part.traj, strict=True) if tt == t) for t in part.traj}
    assert per_traj == {0: 46, 1: 41, 2: 38, 3: 40, 4: 18}
    assert sorted(s.tokens for s in shares) == [84, 99]  # longest first to the lighter rank: {46, 38}, {41, 40, 18}
    total = sum(float(w.sum()) for s in shares for w in s.weights)
    assert abs(total - 1.0) < 1e-6  # the shares' weights are the whole minibatch's (each trajectory weighs 1/5)
    part.is_weights = [torch.full((len(c),), float(i)) for i, c in enumerate(part.contexts)]  # tagged by context
    index = {id(c): i for i, c in enumerate(part.contexts)}
    for s in split(part, 2):  # every context keeps its own importance weights, advantage and version
        for c, iw, a, v in zip(s.contexts, s.is_weights, s.adv, s.versions, strict=True):
            i = index[id(c)]
            assert torch.equal(iw, torch.full((len(c),), float(i))) and a == part.adv[i] and v == part.versions[i]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_gloo_ranks_make_the_update_of_one_rank(zero_stage, ray_local):
    from memrl.recipes.schema import ResourcesCfg
    from memrl.rl.learner_group import LearnerGroup
    from memrl.testing import learner_sections

    results = {}
    for ranks in (1, 2):
        # adam_eps 1e-4: Adam's first step is lr * g / (|g| + eps); with the default 1e-8 it is ~lr * sign(g), so
        # gradient entries at float-noise level (~1e-9, e.g. absent tokens' embeddings) would move by +-lr at
        # random and hide what is compared: that the summed gradients are the same.
        # with a KL term: under ZeRO-3 the reference is sharded over the ranks like the policy
        sections = learner_sections(zero_stage=zero_stage, lr=1e-3, adam_eps=1e-4, ranks=ranks, micro_batch_tokens=64,
                                    kl_coef=0.05, entropy_coef=0.01, loss_agg="seq_mean_token_mean")
        group = LearnerGroup("tiny:0", **sections, resources=ResourcesCfg(cpus_per_learner_rank=1), seed=0)
        try:
            before = group.state_dict()
            held = ray_local.get([r.reference_elements.remote() for r in group.ranks])
            full = sum(v.numel() for v in before.values())
            if zero_stage == 3:  # each parameter cut in `ranks` (the last piece padded)
                assert all(full / ranks <= h <= full / ranks + len(before) for h in held), (held, full)
            else:
                assert held == [full] * ranks
            group.train_step(_trajs())  # policy = reference: the KL term is 0 at the first step
            metrics = group.train_step(_trajs())  # ... and not at the second: the sharded reference's forward counts
            results[ranks] = metrics, group.state_dict()
            assert group.steps == 2 and metrics["kl"] > 0
            group.reset_reference()  # the SFT -> GRPO handoff: every rank copies the policy into its shard
            assert abs(group.train_step(_trajs())["kl"]) < 1e-6
        finally:
            group.close()
    (m1, w1), (m2, w2) = results[1], results[2]
    for key in ("pg_loss", "loss", "entropy", "grad_norm", "approx_kl", "kl", "train_tokens", "contexts"):
        assert abs(m1[key] - m2[key]) <= 1e-5 * max(1.0, abs(m1[key])), (key, m1[key], m2[key])
    assert m1["skipped"] == m2["skipped"] == 0.0 and m1["grad_norm"] > 0
    moved = max(float((w1[k] - before[k]).abs().max()) for k in w1)
    assert moved > 1e-4  # the step did something
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 1e-5
