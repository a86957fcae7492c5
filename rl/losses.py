"""Multi-context GRPO as pure tensor functions: advantages, log-probs, PPO clip, KL, aggregation.

Nothing here knows about models, engines or trajectories; every function takes and returns tensors
(shapes in each docstring) so the maths can be read, swapped and tested in isolation. Shape letters:
`B` trajectories, `C` contexts (rows of a padded batch; a trajectory owns one or more), `T` tokens
per context (padded), `V` vocabulary.

Variants live in registries so that a new one is a new function:

    @register_advantage("grpo")        (rewards (B,), group_ids (B,)) -> advantages (B,)
    @register_policy_loss("ppo_clip")  (logp, old_logp, adv, mask, ...) -> (per_token (C,T), stats)
    @register_aggregation("token_mean") mask (C,T) [+ context_traj_index, max_tokens, normalizer] -> weights (C,T)

Multi-context GRPO (MemSearcher, MEM1): advantages are computed per trajectory from the group's
rewards, then every context of a trajectory receives its trajectory's advantage
(`broadcast_to_contexts`), then every loss-masked token of that context (`token_advantages`).

Aggregation (how per-token losses become one scalar) decides how much each token, context and
trajectory weighs. Every mode is written as per-token *weights* `w` with `loss = sum(per_token * w)`,
which is what makes gradient accumulation exact: compute the weights once for the whole minibatch
(`token_weights`), cut it into micro-batches in any way, and the micro-batch losses
`sum(per_token * w)` add up to the full-batch loss.

- `token_mean` (default; MemSearcher, DAPO): sum over all masked tokens / number of masked tokens in
  the batch. Each token weighs the same, so a trajectory weighs by its generated-token count: one
  with many turns (contexts) or long answers counts more.
- `seq_mean_token_mean` (GRPO paper): each context's token mean, then the mean over contexts. A
  trajectory weighs by its number of contexts.
- `traj_mean_token_mean`: each trajectory's token mean over all tokens of all its contexts, then the
  mean over trajectories. Every trajectory weighs the same regardless of how many contexts/turns or
  tokens it has (the per-trajectory analogue of `seq_mean_token_mean`).
- `seq_mean_token_sum_norm` (Dr.GRPO): sum of all masked per-token losses / (number of contexts *
  `max_tokens`), a constant that does not depend on response length, so no length bias.

Contexts with no masked token carry no loss and are not counted as contexts (nor are trajectories
with no masked token) by the `*_mean` modes, so padding rows never dilute the mean.

Micro-batches: `token_mean` divides by the number of masked tokens. Averaging per micro-batch and then
averaging the micro-batch losses weighs a token in a short micro-batch more than one in a long
micro-batch. Pass `normalizer=` the global masked-token count of the whole minibatch (summed over
micro-batches, and over data-parallel ranks if gradients are averaged across them, times the world
size) so that the micro-batch losses sum to the full-batch token mean; or, for any mode, use
`token_weights` on the whole minibatch first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# ------------------------------------------------------------------------------------ registries

AdvantageFn = Callable[..., torch.Tensor]
PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
WeightFn = Callable[..., torch.Tensor]

ADVANTAGES: dict[str, AdvantageFn] = {}
POLICY_LOSSES: dict[str, PolicyLossFn] = {}
AGGREGATIONS: dict[str, WeightFn] = {}


def _register(table: dict, kind: str, name: str) -> Callable:
    def deco(fn):
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered (by {table[name].__name__})")
        table[name] = fn
        return fn

    return deco


def _get(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(table))}") from None


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register `fn(rewards (B,), group_ids (B,)) -> advantages (B,)` under `name`."""
    return _register(ADVANTAGES, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register `fn(logp, old_logp, adv, mask, ...) -> (per_token (C,T), stats)` under `name`."""
    return _register(POLICY_LOSSES, "policy loss", name)


def register_aggregation(name: str) -> Callable[[WeightFn], WeightFn]:
    """Decorator: register `fn(mask (C,T), context_traj_index, max_tokens, normalizer) -> weights (C,T)`."""
    return _register(AGGREGATIONS, "loss aggregation", name)


def get_advantage_fn(name: str) -> AdvantageFn:
    return _get(ADVANTAGES, "advantage estimator", name)


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    return _get(POLICY_LOSSES, "policy loss", name)


def get_aggregation_fn(name: str) -> WeightFn:
    return _get(AGGREGATIONS, "loss aggregation", name)


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


@register_advantage("grpo")
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


@register_advantage("drgrpo")
def drgrpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: r - mean_group (no std normalization). rewards (B,), group_ids (B,) -> (B,); group of 1 -> 0."""
    n, s, _ = _group_stats(rewards, group_ids)
    return (rewards.to(torch.float64) - s / n).to(rewards.dtype)


@register_advantage("rloo")
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


def broadcast_to_contexts(traj_adv: torch.Tensor, context_traj_index: torch.Tensor) -> torch.Tensor:
    """Multi-context broadcast: traj_adv (B,), context_traj_index (C,) long in [0, B) -> (C,).

    Context c gets the advantage of trajectory `context_traj_index[c]`.
    """
    return traj_adv[context_traj_index]


def token_advantages(ctx_adv: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """ctx_adv (C,), loss_mask (C,T) -> (C,T): each context's advantage on its masked tokens, 0 elsewhere."""
    return ctx_adv.to(loss_mask.device, torch.float32)[:, None] * (loss_mask > 0)


# ------------------------------------------------------------------------------------ log-probs

def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each token given its prefix: logits (C,T,V), token_ids (C,T) long -> (C,T) float32.

    Alignment: output[:, t] is log p(token_ids[:, t] | token_ids[:, :t]), read from logits[:, t-1]
    (the causal-LM shift); output[:, 0] is 0 (no prefix). Same convention as `Context.logprobs`.
    Memory: `gather - logsumexp` one row at a time, so no (C,T,V) log-softmax is materialized or
    saved for backward (logsumexp saves only its (T,) result).
    """
    out = torch.zeros(token_ids.shape, dtype=torch.float32, device=logits.device)
    if token_ids.shape[1] < 2:
        return out
    rows = []
    for c in range(logits.shape[0]):
        lg = logits[c, :-1].float()  # (T-1, V) predicts token_ids[c, 1:]
        tgt = token_ids[c, 1:, None]  # (T-1, 1)
        rows.append(lg.gather(-1, tgt).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.cat([out[:, :1], torch.stack(rows)], dim=1)


def predicting_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions whose next-token distribution scores a loss token: (C,T) mask -> (C,T) bool with
    out[:, t] = mask[:, t+1] > 0 (the causal-LM shift; the last position predicts nothing).

    Prompt and observation tokens carry no loss, so a learner needs logits only here: on a
    multi-turn context that is a small share of the positions, and the (positions, V) LM-head
    output is the largest tensor of the forward.
    """
    sel = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    sel[:, :-1] = mask[:, 1:] > 0
    return sel


def selected_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """`token_logprobs` from logits computed only at `sel` (see `predicting_positions`).

    logits (M,V) are the rows of positions `sel` (C,T) in row-major order, M = sel.sum();
    returns (C,T) float32 aligned like `token_logprobs` (the token after each selected position
    gets its log-prob), zeros elsewhere. Differentiable with respect to `logits`.
    """
    lg = logits.float()
    targets = token_ids[:, 1:][sel[:, :-1]]  # (M,) the token each selected position predicts
    lp = lg.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)
    return _scatter_next(lp, sel)


def selected_entropy(logits: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """`entropy_from_logits` from logits (M,V) computed only at `sel` (C,T): -> (C,T), zeros elsewhere."""
    lg = logits.float()
    return _scatter_next(torch.logsumexp(lg, dim=-1) - (torch.softmax(lg, dim=-1) * lg).sum(-1), sel)


def _scatter_next(values: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """(M,) values of selected positions -> (C,T) at the *next* token of each, zeros elsewhere."""
    inner = torch.zeros(sel[:, :-1].shape, dtype=values.dtype, device=values.device)
    inner = inner.masked_scatter(sel[:, :-1], values)
    return torch.cat([torch.zeros_like(inner[:, :1]), inner], dim=1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, aligned like `token_logprobs`: (C,T,V) -> (C,T) float32.

    output[:, t] is the entropy of the distribution token_ids[:, t] was drawn from (logits[:, t-1]);
    output[:, 0] is 0. H = logsumexp(l) - sum(softmax(l) * l), one row at a time.
    """
    C, T, _ = logits.shape
    out = torch.zeros((C, T), dtype=torch.float32, device=logits.device)
    if T < 2:
        return out
    rows = []
    for c in range(C):
        lg = logits[c, :-1].float()  # (T-1, V)
        rows.append(torch.logsumexp(lg, dim=-1) - (torch.softmax(lg, dim=-1) * lg).sum(-1))
    return torch.cat([out[:, :1], torch.stack(rows)], dim=1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate per token, with clip-higher (DAPO) and optional dual clip (verl).

    logp, old_logp, adv, mask: (C,T) -> per_token_loss (C,T) (0 where mask is 0), stats.
    ratio = exp(logp - old_logp) (log-ratio clamped to [-20, 20] as verl does);
    loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)); with `dual_clip` = c > 1 and
    A < 0 the loss is further capped at -A * c (bounds the update when ratio >> 1 on a bad token).
    stats (detached 0-d tensors, masked means): clip_frac (clip active), clip_frac_dual (dual clip
    active), approx_kl (mean of old_logp - logp, the "ppo_kl" of verl), ratio_mean.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (3 is usual), got {dual_clip}")
    mask = mask.to(logp.dtype)
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss1, loss2)
    clipped = loss2 > loss1
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        loss3 = -adv * dual_clip
        dual = (adv < 0) & (loss > loss3)
        loss = torch.where(adv < 0, torch.minimum(loss, loss3), loss)
    with torch.no_grad():
        stats = {
            "clip_frac": _masked_mean(clipped.float(), mask),
            "clip_frac_dual": _masked_mean(dual.float(), mask),
            "approx_kl": _masked_mean(-log_ratio, mask),
            "ratio_mean": _masked_mean(ratio, mask),
        }
    return loss * mask, stats


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 (low-variance, non-negative) estimator of KL(policy || ref) per token: (C,T), (C,T) -> (C,T).

    With d = ref_logp - logp: exp(d) - d - 1, d clamped to [-20, 20] and the result to [-10, 10]
    (verl's "low_var_kl"). Unbiased for the KL when tokens are sampled from the policy.
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


# ------------------------------------------------------------------------------------ aggregation

def _nonempty(mask: torch.Tensor) -> torch.Tensor:
    return (mask.sum(-1) > 0).to(mask.dtype)  # (C,) 1 for contexts with at least one masked token


@register_aggregation("token_mean")
def token_mean_weights(mask, context_traj_index=None, max_tokens=None, normalizer=None) -> torch.Tensor:
    """w = mask / N, N = masked tokens in the batch (or `normalizer`, e.g. the global count over micro-batches)."""
    if normalizer is None:
        return mask / mask.sum().clamp(min=1)
    if normalizer <= 0:
        raise ValueError(f"normalizer must be a positive token count, got {normalizer}")
    return mask / float(normalizer)


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean_weights(mask, context_traj_index=None, max_tokens=None, normalizer=None) -> torch.Tensor:
    """w[c,t] = mask / (n_c * C'), n_c = masked tokens of context c, C' = contexts with n_c > 0."""
    n_c = mask.sum(-1, keepdim=True).clamp(min=1)
    return mask / n_c / _nonempty(mask).sum().clamp(min=1)


@register_aggregation("traj_mean_token_mean")
def traj_mean_token_mean_weights(mask, context_traj_index=None, max_tokens=None, normalizer=None) -> torch.Tensor:
    """w[c,t] = mask / (n_traj(c) * B'), n_traj = masked tokens over all contexts of a trajectory, B' = such trajectories."""
    if context_traj_index is None:
        raise ValueError("traj_mean_token_mean needs context_traj_index (C,): the trajectory of each context")
    _, inv = torch.unique(context_traj_index.to(mask.device), return_inverse=True)
    per_traj = torch.zeros(int(inv.max()) + 1, dtype=mask.dtype, device=mask.device).index_add_(0, inv, mask.sum(-1))
    n_traj = (per_traj > 0).sum().clamp(min=1)
    return mask / per_traj[inv].clamp(min=1)[:, None] / n_traj


@register_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm_weights(mask, context_traj_index=None, max_tokens=None, normalizer=None) -> torch.Tensor:
    """Dr.GRPO: w = mask / (C' * max_tokens), C' = contexts with a masked token, max_tokens a fixed constant."""
    if max_tokens is None:
        raise ValueError("seq_mean_token_sum_norm needs max_tokens (a constant, e.g. the max response length)")
    return mask / (_nonempty(mask).sum().clamp(min=1) * float(max_tokens))


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    context_traj_index: torch.Tensor | None = None,
    max_tokens: int | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce per_token (C,T) over mask (C,T) to a scalar by `mode` (see the module docstring).

    context_traj_index (C,) is needed by `traj_mean_token_mean`, max_tokens by
    `seq_mean_token_sum_norm`; `normalizer` replaces the token count of `token_mean` (the global
    masked-token count when accumulating gradients over micro-batches); other modes reject it.
    """
    if normalizer is not None and mode != "token_mean":
        raise ValueError(f"normalizer only applies to token_mean; for {mode!r} use token_weights on the whole batch")
    mask = mask.to(per_token.dtype)
    w = get_aggregation_fn(mode)(mask, context_traj_index, max_tokens, normalizer)
    return (per_token * w).sum()


def token_weights(
    masks: list[torch.Tensor],
    context_traj_index: torch.Tensor | None = None,
    mode: str = "token_mean",
    max_tokens: int | None = None,
) -> list[torch.Tensor]:
    """Per-token weights of the whole minibatch, so that micro-batch losses add up exactly.

    masks: C tensors (T_c,) (unpadded loss masks), context_traj_index (C,) -> C tensors (T_c,) float32
    with sum_c sum_t per_token[c][t] * w[c][t] == aggregate(padded per_token, padded mask, mode, ...).
    """
    T = max((len(m) for m in masks), default=0)
    padded = torch.zeros((len(masks), T), dtype=torch.float32)
    for c, m in enumerate(masks):
        padded[c, : len(m)] = m.to(torch.float32)
    w = get_aggregation_fn(mode)(padded, context_traj_index, max_tokens, None)
    return [w[c, : len(m)] for c, m in enumerate(masks)]


# ------------------------------------------------------------------------------------ objective

def grpo_objective(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    old_logp: torch.Tensor,
    ctx_adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    agg: str = "token_mean",
    context_traj_index: torch.Tensor | None = None,
    max_tokens: int | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-context GRPO loss = pg_loss + kl_coef * kl - entropy_coef * entropy (each aggregated by `agg`).

    logits (C,T,V), token_ids (C,T), old_logp (C,T) sampling-time log-probs, ctx_adv (C,) each
    context's (trajectory's) advantage, mask (C,T) loss mask, ref_logp (C,T) or None (then no KL).
    Returns (loss scalar with grad, metrics of python floats: pg_loss, kl, entropy, clip_frac,
    clip_frac_dual, approx_kl, ratio_mean).
    """
    mask = mask.to(torch.float32)
    agg_kw = dict(mode=agg, context_traj_index=context_traj_index, max_tokens=max_tokens, normalizer=normalizer)
    logp = token_logprobs(logits, token_ids)
    adv = token_advantages(ctx_adv, mask)
    pg, stats = ppo_clip_loss(logp, old_logp, adv, mask, clip_low, clip_high, dual_clip)
    pg_loss = aggregate(pg, mask, **agg_kw)
    ent = entropy_from_logits(logits if entropy_coef > 0 else logits.detach())
    entropy = aggregate(ent, mask, **agg_kw)
    loss = pg_loss - entropy_coef * entropy
    metrics = {k: float(v) for k, v in stats.items()}
    if ref_logp is not None:
        kl = aggregate(kl_k3(logp, ref_logp), mask, **agg_kw)
        loss = loss + kl_coef * kl
        metrics["kl"] = float(kl.detach())
    metrics.update(pg_loss=float(pg_loss.detach()), entropy=float(entropy.detach()), loss=float(loss.detach()))
    return loss, metrics
