"""The learner: a DeepSpeed engine that runs multi-context GRPO (and the SFT warm start) on contexts.

One optimizer step consumes a minibatch of trajectories. Their contexts are cut into micro-batches
by a padded-token budget; every token's loss is weighted globally *before* micro-batching
(`rl.losses.token_weights`), so gradient accumulation over any number of micro-batches gives exactly
the full-batch loss. DeepSpeed runs in unmanaged-accumulation mode: we call `backward` per
micro-batch and `step` once. CPU: fp32 + gloo; GPU: bf16 + NCCL (from `memrl.device`).

A `Layout` decides what one batch row is: one context padded to the row length (`PADDED`, the
default), or one trajectory with all its contexts end to end under a block-causal mask (`PACKED`,
MEM1 packed mode, `learner.packed`; see `rl.packing`). Both give the same per-token tensors, so the
loss and its gradients do not depend on the layout (up to float error).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from memrl import lora
from memrl.device import plan
from memrl.models import load_model
from memrl.net import free_port
from memrl.records import Context, Trajectory

if TYPE_CHECKING:
    from memrl.recipes.schema import AlgorithmCfg, LearnerCfg, RolloutCfg
from memrl.rl import losses
from memrl.rl.packing import pack_contexts

log = logging.getLogger(__name__)


def _logits_at(model, inputs: dict[str, torch.Tensor], sel: torch.Tensor) -> torch.Tensor:
    """LM-head logits (M,V) at the positions `sel` (R,L) only: the decoder runs on every token, the
    vocabulary projection only where a loss token is predicted (like TRL's `logits_to_keep`, but per
    row): the (positions, V) logits are the largest tensor of the forward."""
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state  # (R,L,H)
    return model.get_output_embeddings()(hidden[sel])


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `base_lr` over `warmup_steps` optimizer steps, then constant."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


_SOLO_MARK = "MEMRL_SOLO_WORLD"


def init_distributed(backend: str) -> None:
    """Join (or, when launched alone, create) the torch.distributed group DeepSpeed needs."""
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    # A single local process: a world of one on a fresh loopback port. The variables we set are marked,
    # so a child process that inherits them (e.g. `memrl train` started from a test) picks its own port
    # instead of colliding with the parent's store (EADDRINUSE).
    if "RANK" not in os.environ or os.environ.get(_SOLO_MARK) == "1":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port("127.0.0.1")), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ[_SOLO_MARK] = "1"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def freeze_below(model: torch.nn.Module, train_layers: int) -> None:
    """Freeze the embeddings and all but the top `train_layers` decoder blocks (partial fine-tuning).
    The embeddings stay frozen even when K covers every block.

    Autograd then stops at the first trainable block, so the backward pass and the optimizer state
    shrink with K while the forward stays full: the knob that fits RL on a 2-core CPU into minutes.
    """
    blocks = model.model.layers
    if train_layers < 0:
        raise ValueError(f"train_layers must be >= 0, got {train_layers}")
    model.model.embed_tokens.requires_grad_(False)
    for block in blocks[: max(0, len(blocks) - train_layers)]:  # K >= depth: every block trains
        block.requires_grad_(False)


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

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device: torch.device | str) -> Batch:
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, *(x.to(device) for x in (
            self.keep, self.mask, self.old_logp, self.weights, self.adv, self.is_w)))


def _loss_tensors(rows: list[list[Context]], weights: list[list[torch.Tensor]], advs: list[list[float]], L: int,
                  starts: list[list[int]], is_weights: list[list[torch.Tensor]] | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """keep, mask, old_logp, weights, adv, is_w (R,L) of rows whose contexts start at `starts` (end to end from
    there); `is_weights` like `weights` (None: 1 on every token)."""
    keep, mask, old, w, adv, is_w = (torch.zeros((len(rows), L)) for _ in range(6))
    for r, row in enumerate(rows):
        row_is = is_weights[r] if is_weights is not None else [1.0] * len(row)
        for c, s, wc, a, iw in zip(row, starts[r], weights[r], advs[r], row_is, strict=True):
            e = s + len(c)
            keep[r, s + 1:e] = 1.0
            mask[r, s:e] = torch.tensor(c.loss_mask, dtype=torch.float32)
            old[r, s:e] = torch.tensor(c.logprobs)
            w[r, s:e] = wc
            adv[r, s:e] = a
            is_w[r, s:e] = iw
    return keep, mask, old, w, adv * (mask > 0), is_w


def padded_batch(rows: list[list[Context]], weights: list[list[torch.Tensor]], advs: list[list[float]],
                 pad_id: int, dtype: torch.dtype, is_weights: list[list[torch.Tensor]] | None = None) -> Batch:
    """One context per row, right-padded; a 2D padding mask (the model adds the causal part). `is_weights`:
    each context's (T_c,) importance weights on the policy-gradient term, shaped like `weights` (None: all 1)."""
    ctxs = [c for (c,) in rows]
    L = max(len(c) for c in ctxs)
    ids = torch.full((len(ctxs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(ctxs), L), dtype=torch.long)
    for r, c in enumerate(ctxs):
        ids[r, :len(c)] = torch.tensor(c.token_ids)
        attn[r, :len(c)] = 1
    return Batch({"input_ids": ids, "attention_mask": attn},
                 *_loss_tensors(rows, weights, advs, L, [[0]] * len(rows), is_weights))


def packed_batch(rows: list[list[Context]], weights: list[list[torch.Tensor]], advs: list[list[float]],
                 pad_id: int, dtype: torch.dtype, is_weights: list[list[torch.Tensor]] | None = None) -> Batch:
    """One trajectory per row, its contexts packed end to end (`rl.packing`), right-padded to the longest pack;
    `is_weights` as in `padded_batch`.

    Each padding token is packed as its own 1-token context: it attends only to itself (no all-masked
    softmax row, so no NaN) and nothing attends to it; it carries zero loss weight.
    """
    L = max(sum(len(c) for c in row) for row in rows)
    packs = [pack_contexts([c.token_ids for c in row] + [[pad_id]] * (L - sum(len(c) for c in row)), dtype)
             for row in rows]
    inputs = {k: torch.cat([p.model_inputs()[k] for p in packs]) for k in ("input_ids", "position_ids",
                                                                          "attention_mask")}
    starts = [[s for s, _ in p.segments[:len(row)]] for p, row in zip(packs, rows, strict=True)]
    return Batch(inputs, *_loss_tensors(rows, weights, advs, L, starts, is_weights))


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
    #   (`losses.objective(is_weight=...)`): 1.0 for fresh contexts, min(pi_prox / pi_behav, is_clip) for stale ones

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


def run_step(trajectories: list[Trajectory], sft: bool, version: int | None, loss_agg: str, max_tokens: int,
             train_shares: Callable[[Part], list[tuple[dict[str, float], dict]]], max_staleness: int = 0) -> dict:
    """One optimizer step, whoever runs it (one Learner, or the ranks of a LearnerGroup): the versions checked
    (at most `max_staleness` behind `version`), the loss weights computed over the whole minibatch,
    `train_shares(part)` -> each rank's (summed stats, step info), then the step's metrics (with the staleness
    histogram of the contexts: `staleness_K` = contexts K versions behind)."""
    t0 = time.perf_counter()
    if version is not None:
        check_versions(trajectories, version, max_staleness)
    part = minibatch(trajectories, loss_agg, max_tokens, sft)
    if not part.contexts:
        return {"skipped": 1.0, "reason_no_tokens": 1.0}
    results = train_shares(part)
    metrics = step_metrics([t for t, _ in results], [i for _, i in results], part, time.perf_counter() - t0)
    if version is not None and max_staleness:
        for lag in range(max_staleness + 1):
            metrics[f"staleness_{lag}"] = float(sum(version - v == lag for v in part.versions))
    return metrics


def step_metrics(totals: list[dict[str, float]], infos: list[dict], part: Part, seconds: float) -> dict:
    """One step's metrics from every rank's summed stats and step info (the step is global: rank 0's info)."""
    summed: dict[str, float] = {}
    for t in totals:
        for k, v in t.items():
            summed[k] = summed.get(k, 0.0) + v
    metrics = losses.finish_stats(summed)
    metrics.pop("tokens", None)
    metrics.update(infos[0], train_tokens=summed.get("tokens", 0.0), learner_time=seconds,
                   learner_tokens_per_s=part.tokens / seconds, contexts=float(len(part.contexts)))
    return metrics


# Metrics of one minibatch's step that count something (tokens, contexts, skipped steps): a GRPO step's value is
# their sum over its minibatches. `staleness_K` (contexts K versions behind) are matched by prefix.
COUNT_METRICS = frozenset({"train_tokens", "contexts", "offpolicy_tokens", "skipped", "reason_no_tokens"})
COUNT_PREFIXES = ("staleness_",)


def merge_minibatch_metrics(parts: list[dict]) -> dict:
    """The metrics of one GRPO step from those of its minibatches' optimizer steps (`run_step`, in order): counts
    (`COUNT_METRICS`, `staleness_*`) are summed (a minibatch without the key counts 0); every other value is
    averaged over the minibatches that report it (a minibatch skipped for having no token reports no loss)."""
    keys = dict.fromkeys(k for p in parts for k in p)
    out = {}
    for k in keys:
        if k in COUNT_METRICS or k.startswith(COUNT_PREFIXES):
            out[k] = float(sum(p.get(k, 0.0) for p in parts))
        else:
            values = [p[k] for p in parts if k in p]
            out[k] = sum(values) / len(values)
    return out


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_ranks(flag: bool) -> bool:
    """True when `flag` is True on every rank."""
    if _world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=plan().collective_device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item())


def _max_over_ranks(n: int) -> int:
    if _world_size() == 1:
        return n
    t = torch.tensor([n], device=plan().collective_device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


class VersionMismatch(RuntimeError):
    """A trajectory sampled by other weights than the learner's, in synchronous mode."""


def check_versions(trajectories: list[Trajectory], version: int, max_staleness: int = 0) -> None:
    """Every context must have been sampled by weight `version` (synchronous training is on-policy), or by one
    at most `max_staleness` versions older (bounded staleness: `algorithm.max_staleness`)."""
    bad = sorted({v for t in trajectories for v in t.context_versions() if not 0 <= version - v <= max_staleness})
    if bad:
        rule = ("in synchronous mode every rollout must use the latest weights (a worker missed a weight sync)"
                if max_staleness == 0 else f"algorithm.max_staleness allows versions {version - max_staleness}.."
                                           f"{version}")
        raise VersionMismatch(f"contexts sampled by weight version(s) {bad}, the learner is at version {version}: "
                              f"{rule}")


class Learner:
    """Owns the trainable model (a DeepSpeed engine), its optimizer and, when KL is on, a frozen reference.

    Built from recipe sections by keyword: `learner` (engine, optimizer, micro-batching), `algorithm`
    (the loss), `rollout` (the sampling temperature the log-probs are taken at, and the generation
    budget that is Dr.GRPO's constant).
    """

    def __init__(self, model_name: str, *, learner: LearnerCfg, algorithm: AlgorithmCfg, rollout: RolloutCfg,
                 seed: int = 0) -> None:
        import deepspeed

        self.cfg, self.algo = learner, algorithm
        self.temperature = rollout.temperature
        self.max_tokens = rollout.max_tokens
        self.layout = PACKED if learner.packed else PADDED
        self.device = plan()
        init_distributed(self.device.dist_backend)
        torch.manual_seed(seed)
        model = load_model(model_name, dtype=self.device.dtype)
        if learner.train_layers is not None:
            freeze_below(model, learner.train_layers)
        if learner.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if learner.lora_rank:
                model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
        if learner.lora_rank:
            model = lora.wrap(model, learner.lora_rank, learner.lora_alpha, learner.lora_targets)
        model.config.use_cache = False
        self.pad_id = int(model.config.pad_token_id or 0)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=self._ds_config()
        )
        self.ref = None
        if algorithm.kl_coef > 0:
            self.ref = load_model(model_name, dtype=self.device.dtype).to(self.device.torch_device).eval()
            self.ref.requires_grad_(False)
        self.steps = 0  # optimizer steps taken (drives the LR schedule)

    def _ds_config(self) -> dict:
        cfg = self.cfg
        return {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # we call backward per micro-batch and step once
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                                      "betas": [0.9, 0.999], "eps": cfg.adam_eps, "torch_adam": True}},
            "bf16": {"enabled": self.device.dtype == torch.bfloat16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    # ------------------------------------------------------------------ training
    def train_step(self, trajectories: list[Trajectory], sft: bool = False, lr: float | None = None,
                   version: int | None = None) -> dict:
        """One optimizer step on these trajectories (GRPO with their `.advantage`, or SFT cross-entropy).

        `version`: the learner's weight version; every trajectory must have been sampled by it
        (`check_versions`). SFT on oracle trajectories passes None.
        """
        return run_step(trajectories, sft, version, self.algo.loss_agg, self.max_tokens,
                        lambda part: [self.train_part(part, sft, lr, version)], self.algo.max_staleness)

    def train_part(self, part: Part, sft: bool, lr: float | None = None,
                   version: int | None = None) -> tuple[dict[str, float], dict]:
        """This rank's share of one optimizer step: backward over `part` (weights computed for the whole
        minibatch), then the step every rank takes together. Returns summed stats and {grad_norm, skipped, lr}.

        Data-parallel ranks average gradients, so each rank's loss is scaled by the world size: the update is
        then the minibatch's whole loss, however it was split. A non-finite loss is still backpropagated (every
        rank runs the same collectives); its non-finite gradients then make every rank skip the step together
        (`_step`), which also clears them.
        """
        self._set_lr(lr if lr is not None else lr_at(self.steps, self.cfg.lr, self.cfg.warmup_steps))
        offpolicy = {}
        if self.algo.max_staleness and not sft and version is not None:
            part, offpolicy = self.correct_stale(part, version)
        self.engine.train()
        totals, _ = self._passes(part, sft, backward=True)
        for k, v in offpolicy.items():
            totals[k] = totals.get(k, 0.0) + v
        stepped = self._step()
        grad_norm = float(self.engine.get_global_grad_norm() or 0.0) if stepped else float("nan")
        if stepped:
            self.steps += 1
        return totals, {"grad_norm": grad_norm, "skipped": float(not stepped), "lr": self._get_lr()}

    @torch.no_grad()
    def correct_stale(self, part: Part, version: int) -> tuple[Part, dict[str, float]]:
        """Decoupled PPO for the contexts of `part` sampled before `version` (bounded staleness): each stale
        context's tokens get the PPO ratio against the proximal policy (these weights, before the update: a
        no-grad forward) and their policy-gradient term (only: not the KL or entropy terms, as in AReaL) times
        the importance weight min(pi_prox / pi_behav, is_clip) (`Part.is_weights`), pi_behav being that context's
        own sampling log-probs. Fresh contexts are left as they are. Every rank must call it (ZeRO-3 forwards are
        collectives); returns the corrected part and summed stats (`losses.truncated_is_weights`)."""
        stale = [i for i, v in enumerate(part.versions) if v < version]
        prox = self.context_logprobs([part.contexts[i] for i in stale])
        contexts, is_weights = list(part.contexts), list(part.is_weights)
        stats: dict[str, float] = {}
        for i, lp in zip(stale, prox, strict=True):
            c = part.contexts[i]
            at = torch.tensor(c.loss_mask, dtype=torch.bool)
            at[0] = False  # a context's first token has no prefix: never a loss token
            w, st = losses.truncated_is_weights(lp[at], torch.tensor(c.logprobs)[at], self.algo.is_clip)
            iw = is_weights[i].clone()
            iw[at] = iw[at] * w
            contexts[i], is_weights[i] = Context(c.token_ids, c.loss_mask, lp.tolist(), c.weight_version), iw
            for k, v in st.items():
                stats[k] = stats.get(k, 0.0) + v
        return Part(contexts, part.traj, part.adv, part.weights, part.versions, is_weights), stats

    @torch.no_grad()
    def context_logprobs(self, contexts: list[Context]) -> list[torch.Tensor]:
        """Log-probs (T_c,) of each context's loss tokens under the current weights at the sampling temperature
        (0 elsewhere), one padded micro-batch after another; every rank runs as many forwards as the busiest."""
        self.engine.eval()
        batches = micro_batches([len(c) for c in contexts], self.cfg.micro_batch_tokens)
        out: list[torch.Tensor] = [torch.zeros(0)] * len(contexts)  # in the order of `contexts` (batches regroup)
        for k in range(_max_over_ranks(len(batches))):
            rows = [[contexts[i]] for i in batches[k]] if k < len(batches) else None
            b = (PADDED.batch(rows, [[torch.zeros(len(r[0]))] for r in rows], [[0.0]] * len(rows), self.pad_id,
                              self.device.dtype) if rows else self._empty_batch()).to(self.device.torch_device)
            sel = losses.predicting_positions(b.mask * b.keep)
            self._forward_prologue()
            logits = _logits_at(self.engine.module, b.inputs, sel)
            logp = losses.selected_logprobs(logits, losses.at_loss_tokens(b.input_ids, sel), self.temperature).cpu()
            if rows is None:
                continue
            counts = sel.sum(-1).tolist()
            for i, lp, row_sel in zip(batches[k], logp.split(counts), sel.cpu(), strict=True):
                full = torch.zeros(len(contexts[i]))
                full[1:][row_sel[:len(full) - 1]] = lp
                out[i] = full
        return out

    @torch.no_grad()
    def score(self, trajectories: list[Trajectory], sft: bool = False) -> dict:
        """The loss statistics of these trajectories under the current weights, without an update: the same
        batches, forward and objective as `train_step` (e.g. `logp_diff_abs`, the mean |learner log-prob -
        sampling log-prob| over sampled tokens, which is ~0 when rollout and training agree)."""
        self.engine.eval()
        totals, _ = self._passes(minibatch(trajectories, self.algo.loss_agg, self.max_tokens, sft), sft,
                                 backward=False)
        return losses.finish_stats(totals)

    def _passes(self, part: Part, sft: bool, backward: bool) -> tuple[dict[str, float], bool]:
        """Forward (and backward) every micro-batch of `part`; returns summed stats and whether all losses were
        finite. Every rank runs as many micro-batches as the rank with the most (padding with empty ones), since
        ZeRO-3 gathers parameters collectively in each forward."""
        world = _world_size()
        rows = self.layout.rows(part.traj)
        row_len = [sum(len(part.contexts[i]) for i in row) for row in rows]
        batches = micro_batches(row_len, self.cfg.micro_batch_tokens)
        count = _max_over_ranks(len(batches)) if backward else len(batches)
        totals: dict[str, float] = {}
        finite = True
        for k in range(count):
            if k < len(batches):
                idx = batches[k]
                batch = self.layout.batch([[part.contexts[i] for i in rows[r]] for r in idx],
                                          [[part.weights[i] for i in rows[r]] for r in idx],
                                          [[part.adv[i] for i in rows[r]] for r in idx], self.pad_id,
                                          self.device.dtype, [[part.is_weights[i] for i in rows[r]] for r in idx])
            else:
                batch = self._empty_batch()
            loss, stats = self._micro_loss(batch, sft)
            if not torch.isfinite(loss):
                log.warning("non-finite loss (%s) at optimizer step %d: update skipped", float(loss.detach()),
                            self.steps)
                finite = False
            if backward:
                self.engine.backward(loss * world)
            for key, v in stats.items():
                totals[key] = totals.get(key, 0.0) + v
        return totals, finite

    def _forward_prologue(self) -> None:
        """What `DeepSpeedEngine.forward` does before a forward, for our forward that calls the decoder and the
        LM head directly (`_logits_at`): tell the ZeRO optimizer a new micro-batch starts. Without it ZeRO-3
        never advances its micro-step and each backward overwrites the previous micro-batch's gradients instead
        of adding to them (measured: grad norm 2.45 instead of 3.00 over 3 micro-batches, tiny model);
        `test_learner.py::test_micro_batching_gives_the_same_update_as_one_batch[3]` checks it."""
        from deepspeed.runtime.base_optimizer import ZeROOptimizer

        if isinstance(self.engine.optimizer, ZeROOptimizer):
            self.engine.optimizer.clear_backward_seen_flag()

    def _empty_batch(self) -> Batch:
        """A micro-batch with no loss token (one 2-token padding row): it takes part in the collectives only."""
        ctx = Context([self.pad_id] * 2, [0, 0], [0.0, 0.0])
        return PADDED.batch([[ctx]], [[torch.zeros(2)]], [[0.0]], self.pad_id, self.device.dtype)

    def _micro_loss(self, batch: Batch, sft: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """A forward pass at the positions that predict loss tokens, then the objective of `rl.losses`."""
        b = batch.to(self.device.torch_device)
        sel = losses.predicting_positions(b.mask * b.keep)
        targets = losses.at_loss_tokens(b.input_ids, sel)
        w = losses.at_loss_tokens(b.weights, sel)
        self._forward_prologue()
        logits = _logits_at(self.engine.module, b.inputs, sel)
        if sft:
            return losses.sft_objective(losses.selected_logprobs(logits, targets), w)
        T, al = self.temperature, self.algo
        logp = losses.selected_logprobs(logits, targets, T)
        ref_logp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_logp = losses.selected_logprobs(_logits_at(self.ref, b.inputs, sel), targets, T)
        entropy = losses.selected_entropy(logits if al.entropy_coef > 0 else logits.detach(), T)
        return losses.objective(logp, losses.at_loss_tokens(b.old_logp, sel), losses.at_loss_tokens(b.adv, sel), w,
                                clip_low=al.clip_low, clip_high=al.clip_high, dual_clip=al.dual_clip,
                                ref_logp=ref_logp, kl_coef=al.kl_coef, entropy=entropy, entropy_coef=al.entropy_coef,
                                is_weight=losses.at_loss_tokens(b.is_w, sel))

    def _step(self) -> bool:
        """Apply the accumulated gradients unless they are non-finite; returns whether it stepped.

        ZeRO 1-3 check the global gradient norm themselves and skip a non-finite step (fp32 too);
        stage 0 has no such check, so we look at the gradients before stepping.
        """
        if self.cfg.zero_stage == 0:  # each rank's own gradients, before the step reduces them: agree first
            finite = _all_ranks(all(bool(torch.isfinite(p.grad).all()) for p in self.engine.module.parameters()
                                    if p.grad is not None))
            if not finite:
                log.warning("non-finite gradient at optimizer step %d: update skipped", self.steps)
                self.engine.optimizer.zero_grad()
                return False
        self.engine.step()
        if getattr(self.engine.optimizer, "overflow", False):
            log.warning("non-finite gradient norm at optimizer step %d: update skipped", self.steps)
            return False
        return True

    def reset_optimizer(self) -> None:
        """Forget the optimizer's state (Adam's moments and step counts) and restart the LR warm-up: the SFT ->
        GRPO handoff, so that GRPO's first updates are GRPO's and not SFT momentum. The next step initializes
        the state as a fresh optimizer does (torch's AdamW creates it lazily when it is empty)."""
        base = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)  # ZeRO / bf16 wrap torch's AdamW
        base.state.clear()
        self.steps = 0

    def reset_reference(self) -> None:
        """Make the KL reference the current policy (a no-op without KL): the policy GRPO starts from."""
        if self.ref is not None:
            self.ref.load_state_dict(self.state_dict())

    def load_reference(self, model_dir: str) -> None:
        """Load the KL reference from a Hugging Face directory (after a resume: the warm start's weights)."""
        if self.ref is not None:
            self.ref = load_model(model_dir, dtype=self.device.dtype).to(self.device.torch_device).eval()
            self.ref.requires_grad_(False)

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _get_lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ weights out
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) weights on CPU, in HF names, for weight sync and export; every tensor owns its
        storage. (ZeRO 1-2 keep parameters as views into one flat buffer: pickling such a view, as Ray does
        to return it, writes the whole buffer, once per tensor; SmolLM2's 273 tensors took 17 GB.)"""
        import contextlib

        import deepspeed

        module = self.engine.module
        if lora.is_lora(module):  # base + adapter merged, in the base model's names (ZeRO 0-2: nothing to gather)
            return lora.merged_state_dict(module)
        gathered = (deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
                    if self.cfg.zero_stage == 3 else contextlib.nullcontext())
        with gathered:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def weights_blob(self) -> bytes:
        """The weights as the engines load them, as one safetensors byte string (memrl.weight_sync); with LoRA
        only the adapter (memrl.lora)."""
        from memrl.weight_sync import state_dict_blob

        if lora.is_lora(self.engine.module):
            return lora.adapter_blob(self.engine.module)

        return state_dict_blob(self.state_dict())

    def weight_transfer(self, client, address: str, port: int):
        """This rank's end of vLLM's weight-transfer protocol (memrl.weight_transfer): rank 0 opens the group at
        address:port with the engines behind `client` and sends; the others take part in the ZeRO-3 gathers.
        Every rank must call it, then `send_weights()` on the returned engine for each sync."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        from memrl.weight_transfer import LearnerSource, trainer_init_info

        info = trainer_init_info(self.device.weight_transfer_backend, address, port, client.world_size, self.rank)
        source = LearnerSource(self.engine.module, zero3=self.cfg.zero_stage == 3)
        return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank() if _world_size() > 1 else 0

    def save_state(self, out: Path) -> None:
        """Engine state (model, optimizer; each rank writes its shard) under out/engine, and rank 0 writes the
        full weights as a Hugging Face directory under out/model. Every rank must call it (ZeRO-3 gathers)."""
        self.engine.save_checkpoint(str(out / "engine"), tag="state", save_latest=False)
        if lora.is_lora(self.module):  # base + adapter merged once (LoRA runs ZeRO 0-2: nothing to gather)
            if self.rank == 0:
                lora.merged_model(self.module).save_pretrained(out / "model", safe_serialization=True)
            return
        weights = self.state_dict()
        if self.rank == 0:
            self.module.save_pretrained(out / "model", state_dict=weights, safe_serialization=True)

    def load_state(self, path: Path) -> None:
        """Restore what `save_state` wrote (every rank its own shard)."""
        self.engine.load_checkpoint(str(path / "engine"), tag="state")
