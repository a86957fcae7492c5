"""Policy-gradient terms: how a token's log-prob, its sampling log-prob and its advantage become its policy
loss. Registered by name in `memrl.registry.POLICY_LOSSES` (the recipe's `algorithm.policy_loss`); the objective
(`rl.losses.objective`) adds the KL and entropy terms, the importance weight and the aggregation weights.

The contract of a policy loss: `fn(logp, old_logp, adv, seq, *, clip_low, clip_high, dual_clip)` with logp (M,)
(with grad) the learner's log-probs of the M loss tokens of a micro-batch, old_logp (M,) the sampling log-probs,
adv (M,) each token's advantage, seq (M,) long the context (sequence) each token belongs to (every context lies
whole in one micro-batch) -> (pg (M,) per-token loss, stats: per-token tensors (M,) that the objective sums, e.g.
clip_frac = the clipped branch was taken).
"""

from __future__ import annotations

import torch


def _clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float,
                       dual_clip: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate per token of a ratio (M,) (clip-higher: DAPO; dual clip: verl) -> (pg (M,), stats)."""
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (3 is usual), got {dual_clip}")
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(loss1, loss2)
    clipped = loss2 > loss1
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        loss3 = -adv * dual_clip
        dual = (adv < 0) & (pg > loss3)
        pg = torch.where(adv < 0, torch.minimum(pg, loss3), pg)
    return pg, {"clip_frac": clipped, "clip_frac_dual": dual}


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, seq: torch.Tensor | None, *,
                    clip_low: float, clip_high: float, dual_clip: float | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level PPO (GRPO, DAPO): ratio = exp(logp - old_logp) per token (log-ratio clamped to [-20, 20]);
    pg = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)), capped at -A * dual_clip for A < 0.

    logp (M,) with grad, old_logp (M,), adv (M,), seq (M,) unused -> pg (M,) and per-token stats (M,) that
    `objective` sums: clip_frac (the clipped branch was taken), clip_frac_dual."""
    return _clipped_surrogate(torch.exp((logp - old_logp).clamp(-20.0, 20.0)), adv, clip_low, clip_high, dual_clip)


def gspo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, seq: torch.Tensor | None, *,
                     clip_low: float, clip_high: float, dual_clip: float | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, the geometric mean of its tokens' ratios,
    s_i = exp(mean_{t in i}(logp_t - old_logp_t)), clipped per sequence. Here a sequence is one context (one turn
    of a memory agent, the whole episode of a full-context one); `seq` (M,) names each loss token's context.

    Written per token as GSPO-token with equal advantages: s_it = sg[s_i] * exp(logp_t - sg[logp_t]), whose value
    is s_i and whose gradient is s_i * grad logp_t; pg_t = max(-A s_it, -A clip(s_it, 1 - clip_low, 1 + clip_high)).
    With an aggregation that averages each context's tokens (`seq_mean_token_mean`) this is GSPO's objective
    exactly; its gradient is that of s_i times the context's mean token log-likelihood gradient. GSPO's ranges
    are much narrower than PPO's (the paper: clip_low 3e-4, clip_high 4e-4). When every context has one loss
    token it equals `ppo_policy_loss` (value and gradient). Returns pg (M,) and per-token stats as PPO's."""
    if seq is None:
        raise ValueError("gspo needs seq (M,): the context of each loss token")
    _, inv = torch.unique(seq, return_inverse=True)
    k = int(inv.max()) + 1 if inv.numel() else 0
    log_ratio = (logp - old_logp).detach()
    sums = torch.zeros(k, dtype=log_ratio.dtype, device=logp.device).index_add_(0, inv, log_ratio)
    counts = torch.zeros(k, dtype=log_ratio.dtype, device=logp.device).index_add_(0, inv, torch.ones_like(log_ratio))
    seq_log_ratio = (sums / counts.clamp(min=1)).clamp(-20.0, 20.0)  # (K,) log s_i
    ratio = torch.exp(seq_log_ratio[inv] + logp - logp.detach())
    return _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip)
