"""Batch layout: how a minibatch of trajectories becomes the rows and micro-batches the learner runs.

`minibatch` collects every context with a sampled token and its loss weights, computed over the WHOLE
minibatch (`rl.losses.token_weights`) so that any cut (micro-batches, ranks: `split`) adds up to the full-batch
loss. `micro_batches` groups rows under a padded-token budget. A `Layout` decides what one row is: one context
padded to the row length (`PADDED`) or one trajectory with all its contexts end to end under a block-causal mask
(`PACKED`, MEM1 packed mode, `learner.packed`; see `rl.packing`). Both give the same per-token tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from memrl.records import Context, Trajectory
from memrl.rl import losses
from memrl.rl.packing import pack_contexts


def micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Group context indices so that (longest length x count) <= budget; longest first, order kept stable."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass
class Batch:
    """One micro-batch: model inputs and per-token loss tensors, each (R, L) for R rows padded to length L."""

    inputs: dict[str, torch.Tensor]  # forward kwargs: input_ids (R,L), attention_mask (R,L) or (R,1,L,L), [position_ids]
    keep: torch.Tensor  # (R,L) 0 at each context's first token (no prefix: log-prob 0, no entropy), 1 elsewhere
    mask: torch.Tensor  # (R,L) loss mask (0 on padding)
    old_logp: torch.Tensor  # (R,L) sampling-time log-probs
    weights: torch.Tensor  # (R,L) global per-token loss weights (`losses.token_weights`), 0 on padding
    adv: torch.Tensor  # (R,L) the context's (trajectory's) advantage on masked tokens, 0 elsewhere
    is_w: torch.Tensor  # (R,L) importance weight on the policy-gradient term only (`Part.is_weights`), 0 on padding
    seq: torch.Tensor  # (R,L) long: which context of the micro-batch each token belongs to (0, 1, ...; -1 on padding)
    prox: torch.Tensor  # (R,L) 1 on the tokens of contexts trained against the proximal policy (`Learner.train_part`)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device: torch.device | str) -> Batch:
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, *(x.to(device) for x in (
            self.keep, self.mask, self.old_logp, self.weights, self.adv, self.is_w, self.seq, self.prox)))


def _loss_tensors(rows: list[list[Context]], weights: list[list[torch.Tensor]], advs: list[list[float]], L: int,
                  starts: list[list[int]], is_weights: list[list[torch.Tensor]] | None = None,
                  prox: list[list[bool]] | None = None) -> tuple[torch.Tensor, ...]:
    """keep, mask, old_logp, weights, adv, is_w, seq, prox (R,L) of rows whose contexts start at `starts` (end to
    end from there); `is_weights` like `weights` (None: 1 on every token), `prox` one flag per context (None: 0)."""
    keep, mask, old, w, adv, is_w, px = (torch.zeros((len(rows), L)) for _ in range(7))
    seq = torch.full((len(rows), L), -1, dtype=torch.long)
    n = 0
    for r, row in enumerate(rows):
        row_is = is_weights[r] if is_weights is not None else [1.0] * len(row)
        row_px = prox[r] if prox is not None else [False] * len(row)
        for c, s, wc, a, iw, p in zip(row, starts[r], weights[r], advs[r], row_is, row_px, strict=True):
            e = s + len(c)
            keep[r, s + 1:e] = 1.0
            mask[r, s:e] = torch.tensor(c.loss_mask, dtype=torch.float32)
            old[r, s:e] = torch.tensor(c.logprobs)
            w[r, s:e] = wc
            adv[r, s:e] = a
            is_w[r, s:e] = iw
            seq[r, s:e] = n
            px[r, s:e] = float(p)
            n += 1
    return keep, mask, old, w, adv * (mask > 0), is_w, seq, px


def padded_batch(rows: list[list[Context]], weights: list[list[torch.Tensor]], advs: list[list[float]],
                 pad_id: int, dtype: torch.dtype, is_weights: list[list[torch.Tensor]] | None = None,
                 prox: list[list[bool]] | None = None) -> Batch:
    """One context per row, right-padded; a 2D padding mask (the model adds the causal part). `is_weights`:
    each context's (T_c,) importance weights on the policy-gradient term, shaped like `weights` (None: all 1);
    `prox`: whether each context is trained against the proximal policy (None: none is)."""
    ctxs = [c for (c,) in rows]
    L = max(len(c) for c in ctxs)
    ids = torch.full((len(ctxs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(ctxs), L), dtype=torch.long)
    for r, c in enumerate(ctxs):
        ids[r, :len(c)] = torch.tensor(c.token_ids)
        attn[r, :len(c)] = 1
    return Batch({"input_ids": ids, "attention_mask": attn},
                 *_loss_tensors(rows, weights, advs, L, [[0]] * len(rows), is_weights, prox))


def packed_batch(rows: list[list[Context]], weights: list[list[torch.Tensor]], advs: list[list[float]],
                 pad_id: int, dtype: torch.dtype, is_weights: list[list[torch.Tensor]] | None = None,
                 prox: list[list[bool]] | None = None) -> Batch:
    """One trajectory per row, its contexts packed end to end (`rl.packing`), right-padded to the longest pack;
    `is_weights` and `prox` as in `padded_batch`.

    Each padding token is packed as its own 1-token context: it attends only to itself (no all-masked
    softmax row, so no NaN) and nothing attends to it; it carries zero loss weight.
    """
    L = max(sum(len(c) for c in row) for row in rows)
    packs = [pack_contexts([c.token_ids for c in row] + [[pad_id]] * (L - sum(len(c) for c in row)), dtype)
             for row in rows]
    inputs = {k: torch.cat([p.model_inputs()[k] for p in packs]) for k in ("input_ids", "position_ids",
                                                                          "attention_mask")}
    starts = [[s for s, _ in p.segments[:len(row)]] for p, row in zip(packs, rows, strict=True)]
    return Batch(inputs, *_loss_tensors(rows, weights, advs, L, starts, is_weights, prox))


@dataclass(frozen=True)
class Layout:
    """What one batch row holds: `rows` groups context indices (given each context's trajectory) into rows,
    `batch` builds a micro-batch of such rows."""

    rows: Callable[[list[int]], list[list[int]]]
    batch: Callable[..., Batch]


def _one_per_trajectory(ctx_traj: list[int]) -> list[list[int]]:
    rows: dict[int, list[int]] = {}
    for i, t in enumerate(ctx_traj):
        rows.setdefault(t, []).append(i)
    return list(rows.values())


PADDED = Layout(rows=lambda ctx_traj: [[i] for i in range(len(ctx_traj))], batch=padded_batch)
PACKED = Layout(rows=_one_per_trajectory, batch=packed_batch)


@dataclass
class Part:
    """Contexts of a minibatch (or of one rank's share of it) with everything their loss needs."""

    contexts: list[Context]  # (C,) contexts with at least one sampled token
    traj: list[int]  # (C,) index of each context's trajectory in the minibatch (contexts of one stay together)
    adv: list[float]  # (C,) its trajectory's advantage
    weights: list[torch.Tensor]  # C tensors (T_c,): per-token loss weights computed over the WHOLE minibatch
    versions: list[int]  # (C,) the weight version that sampled each context
    is_weights: list[torch.Tensor]  # C tensors (T_c,): importance weight on each token's policy-gradient term only
    #   (`losses.objective(is_weight=...)`), 1.0 from `minibatch`; the learner multiplies in min(pi_prox / pi_behav,
    #   is_clip) in the forward for the contexts it corrects (`Learner._correct`)

    @property
    def tokens(self) -> int:
        return sum(len(c) for c in self.contexts)

    def take(self, trajs: set[int]) -> Part:
        keep = [i for i, t in enumerate(self.traj) if t in trajs]
        return Part([self.contexts[i] for i in keep], [self.traj[i] for i in keep], [self.adv[i] for i in keep],
                    [self.weights[i] for i in keep], [self.versions[i] for i in keep],
                    [self.is_weights[i] for i in keep])


def minibatch(trajectories: list[Trajectory], loss_agg: str, max_tokens: int | None, sft: bool = False) -> Part:
    """Every context with a sampled token, with its trajectory's advantage and its global loss weights (by
    `loss_agg`; the SFT warm start always takes the token mean)."""
    mode = "token_mean" if sft else loss_agg
    contexts, traj, adv, versions = [], [], [], []
    for ti, t in enumerate(trajectories):
        for ctx, v in zip(t.contexts, t.context_versions(), strict=True):
            if ctx.num_generated:
                contexts.append(ctx)
                traj.append(ti)
                adv.append(t.advantage)
                versions.append(v)
    masks = [torch.tensor(c.loss_mask, dtype=torch.float32) for c in contexts]
    weights = losses.token_weights(masks, torch.tensor(traj), mode, max_tokens=max_tokens) if contexts else []
    return Part(contexts, traj, adv, weights, versions, [torch.ones(len(c)) for c in contexts])


def split(part: Part, ranks: int) -> list[Part]:
    """`ranks` shares of a minibatch, whole trajectories each, balanced by tokens (longest trajectory first to
    the least-loaded rank). The weights stay those of the whole minibatch, so the shares' losses add up to it."""
    tokens: dict[int, int] = {}
    for c, t in zip(part.contexts, part.traj, strict=True):
        tokens[t] = tokens.get(t, 0) + len(c)
    load, owned = [0] * ranks, [set() for _ in range(ranks)]
    for t in sorted(tokens, key=lambda t: (-tokens[t], t)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        load[r] += tokens[t]
        owned[r].add(t)
    return [part.take(o) for o in owned]
