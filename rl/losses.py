"""Multi-context GRPO as pure tensor functions: advantages, loss weights, and the one objective.

Nothing here knows about models, engines or trajectories; every function takes and returns tensors
(shapes in each docstring) so the maths can be read, swapped and tested in isolation. Shape letters:
`B` trajectories, `C` contexts (a trajectory owns one or more), `T` tokens per context (padded),
`M` loss tokens (the tokens the policy sampled, flattened over a micro-batch), `V` vocabulary.

The learner (`rl/learner.py`) does a forward pass and calls `objective` (GRPO) or `sft_objective`
(the warm start); both take per-token tensors at the M loss tokens only. Everything the loss depends on
is here, so these are the functions the hand-computed tests check.

Variants live in registries (`memrl.registry`, where the recipe schema checks names) so that a new one is a
new function in any module:

    @register_advantage("grpo")         (rewards (B,), group_ids (B,)) -> advantages (B,)
    @register_aggregation("token_mean") mask (C,T) [+ context_traj_index, max_tokens] -> weights (C,T)
    @register_policy_loss("ppo")        logp, old_logp, adv, seq (M,) -> policy-gradient term (M,) + stats

A policy loss sees `seq` (M,): which context (sequence) of the micro-batch each loss token belongs to (every
context lies whole in one micro-batch), so a sequence-level loss such as GSPO needs nothing else.

Multi-context GRPO (MemSearcher, MEM1): advantages are computed per trajectory from the group's
rewards; every sampled token of every context of a trajectory receives its trajectory's advantage.

Log-probs are taken at the sampling temperature on both sides: the engine reports the log-probs of the
distribution it sampled from (vLLM `logprobs_mode="processed_logprobs"`: logits / T), and the learner
divides its logits by the same T (`selected_logprobs(..., temperature)`), so the PPO ratio compares
the policy with the distribution that actually sampled (chosen once: `rollout.temperature` is both the
sampling temperature and the learner's). Top-p < 1 truncates the sampling distribution, which the
learner does not reproduce: train with top_p = 1 for an exact ratio.

Aggregation (how per-token losses become one scalar) decides how much each token, context and
trajectory weighs. Every mode is written as per-token *weights* `w` with `loss = sum(per_token * w)`,
which is what makes gradient accumulation exact (and the update independent of how a minibatch is cut
into micro-batches or ranks): compute the weights once for the whole minibatch (`token_weights`), cut
it any way, and the pieces `sum(per_token * w)` add up to the full-batch loss.

- `token_mean` (default; MemSearcher, DAPO): sum over all sampled tokens / their number in the
  minibatch. Each token weighs the same, so a trajectory weighs by its generated-token count.
- `seq_mean_token_mean` (GRPO paper): each context's token mean, then the mean over contexts. A
  trajectory weighs by its number of contexts.
- `traj_mean_token_mean`: each trajectory's token mean over all its contexts, then the mean over
  trajectories: every trajectory weighs the same however many turns or tokens it has.
- `seq_mean_token_sum_norm` (Dr.GRPO): sum of all per-token losses / (B * `max_tokens`), B the number
  of trajectories in the minibatch and `max_tokens` a recipe constant (the generation budget,
  `rollout.max_tokens`). Neither depends on what was sampled (not on lengths, nor on how many turns a
  memory agent chose to take), so every generated token weighs the same constant 1 / (B * max_tokens):
  a trajectory weighs by all the tokens it generated over its contexts, and there is no length bias.

Contexts with no sampled token carry no loss and are not counted as contexts (nor are trajectories
with no sampled token) by the `*_mean` modes, so padding rows never dilute the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from memrl.registry import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES

# ------------------------------------------------------------------------------------ registries
# The names live in `memrl.registry` (importable without torch, so a recipe validates without this module); the
# built-in functions below are listed there by path. Users add their own with these decorators.

AdvantageFn = Callable[..., torch.Tensor]
WeightFn = Callable[..., torch.Tensor]
PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register `fn(rewards (B,), group_ids (B,)) -> advantages (B,)` under `name`."""
    return ADVANTAGES.register(name)


def register_aggregation(name: str) -> Callable[[WeightFn], WeightFn]:
    """Decorator: register `fn(mask (C,T), context_traj_index, max_tokens) -> weights (C,T)`."""
    return AGGREGATIONS.register(name)


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register a policy-gradient term `fn(logp, old_logp, adv, seq, *, clip_low, clip_high, dual_clip)
    -> (pg (M,), per-token stats)` under `name` (the contract: `rl.policy_losses.ppo_policy_loss`)."""
    return POLICY_LOSSES.register(name)


def get_advantage_fn(name: str) -> AdvantageFn:
    """The advantage estimator registered as `name`."""
    return ADVANTAGES.get(name)


def get_aggregation_fn(name: str) -> WeightFn:
    """The loss aggregation registered as `name`."""
    return AGGREGATIONS.get(name)


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The policy loss registered as `name`."""
    return POLICY_LOSSES.get(name)


# ------------------------------------------------------------------------------------ advantages

def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group size n (B,), group sum (B,) and group sum of squared deviations (B,)."""
    _, inv = torch.unique(group_ids, return_inverse=True)  # (B,) dense group index
    r = rewards.to(torch.float64)  # float64: exact means for small integer-ish rewards
    g = int(inv.max()) + 1 if inv.numel() else 0
    n = torch.zeros(g, dtype=torch.float64, device=r.device).index_add_(0, inv, torch.ones_like(r))
    s = torch.zeros(g, dtype=torch.float64, device=r.device).index_add_(0, inv, r)
    dev = r - (s / n)[inv]
    ss = torch.zeros(g, dtype=torch.float64, device=r.device).index_add_(0, inv, dev * dev)
    return n[inv], s[inv], ss[inv]


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (r - mean_group) / (std_group + eps).

    rewards (B,) float, group_ids (B,) long (any integers; equal id = same task) -> (B,) float.
    std is the *unbiased* sample std (divides by n - 1), as `torch.std` in verl / MemSearcher. A group
    of one has no baseline and gets advantage 0; a group whose rewards are all equal gets 0.
    """
    n, s, ss = _group_stats(rewards, group_ids)
    std = torch.sqrt(ss / (n - 1).clamp(min=1))
    adv = (rewards.to(torch.float64) - s / n) / (std + eps)
    return torch.where(n > 1, adv, torch.zeros_like(adv)).to(rewards.dtype)


def drgrpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: r - mean_group (no std normalization). rewards (B,), group_ids (B,) -> (B,); group of 1 -> 0."""
    n, s, _ = _group_stats(rewards, group_ids)
    return (rewards.to(torch.float64) - s / n).to(rewards.dtype)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: r - mean of the *other* members of the group. rewards (B,), group_ids (B,) -> (B,); group of 1 -> 0.

    Equals n/(n-1) * (r - mean_group).
    """
    n, s, _ = _group_stats(rewards, group_ids)
    r = rewards.to(torch.float64)
    loo = (s - r) / (n - 1).clamp(min=1)
    return torch.where(n > 1, r - loo, torch.zeros_like(r)).to(rewards.dtype)


def compute_advantages(name: str, rewards: torch.Tensor, group_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Advantages (B,) by the registered estimator `name` ("grpo", "drgrpo", "rloo")."""
    return get_advantage_fn(name)(rewards, group_ids, **kwargs)



# ------------------------------------------------------------------------------------ log-probs

def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each token given its prefix, for whole sequences: logits (C,T,V), token_ids (C,T) -> (C,T).

    output[:, t] is log p_T(token_ids[:, t] | token_ids[:, :t]) from logits[:, t-1] / T (the causal-LM
    shift); output[:, 0] is 0 (no prefix). The reference the learner's selected-position path is tested
    against, and what benchmarks use to score an HF model's sequences.
    """
    out = torch.zeros(token_ids.shape, dtype=torch.float32, device=logits.device)
    if token_ids.shape[1] > 1:
        lg = logits[:, :-1].float() / _temp(temperature)
        out[:, 1:] = lg.gather(-1, token_ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)
    return out


def _temp(temperature: float) -> float:
    """Greedy decoding (T = 0) reports the raw distribution (vLLM does the same), so its T is 1."""
    return temperature if temperature > 0 else 1.0


def predicting_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions whose next-token distribution scores a loss token: (C,T) mask -> (C,T) bool with
    out[:, t] = mask[:, t+1] > 0 (the causal-LM shift; the last position predicts nothing).

    Prompt and observation tokens carry no loss, so a learner needs logits only here: on a multi-turn
    context that is a small share of the positions, and the (positions, V) LM-head output is the
    largest tensor of the forward.
    """
    sel = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    sel[:, :-1] = mask[:, 1:] > 0
    return sel


def at_loss_tokens(x: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """The entries (M,) of a per-token tensor x (C,T) at the tokens that the positions `sel` (C,T) predict,
    in the row-major order of `sel`: the order of the learner's logits rows and of `selected_logprobs`."""
    return x[:, 1:][sel[:, :-1]]


def selected_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] per row: logits (M,V) at the selected positions, targets (M,) -> (M,)
    float32, differentiable with respect to `logits`. T = the sampling temperature (see module docstring)."""
    lg = logits.float() / _temp(temperature)
    return lg.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)


def selected_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) per row: (M,V) -> (M,) float32 (the sampling distribution's entropy)."""
    lg = logits.float() / _temp(temperature)
    return torch.logsumexp(lg, dim=-1) - (torch.softmax(lg, dim=-1) * lg).sum(-1)


# ------------------------------------------------------------------------------------ the objective

def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 (low-variance, non-negative) estimator of KL(policy || ref) per token: (M,), (M,) -> (M,).

    With d = ref_logp - logp: exp(d) - d - 1, d clamped to [-20, 20] and the result to [-10, 10]
    (verl's "low_var_kl"). Unbiased for the KL when tokens are sampled from the policy.
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def objective(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    weights: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    is_weight: torch.Tensor | None = None,
    seq: torch.Tensor | None = None,
    policy_loss: str = "ppo",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-context GRPO loss of M loss tokens: sum(w * (is_w * pg + kl_coef * kl - entropy_coef * entropy)).

    logp (M,) policy log-probs (with grad), old_logp (M,) the sampling-time log-probs, adv (M,) each
    token's trajectory advantage, weights (M,) the global aggregation weights (`token_weights`),
    ref_logp (M,) frozen-reference log-probs or None (no KL), entropy (M,) or None (no bonus),
    is_weight (M,) a per-token importance weight (no grad) on the policy-gradient term only, or None (all 1):
    e.g. the truncated pi_prox / pi_behav of a stale token (`truncated_is_weights`, decoupled PPO as in
    AReaL); the KL and entropy terms are not reweighted. seq (M,) the context of each token in the micro-batch
    (for sequence-level policy losses).

    pg is the registered policy loss `policy_loss` (`rl.policy_losses`; default "ppo", the clipped surrogate with
    clip-higher and optional dual clip; "gspo", one clipped ratio per context).

    Returns the loss (0-d, with grad) and stats as *sums*, so that micro-batches and ranks add up:
    `loss`, `pg_loss` (with is_weight), `kl_loss` are weighted sums (their totals over a minibatch are the
    minibatch's aggregated values); `tokens` counts loss tokens and every other stat is a sum over tokens
    (clip_frac, clip_frac_dual, approx_kl = mean of old_logp - logp, ratio_mean, logp_diff_abs = |logp - old_logp|,
    entropy, kl): `finish_stats` turns the totals into means.
    """
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    pg, token_stats = get_policy_loss_fn(policy_loss)(logp, old_logp, adv, seq, clip_low=clip_low,
                                                     clip_high=clip_high, dual_clip=dual_clip)
    if is_weight is not None:
        pg = is_weight.detach() * pg
    per_token = pg
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + kl_coef * kl
    if entropy is not None and entropy_coef:
        per_token = per_token - entropy_coef * entropy
    loss = (per_token * weights).sum()
    with torch.no_grad():
        stats = {
            "loss": float(loss.detach()), "pg_loss": float((pg * weights).sum()), "tokens": float(logp.numel()),
            "approx_kl": float(-log_ratio.sum()), "ratio_mean": float(torch.exp(log_ratio).sum()),
            "logp_diff_abs": float((logp - old_logp).abs().sum()),
            **{k: float(v.float().sum()) for k, v in token_stats.items()},
        }
        if entropy is not None:
            stats["entropy"] = float(entropy.sum())
        if kl is not None:
            stats["kl"] = float(kl.sum())
            stats["kl_loss"] = float((kl * weights).sum())
    return loss, stats


def sft_objective(logp: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Warm-start cross-entropy on gold completions: sum(w * -logp); logp, weights (M,). Stats as in `objective`."""
    loss = -(logp * weights).sum()
    return loss, {"sft_loss": float(loss.detach()), "tokens": float(logp.numel())}


SUMMED = ("loss", "pg_loss", "kl_loss", "sft_loss", "tokens",  # stats whose minibatch value is their total
          "offpolicy_tokens", "offpolicy_clipped", "offpolicy_ratio")


def truncated_is_weights(prox_logp: torch.Tensor, behav_logp: torch.Tensor, clip: float
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """Decoupled PPO for stale samples (Hilton et al. 2021; AReaL): a token sampled by an older policy
    pi_behav is trained with the PPO ratio against the proximal policy pi_prox (the learner's weights before
    this update: `prox_logp` (M,)) and its policy-gradient term (only: not the KL or entropy terms) weighted
    by the importance weight pi_prox / pi_behav, truncated at `clip` (`behav_logp` (M,): the engine's sampling
    log-probs). Returns the weights (M,) (no grad; for `objective(is_weight=...)`) and stats as sums:
    offpolicy_tokens, offpolicy_clipped (tokens whose weight was truncated), offpolicy_ratio (sum of the
    untruncated ratios)."""
    ratio = torch.exp((prox_logp - behav_logp).clamp(-20.0, 20.0)).detach()
    stats = {"offpolicy_tokens": float(ratio.numel()), "offpolicy_clipped": float((ratio > clip).sum()),
             "offpolicy_ratio": float(ratio.sum())}
    return ratio.clamp(max=clip), stats


def finish_stats(totals: dict[str, float]) -> dict[str, float]:
    """Stats summed over micro-batches (and ranks) -> minibatch values: weighted sums stay sums, per-token
    sums become means over the loss tokens."""
    n = max(totals.get("tokens", 0.0), 1.0)
    out = {k: v if k in SUMMED else v / n for k, v in totals.items()}
    if out.get("offpolicy_tokens"):  # truncated importance weights (`truncated_is_weights`): means over stale tokens
        out["offpolicy_clip_frac"] = out.pop("offpolicy_clipped") / out["offpolicy_tokens"]
        out["offpolicy_ratio_mean"] = out.pop("offpolicy_ratio") / out["offpolicy_tokens"]
    return out


# ------------------------------------------------------------------------------------ aggregation

def _nonempty(mask: torch.Tensor) -> torch.Tensor:
    return (mask.sum(-1) > 0).to(mask.dtype)  # (C,) 1 for contexts with at least one masked token


def token_mean_weights(mask, context_traj_index=None, max_tokens=None) -> torch.Tensor:
    """w = mask / N, N = loss tokens in the minibatch."""
    return mask / mask.sum().clamp(min=1)


def seq_mean_token_mean_weights(mask, context_traj_index=None, max_tokens=None) -> torch.Tensor:
    """w[c,t] = mask / (n_c * C'), n_c = loss tokens of context c, C' = contexts with n_c > 0."""
    n_c = mask.sum(-1, keepdim=True).clamp(min=1)
    return mask / n_c / _nonempty(mask).sum().clamp(min=1)


def traj_mean_token_mean_weights(mask, context_traj_index=None, max_tokens=None) -> torch.Tensor:
    """w[c,t] = mask / (n_traj(c) * B'), n_traj = loss tokens over all contexts of a trajectory, B' = such trajectories."""
    if context_traj_index is None:
        raise ValueError("traj_mean_token_mean needs context_traj_index (C,): the trajectory of each context")
    _, inv = torch.unique(context_traj_index.to(mask.device), return_inverse=True)
    per_traj = torch.zeros(int(inv.max()) + 1, dtype=mask.dtype, device=mask.device).index_add_(0, inv, mask.sum(-1))
    n_traj = (per_traj > 0).sum().clamp(min=1)
    return mask / per_traj[inv].clamp(min=1)[:, None] / n_traj


def seq_mean_token_sum_norm_weights(mask, context_traj_index=None, max_tokens=None) -> torch.Tensor:
    """Dr.GRPO: w = mask / (B * max_tokens), a constant per minibatch: B = trajectories in it (distinct values
    of context_traj_index (C,); when None, each context counts as its own trajectory), max_tokens a recipe
    constant. Every generated token weighs the same, so a trajectory weighs by its tokens over all its contexts."""
    if max_tokens is None or max_tokens <= 0:
        raise ValueError("seq_mean_token_sum_norm needs max_tokens > 0: a constant (the generation budget, "
                         f"rollout.max_tokens), got {max_tokens}")
    trajectories = mask.shape[0] if context_traj_index is None else torch.unique(context_traj_index).numel()
    return mask / (max(trajectories, 1) * float(max_tokens))


def token_weights(
    masks: list[torch.Tensor],
    context_traj_index: torch.Tensor | None = None,
    mode: str = "token_mean",
    max_tokens: int | None = None,
) -> list[torch.Tensor]:
    """Per-token weights of a whole minibatch, computed before it is cut into micro-batches or ranks.

    masks: C tensors (T_c,) (unpadded loss masks), context_traj_index (C,) -> C tensors (T_c,) float32
    with sum_c sum_t per_token[c][t] * w[c][t] the minibatch loss aggregated by `mode`.
    """
    T = max((len(m) for m in masks), default=0)
    padded = torch.zeros((len(masks), T), dtype=torch.float32)
    for c, m in enumerate(masks):
        padded[c, : len(m)] = m.to(torch.float32)
    w = get_aggregation_fn(mode)(padded, context_traj_index, max_tokens)
    return [w[c, : len(m)] for c, m in enumerate(masks)]
