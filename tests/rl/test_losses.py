"""Hand-computed checks of every function in memrl.rl.losses (tiny tensors, CPU, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from memrl.rl import losses as L


def close(actual, expected, tol: float = 1e-6) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=tol, rtol=0)


# ------------------------------------------------------------------------------------ advantages

def test_grpo_uses_unbiased_std_and_gives_zero_to_groups_of_one():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0, 2.0, 2.0])
    groups = torch.tensor([3, 3, 3, 3, 9, 4, 4])  # group 9 has one member, group 4 all-equal rewards
    # group 3: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    close(L.grpo_advantages(rewards, groups), [a, -a, a, -a, 0.0, 0.0, 0.0])


def test_drgrpo_subtracts_the_group_mean_only():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0])
    groups = torch.tensor([0, 0, 0, 0, 1])
    close(L.drgrpo_advantages(rewards, groups), [0.5, -0.5, 0.5, -0.5, 0.0])


def test_rloo_subtracts_the_mean_of_the_other_members():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1])
    # r=1: 1 - mean(0, 0) = 1;  r=0: 0 - mean(1, 0) = -0.5;  group of one -> 0
    close(L.rloo_advantages(rewards, groups), [1.0, -0.5, -0.5, 0.0])


def test_advantage_registry_lookup_and_clear_error():
    assert L.get_advantage_fn("grpo") is L.grpo_advantages
    close(L.compute_advantages("drgrpo", torch.tensor([2.0, 0.0]), torch.tensor([0, 0])), [1.0, -1.0])
    with pytest.raises(ValueError, match="valid: drgrpo, grpo, rloo"):
        L.get_advantage_fn("ppo")
    with pytest.raises(ValueError, match="valid: .*ppo_clip"):
        L.get_policy_loss_fn("nope")
    with pytest.raises(ValueError, match="valid: .*traj_mean_token_mean"):
        L.get_aggregation_fn("nope")


def test_a_new_variant_is_a_new_registered_function():
    @L.register_advantage("test_sign")
    def sign(rewards, group_ids):
        return torch.sign(rewards)

    try:
        close(L.compute_advantages("test_sign", torch.tensor([-2.0, 3.0]), torch.tensor([0, 0])), [-1.0, 1.0])
        with pytest.raises(ValueError, match="already registered"):
            L.register_advantage("test_sign")(sign)
    finally:
        del L.ADVANTAGES["test_sign"]


def test_every_context_gets_its_trajectorys_advantage_on_masked_tokens_only():
    ctx_adv = L.broadcast_to_contexts(torch.tensor([1.5, -2.0]), torch.tensor([0, 0, 1]))
    close(ctx_adv, [1.5, 1.5, -2.0])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 1]])
    close(L.token_advantages(ctx_adv, mask), [[0, 1.5, 1.5], [1.5, 0, 0], [0, 0, -2.0]])


# ------------------------------------------------------------------------------------ log-probs, entropy

def test_token_logprobs_are_shifted_so_position_t_scores_token_t():
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [ln3, 0.0], [5.0, -5.0]]])  # (1, 3, 2): p = [.25, .75], [.75, .25], unused
    ids = torch.tensor([[1, 1, 0]])
    # pos 0: no prefix -> 0; pos 1: token 1 from logits[0] -> .75; pos 2: token 0 from logits[1] -> .75
    close(L.token_logprobs(logits, ids), [[0.0, math.log(0.75), math.log(0.75)]])


def test_token_logprobs_match_log_softmax_and_carry_gradients():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, requires_grad=True)
    ids = torch.randint(0, 11, (3, 6))
    out = L.token_logprobs(logits, ids)
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    close(out[:, 1:], ref, 1e-5)
    close(out[:, 0], torch.zeros(3))
    out.sum().backward()
    assert logits.grad is not None and logits.grad[:, -1].abs().sum() == 0  # last logits predict nothing


def test_entropy_is_aligned_like_logprobs():
    logits = torch.zeros(1, 3, 4)  # uniform over 4 -> ln 4
    logits[0, 1] = torch.tensor([100.0, 0.0, 0.0, 0.0])  # near one-hot -> ~0
    close(L.entropy_from_logits(logits), [[0.0, math.log(4.0), 0.0]], 1e-5)


# ------------------------------------------------------------------------------------ PPO clip, KL

def test_ppo_clip_asymmetric_and_dual_clip_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 5.0, 2.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # last token masked out
    logp = torch.log(ratios).requires_grad_(True)
    old = torch.zeros_like(logp)
    loss, st = L.ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # A>0, r=1.5 -> -min(1.5, 1.28) = -1.28 (clipped);  A>0, r=.5 -> -0.5 (low side not clipped for A>0)
    # A<0, r=.5 -> max(.5, .8) = .8 (clipped);  A<0, r=5 -> max(5, 1.28) = 5, dual clip caps at 3
    close(loss, [[-1.28, -0.5, 0.8, 3.0, 0.0]], 1e-5)
    close(st["clip_frac"], 0.5)
    close(st["clip_frac_dual"], 0.25)
    close(st["approx_kl"], -(math.log(1.5) + 2 * math.log(0.5) + math.log(5.0)) / 4, 1e-5)
    close(st["ratio_mean"], (1.5 + 0.5 + 0.5 + 5.0) / 4, 1e-5)
    loss.sum().backward()
    # clipped tokens get no gradient; the unclipped one gets d(-A r)/dlogp = -A r = -0.5
    close(logp.grad, [[0.0, -0.5, 0.0, 0.0, 0.0]], 1e-6)


def test_ppo_clip_without_dual_clip_keeps_large_negative_losses():
    logp = torch.log(torch.tensor([[5.0]]))
    loss, st = L.ppo_clip_loss(logp, torch.zeros_like(logp), torch.tensor([[-1.0]]), torch.ones(1, 1))
    close(loss, [[5.0]], 1e-5)
    close(st["clip_frac_dual"], 0.0)
    with pytest.raises(ValueError, match="dual_clip"):
        L.ppo_clip_loss(logp, logp, logp, logp, dual_clip=0.5)


def test_kl_k3_by_hand_and_clamped():
    logp = torch.tensor([[0.0, 0.0, 0.0, -30.0]])
    ref = torch.tensor([[0.0, math.log(2.0), -math.log(2.0), 0.0]])
    # d = ref - logp: 0 -> 0;  ln2 -> 2 - ln2 - 1;  -ln2 -> .5 + ln2 - 1;  d=30 (clamped 20) -> huge -> 10
    close(L.kl_k3(logp, ref), [[0.0, 1 - math.log(2.0), math.log(2.0) - 0.5, 10.0]], 1e-6)


# ------------------------------------------------------------------------------------ aggregation

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
TRAJ = torch.tensor([0, 0, 1, 2])  # trajectory 0 has two contexts; the all-masked context (traj 2) has no loss
EXPECTED = {
    "token_mean": 22 / 6,  # (1+2+3+4+6+6) / 6 masked tokens
    "seq_mean_token_mean": (2 + 4 + 6) / 3,  # context means 2, 4, 6; the empty context does not count
    "traj_mean_token_mean": ((1 + 2 + 3 + 4) / 4 + 6) / 2,  # trajectory means 2.5 and 6, each weighs 1/2
    "seq_mean_token_sum_norm": 22 / (3 * 4),  # Dr.GRPO: sum / (contexts * max_tokens=4)
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_aggregation_modes_by_hand(mode):
    close(L.aggregate(PER_TOKEN, MASK, mode, TRAJ, max_tokens=4), EXPECTED[mode], 1e-6)


def test_token_mean_weighs_a_many_context_trajectory_by_its_tokens_but_traj_mean_does_not():
    # two trajectories with the same per-token loss inside each: traj 0 (loss 1) has 3 contexts, traj 1 (loss 0) one
    per_token = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    mask = torch.ones(4, 2)
    traj = torch.tensor([0, 0, 0, 1])
    close(L.aggregate(per_token, mask, "token_mean", traj), 0.75)
    close(L.aggregate(per_token, mask, "traj_mean_token_mean", traj), 0.5)


def test_token_mean_normalizer_makes_micro_batches_sum_to_the_full_batch_loss():
    full = L.aggregate(PER_TOKEN, MASK)
    n = float(MASK.sum())
    parts = [L.aggregate(PER_TOKEN[i : i + 2], MASK[i : i + 2], normalizer=n) for i in (0, 2)]
    close(sum(parts), full, 1e-6)
    naive = sum(L.aggregate(PER_TOKEN[i : i + 2], MASK[i : i + 2]) for i in (0, 2)) / 2
    assert abs(float(naive) - float(full)) > 0.1  # averaging micro-batch means is biased


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_token_weights_split_into_any_micro_batches_sum_to_aggregate(mode):
    lengths = [3, 1, 2, 4]  # unpadded lengths of the four contexts
    masks = [MASK[c, :n] for c, n in enumerate(lengths)]
    w = L.token_weights(masks, TRAJ, mode, max_tokens=4)
    assert [len(x) for x in w] == lengths
    total = sum(float((PER_TOKEN[c, :n] * w[c] * masks[c]).sum()) for c, n in enumerate(lengths))
    close(total, EXPECTED[mode], 1e-6)


def test_aggregation_argument_errors_are_clear():
    with pytest.raises(ValueError, match="context_traj_index"):
        L.aggregate(PER_TOKEN, MASK, "traj_mean_token_mean")
    with pytest.raises(ValueError, match="max_tokens"):
        L.aggregate(PER_TOKEN, MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="normalizer only applies to token_mean"):
        L.aggregate(PER_TOKEN, MASK, "seq_mean_token_mean", normalizer=6.0)
    with pytest.raises(ValueError, match="valid: seq_mean_token_mean"):
        L.aggregate(PER_TOKEN, MASK, "mean")


# ------------------------------------------------------------------------------------ objective

def test_grpo_objective_on_policy_is_minus_mean_advantage_minus_entropy_bonus():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, requires_grad=True)
    ids = torch.randint(0, 5, (2, 4))
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    ctx_adv = torch.tensor([1.0, -2.0])
    logp = L.token_logprobs(logits, ids).detach()
    loss, m = L.grpo_objective(logits, ids, logp, ctx_adv, mask, ref_logp=logp, kl_coef=0.1, entropy_coef=0.01)
    # ratio 1 everywhere: pg = -(1+1+1-2)/4; KL to an identical reference is 0
    ent = L.aggregate(L.entropy_from_logits(logits.detach()), mask)
    close(m["pg_loss"], -0.25, 1e-6)
    close(m["kl"], 0.0, 1e-6)
    close(m["entropy"], ent, 1e-6)
    close(loss.detach(), -0.25 - 0.01 * ent, 1e-6)
    assert m["clip_frac"] == 0.0 and abs(m["ratio_mean"] - 1.0) < 1e-6
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_predicting_positions_shift_the_loss_mask_left_by_one():
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 0, 0, 1]])
    assert L.predicting_positions(mask).tolist() == [[False, True, True, False, False],
                                                     [True, False, False, True, False]]


def test_logprobs_from_selected_positions_equal_the_full_computation_and_its_gradients():
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [ln3, 0.0], [5.0, -5.0]]])  # as in the shift test above
    ids = torch.tensor([[1, 1, 0]])
    sel = L.predicting_positions(torch.tensor([[0, 0, 1]]))  # only token 2 carries loss: logits[1] scores it
    close(L.selected_logprobs(logits[sel], ids, sel), [[0.0, 0.0, math.log(0.75)]])

    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    sel = L.predicting_positions(mask)
    part = full.detach()[sel].requires_grad_(True)  # what the learner's LM head computes: (M, V)
    got = L.selected_logprobs(part, ids, sel)
    want = L.token_logprobs(full, ids) * mask
    close(got, want, 1e-5)
    close(L.selected_entropy(part, sel), L.entropy_from_logits(full) * mask, 1e-5)
    (got * mask).sum().backward()
    want.sum().backward()
    close(part.grad, full.grad[sel], 1e-6)
