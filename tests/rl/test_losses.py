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
    with pytest.raises(ValueError, match="registered: drgrpo, grpo, rloo"):
        L.get_advantage_fn("ppo")
    with pytest.raises(ValueError, match="did you mean 'rloo'"):
        L.get_advantage_fn("rlo")
    with pytest.raises(ValueError, match="registered: .*traj_mean_token_mean"):
        L.get_aggregation_fn("nope")


def test_a_new_variant_is_a_new_registered_function():
    @L.register_advantage("test_sign")
    def sign(rewards, group_ids):
        return torch.sign(rewards)

    try:
        close(L.compute_advantages("test_sign", torch.tensor([-2.0, 3.0]), torch.tensor([0, 0])), [-1.0, 1.0])
        L.register_advantage("test_sign")(sign)  # the same function again (a module imported twice): fine
        with pytest.raises(ValueError, match="already registered"):
            L.register_advantage("test_sign")(lambda rewards, group_ids: rewards)
        with pytest.raises(ValueError, match="already registered"):
            L.register_advantage("grpo")(sign)
    finally:
        L.ADVANTAGES.unregister("test_sign")


# ------------------------------------------------------------------------------------ log-probs, entropy

def test_token_logprobs_are_shifted_so_position_t_scores_token_t():
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [ln3, 0.0], [5.0, -5.0]]])  # (1, 3, 2): p = [.25, .75], [.75, .25], unused
    ids = torch.tensor([[1, 1, 0]])
    # pos 0: no prefix -> 0; pos 1: token 1 from logits[0] -> .75; pos 2: token 0 from logits[1] -> .75
    close(L.token_logprobs(logits, ids), [[0.0, math.log(0.75), math.log(0.75)]])


def test_logprobs_and_entropy_are_taken_at_the_sampling_temperature():
    ln3 = math.log(3.0)
    logits = torch.tensor([[0.0, ln3]])  # T=1: p = [1/4, 3/4];  T=0.5: logits (0, 2 ln3) -> p = [1/10, 9/10]
    target = torch.tensor([1])
    close(L.selected_logprobs(logits, target), [math.log(0.75)])
    close(L.selected_logprobs(logits, target, temperature=0.5), [math.log(0.9)])
    close(L.selected_logprobs(logits, target, temperature=0.0), [math.log(0.75)])  # greedy reports the raw distribution
    close(L.selected_entropy(logits, temperature=0.5), [-(0.1 * math.log(0.1) + 0.9 * math.log(0.9))])
    ids = torch.tensor([[0, 1]])
    close(L.token_logprobs(logits[None].repeat(1, 2, 1), ids, temperature=0.5), [[0.0, math.log(0.9)]])


def test_predicting_positions_shift_the_loss_mask_left_by_one():
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 0, 0, 1]])
    assert L.predicting_positions(mask).tolist() == [[False, True, True, False, False],
                                                     [True, False, False, True, False]]


def test_selected_positions_give_the_full_computation_and_its_gradients():
    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    sel = L.predicting_positions(mask)
    part = full.detach()[sel].requires_grad_(True)  # what the learner's LM head computes: (M, V)
    got = L.selected_logprobs(part, L.at_loss_tokens(ids, sel), temperature=0.8)
    want = L.token_logprobs(full, ids, temperature=0.8)[:, 1:][mask[:, 1:] > 0]  # row-major over the loss tokens
    assert got.shape == (int(mask[:, 1:].sum()),)
    close(got, want, 1e-5)
    got.sum().backward()
    want.sum().backward()
    close(part.grad, full.grad[sel], 1e-6)


# ------------------------------------------------------------------------------------ the objective

def _objective(ratios, adv, weights, **kw):
    logp = torch.log(torch.tensor(ratios)).requires_grad_(True)
    loss, st = L.objective(logp, torch.zeros_like(logp), torch.tensor(adv), torch.tensor(weights), **kw)
    return logp, loss, st


def test_objective_ppo_clip_asymmetric_and_dual_clip_by_hand():
    # five loss tokens; weights of a token mean over 4 tokens plus one with weight 0 (another context's padding)
    logp, loss, st = _objective([1.5, 0.5, 0.5, 5.0, 2.0], [1.0, 1.0, -1.0, -1.0, 7.0], [0.25, 0.25, 0.25, 0.25, 0.0],
                                clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # A>0, r=1.5 -> -min(1.5, 1.28) = -1.28 (clipped);  A>0, r=.5 -> -0.5 (low side not clipped for A>0)
    # A<0, r=.5 -> max(.5, .8) = .8 (clipped);  A<0, r=5 -> max(5, 1.28) = 5, dual clip caps at 3
    close(loss, 0.25 * (-1.28 - 0.5 + 0.8 + 3.0), 1e-6)
    close(st["pg_loss"], float(loss.detach()), 1e-6)
    stats = L.finish_stats(st)  # per-token stats are means over the 5 loss tokens, weighted sums stay sums
    close(stats["clip_frac"], 3 / 5)  # the weight-0 token (A=7, r=2 -> clipped at 1.28) still counts as a token
    close(stats["clip_frac_dual"], 1 / 5)
    close(stats["approx_kl"], -(math.log(1.5) + 2 * math.log(0.5) + math.log(5.0) + math.log(2.0)) / 5, 1e-6)
    close(stats["ratio_mean"], (1.5 + 0.5 + 0.5 + 5.0 + 2.0) / 5, 1e-6)
    close(stats["logp_diff_abs"], (math.log(1.5) + 2 * math.log(2.0) + math.log(5.0) + math.log(2.0)) / 5, 1e-6)
    loss.backward()
    # clipped tokens get no gradient; the unclipped one gets w * d(-A r)/dlogp = 0.25 * -0.5
    close(logp.grad, [0.0, -0.125, 0.0, 0.0, 0.0], 1e-7)


def test_objective_without_dual_clip_keeps_large_negative_losses_and_rejects_a_bad_constant():
    _, loss, st = _objective([5.0], [-1.0], [1.0], clip_low=0.2, clip_high=0.2)
    close(loss, 5.0, 1e-5)
    assert st["clip_frac_dual"] == 0.0
    with pytest.raises(ValueError, match="dual_clip"):
        _objective([1.0], [1.0], [1.0], clip_low=0.2, clip_high=0.2, dual_clip=0.5)


def test_is_weight_scales_the_policy_gradient_term_only_by_hand():
    """is_weight multiplies pg per token (loss, pg_loss and its gradient) but not the KL or entropy terms."""
    ref = torch.log(torch.tensor([2.0, 1.0]))  # d = ref - logp = ln2, 0 -> k3 = 1 - ln2, 0
    entropy = torch.tensor([1.0, 3.0])
    kw = dict(clip_low=0.2, clip_high=0.2, ref_logp=ref, kl_coef=0.1, entropy=entropy, entropy_coef=0.01)
    logp, loss, st = _objective([1.0, 1.0], [1.0, -2.0], [0.5, 0.5], is_weight=torch.tensor([2.0, 0.5]), **kw)
    # ratio 1: pg = -A = -1, 2;  is-weighted: 2 * -1 = -2, 0.5 * 2 = 1;  sum with w = .5: -0.5
    kl_w = 0.5 * (1 - math.log(2.0))  # not scaled by the is_weight 2 of token 0
    ent_w = 0.5 * 1 + 0.5 * 3  # 2, not 0.5 * (2 * 1 + 0.5 * 3)
    close(st["pg_loss"], -0.5)
    close(st["kl_loss"], kl_w)
    close(loss, -0.5 + 0.1 * kl_w - 0.01 * ent_w)
    loss.backward()
    # d/dlogp: pg term -A * ratio * is_w * w = -1 * 2 * .5 = -1 and 2 * .5 * .5 = .5; k3 term kl_coef * w *
    # (1 - exp(d)) = .1 * .5 * (1 - 2) = -.05 and 0; entropy is a constant tensor here (no gradient)
    close(logp.grad, [-1.0 - 0.05, 0.5])
    _, plain, st1 = _objective([1.0, 1.0], [1.0, -2.0], [0.5, 0.5], **kw)
    close(st1["pg_loss"], 0.5 * -1 + 0.5 * 2)  # is_weight None: all 1
    close(float(plain.detach()) - st1["pg_loss"], float(loss.detach()) - st["pg_loss"])  # KL + entropy unchanged


def test_kl_k3_by_hand_and_clamped():
    logp = torch.tensor([0.0, 0.0, 0.0, -30.0])
    ref = torch.tensor([0.0, math.log(2.0), -math.log(2.0), 0.0])
    # d = ref - logp: 0 -> 0;  ln2 -> 2 - ln2 - 1;  -ln2 -> .5 + ln2 - 1;  d=30 (clamped 20) -> huge -> 10
    close(L.kl_k3(logp, ref), [0.0, 1 - math.log(2.0), math.log(2.0) - 0.5, 10.0], 1e-6)


def test_objective_adds_kl_and_subtracts_the_entropy_bonus_by_hand():
    ratios, adv, w = [1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [0.5, 0.25, 0.25]
    ref = torch.log(torch.tensor([2.0, 1.0, 0.5]))  # d = ref - logp = ln2, 0, -ln2
    entropy = torch.tensor([1.0, 2.0, 4.0])
    _, loss, st = _objective(ratios, adv, w, clip_low=0.2, clip_high=0.2, ref_logp=ref, kl_coef=0.1,
                             entropy=entropy, entropy_coef=0.01)
    pg = 0.5 * -1 + 0.25 * -1 + 0.25 * 2  # ratio 1 everywhere: -A
    kl = [1 - math.log(2.0), 0.0, math.log(2.0) - 0.5]
    kl_w = 0.5 * kl[0] + 0.25 * kl[2]
    ent_w = 0.5 * 1 + 0.25 * 2 + 0.25 * 4
    close(st["pg_loss"], pg, 1e-6)
    close(st["kl_loss"], kl_w, 1e-6)
    close(loss, pg + 0.1 * kl_w - 0.01 * ent_w, 1e-6)
    stats = L.finish_stats(st)
    close(stats["kl"], sum(kl) / 3, 1e-6)
    close(stats["entropy"], 7 / 3, 1e-6)
    assert stats["clip_frac"] == 0.0 and abs(stats["ratio_mean"] - 1.0) < 1e-6


def test_objective_pieces_sum_to_the_whole_minibatch():
    """Cut the M loss tokens anywhere (micro-batches, ranks): losses and stats add up to the whole."""
    g = torch.Generator().manual_seed(0)
    logp, old, adv = (torch.randn(10, generator=g) for _ in range(3))
    w = torch.rand(10, generator=g)
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, entropy=torch.rand(10, generator=g), entropy_coef=0.01)
    whole_loss, whole = L.objective(logp, old, adv, w, **kw)
    parts = [L.objective(logp[s], old[s], adv[s], w[s], **{**kw, "entropy": kw["entropy"][s]})
             for s in (slice(0, 3), slice(3, 4), slice(4, 10))]
    close(sum(float(p[0]) for p in parts), whole_loss, 1e-5)
    for k in whole:
        close(sum(p[1][k] for p in parts), whole[k], 1e-5)


def test_sft_objective_is_weighted_cross_entropy():
    loss, st = L.sft_objective(torch.log(torch.tensor([0.5, 0.25])), torch.tensor([0.5, 0.5]))
    close(loss, 0.5 * math.log(2.0) + 0.5 * math.log(4.0), 1e-6)
    assert st["tokens"] == 2.0 and L.finish_stats(st)["sft_loss"] == st["sft_loss"]


# ------------------------------------------------------------------------------------ aggregation

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
TRAJ = torch.tensor([0, 0, 1, 2])  # trajectory 0 has two contexts; the all-masked context (traj 2) has no loss
EXPECTED = {
    "token_mean": 22 / 6,  # (1+2+3+4+6+6) / 6 loss tokens
    "seq_mean_token_mean": (2 + 4 + 6) / 3,  # context means 2, 4, 6; the empty context does not count
    "traj_mean_token_mean": ((1 + 2 + 3 + 4) / 4 + 6) / 2,  # trajectory means 2.5 and 6, each weighs 1/2
    # Dr.GRPO: sum / (B * max_tokens), B = 3 trajectories (0, 1, 2: traj 2 counts, though it has no loss token),
    # max_tokens = 8 (a constant)
    "seq_mean_token_sum_norm": 22 / (3 * 8),
}
LENGTHS = [3, 1, 2, 4]  # unpadded lengths of the four contexts


def _weighted(mode: str, masks: list[torch.Tensor], per_token: torch.Tensor, max_tokens: int = 8) -> float:
    w = L.token_weights(masks, TRAJ, mode, max_tokens=max_tokens)
    assert [len(x) for x in w] == [len(m) for m in masks]
    return sum(float((per_token[c, : len(m)] * w[c]).sum()) for c, m in enumerate(masks))


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_aggregation_weights_by_hand(mode):
    close(_weighted(mode, [MASK[c, :n] for c, n in enumerate(LENGTHS)], PER_TOKEN), EXPECTED[mode], 1e-6)


def test_drgrpo_normaliser_is_the_recipe_constant_not_the_longest_context():
    """Padding every context to a longer row changes nothing: the divisor is max_tokens, not a length."""
    masks = [MASK[c, :n] for c, n in enumerate(LENGTHS)]
    padded = [torch.cat([m, torch.zeros(50)]) for m in masks]
    wide = torch.cat([PER_TOKEN, torch.zeros(4, 50)], dim=1)
    mode = "seq_mean_token_sum_norm"
    close(_weighted(mode, padded, wide), _weighted(mode, masks, PER_TOKEN), 1e-7)
    close(_weighted(mode, masks, PER_TOKEN, max_tokens=16), EXPECTED[mode] / 2, 1e-7)


def test_drgrpo_weight_is_one_constant_per_token_over_trajectories_not_contexts_by_hand():
    """2 trajectories, the first with 2 contexts (2 + 3 loss tokens), the second with 1 (1 loss token);
    max_tokens 4: every loss token weighs 1 / (B * max_tokens) = 1 / (2 * 4), whatever the number of contexts."""
    masks = [torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.tensor([0.0, 1.0])]
    w = L.token_weights(masks, torch.tensor([0, 0, 1]), "seq_mean_token_sum_norm", max_tokens=4)
    for got, want in zip(w, [[0.0, 0.125, 0.125], [0.0, 0.125, 0.125, 0.125], [0.0, 0.125]], strict=True):
        close(got, want)
    # trajectory 0 weighs by its 5 generated tokens, trajectory 1 by its 1: 0.625 and 0.125
    close(float(w[0].sum() + w[1].sum()), 0.625)
    close(float(w[2].sum()), 0.125)
    # the same 5 tokens of trajectory 0 in one context (fewer turns) weigh exactly the same
    one = L.token_weights([torch.tensor([0.0, 1, 1, 1, 1, 1]), masks[2]], torch.tensor([0, 1]),
                          "seq_mean_token_sum_norm", max_tokens=4)
    close(one[0], [0.0, 0.125, 0.125, 0.125, 0.125, 0.125])
    close(one[1], [0.0, 0.125])
    # without context_traj_index each context is its own trajectory: B = 3, 1 / (3 * 4)
    alone = L.token_weights(masks, None, "seq_mean_token_sum_norm", max_tokens=4)
    close(alone[1], [0.0, 1 / 12, 1 / 12, 1 / 12])


def test_token_mean_weighs_a_many_context_trajectory_by_its_tokens_but_traj_mean_does_not():
    # two trajectories with the same per-token loss inside each: traj 0 (loss 1) has 3 contexts, traj 1 (loss 0) one
    masks = [torch.ones(2)] * 4
    traj = torch.tensor([0, 0, 0, 1])
    per = [1.0, 1.0, 1.0, 0.0]
    for mode, want in (("token_mean", 0.75), ("traj_mean_token_mean", 0.5)):
        w = L.token_weights(masks, traj, mode)
        close(sum(per[c] * float(w[c].sum()) for c in range(4)), want)


def test_aggregation_argument_errors_are_clear():
    masks = [MASK[c] for c in range(4)]
    with pytest.raises(ValueError, match="context_traj_index"):
        L.token_weights(masks, None, "traj_mean_token_mean")
    with pytest.raises(ValueError, match="max_tokens > 0"):
        L.token_weights(masks, TRAJ, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="registered: seq_mean_token_mean"):
        L.token_weights(masks, TRAJ, "mean")
