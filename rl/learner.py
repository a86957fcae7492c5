"""The learner: a DeepSpeed engine that runs multi-context GRPO (and the SFT warm start) on contexts.

One optimizer step consumes a minibatch of trajectories. Their contexts are cut into micro-batches
by a padded-token budget; every token's loss is weighted globally *before* micro-batching
(`rl.losses.token_weights`), so gradient accumulation over any number of micro-batches gives exactly
the full-batch loss. DeepSpeed runs in unmanaged-accumulation mode: we call `backward` per
micro-batch and `step` once. CPU: fp32 + gloo; GPU: bf16 + NCCL (from `memrl.device`).

The learner is split by concern: `rl.batching` (what a row and a micro-batch hold: padded or packed
layouts), `rl.step` (one step's version checks and metrics, shared with `LearnerGroup`), this module (the
engine, its forward/backward and optimizer step) and `rl.learner_state` (weights out: sync, export,
checkpoints). The loss itself is `rl.losses.objective`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

from memrl import lora
from memrl.device import plan
from memrl.models import load_model
from memrl.net import free_port
from memrl.records import Context, Trajectory
from memrl.rl import losses
from memrl.rl.batching import PACKED, PADDED, Batch, Part, micro_batches, minibatch
from memrl.rl.learner_state import LearnerWeights
from memrl.rl.prefix import logits_at
from memrl.rl.step import run_step

if TYPE_CHECKING:
    from memrl.recipes.schema import AlgorithmCfg, LearnerCfg, RolloutCfg

log = logging.getLogger(__name__)


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `base_lr` over `warmup_steps` optimizer steps, then constant."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


_SOLO_MARK = "MEMRL_SOLO_WORLD"


def init_distributed(backend: str, timeout: float = 1800.0) -> None:
    """Join (or, when launched alone, create) the torch.distributed group DeepSpeed needs; a collective that waits
    longer than `timeout` seconds (`learner.step_timeout`) raises instead of hanging."""
    from datetime import timedelta

    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    # A single local process: a world of one on a fresh loopback port. The variables we set are marked,
    # so a child process that inherits them (e.g. `memrl train` started from a test) picks its own port
    # instead of colliding with the parent's store (EADDRINUSE).
    if "RANK" not in os.environ or os.environ.get(_SOLO_MARK) == "1":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port("127.0.0.1")), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ[_SOLO_MARK] = "1"
    deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timedelta(seconds=timeout))


DEEPSPEED_MIN = "0.19.8"  # the oldest release tested with unmanaged accumulation under ZeRO 0-3 (pyproject pins it)


def check_deepspeed() -> None:
    """Refuse a DeepSpeed that does not know `managed_gradient_accumulation`: an older release ignores the key and,
    under ZeRO-2, keeps only the last micro-batch's gradient at each step, silently (the learner calls `backward`
    per micro-batch and `step` once; tests/rl/test_learner.py checks the sum over micro-batches)."""
    import deepspeed
    from deepspeed.runtime import constants
    from deepspeed.runtime.engine import DeepSpeedEngine

    if not (hasattr(constants, "MANAGED_GRADIENT_ACCUMULATION") and hasattr(DeepSpeedEngine,
                                                                          "managed_gradient_accumulation")):
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__} does not support managed_gradient_accumulation: "
                           f"memrl needs deepspeed>={DEEPSPEED_MIN} (pip install -U 'deepspeed>={DEEPSPEED_MIN}')")


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


class Learner(LearnerWeights):
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
        # the shared-prefix forward (rl/prefix.py) needs the decoder's cache (off under activation checkpointing)
        # and runs two forwards where ZeRO-3 ranks must run the same number of collective ones
        self.share_prefix = learner.shared_prefix and not learner.gradient_checkpointing and learner.zero_stage != 3
        self.device = plan()
        self.recompute = self.device.recompute_old_logprobs(algorithm, rollout)  # algorithm.old_logprobs
        check_deepspeed()
        init_distributed(self.device.dist_backend, learner.step_timeout)
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
        self.ref = self._reference(model_name) if algorithm.kl_coef > 0 else None
        self.steps = 0  # optimizer steps taken (drives the LR schedule)

    def _reference(self, model_name: str) -> torch.nn.Module:
        """The frozen KL reference. Under ZeRO-3 it is sharded over the ranks like the policy (a DeepSpeed engine
        with no optimizer: each rank holds 1/ranks of it, gathered layer by layer in its forward), instead of a
        full copy on every rank; otherwise a plain module on the device."""
        import deepspeed

        ref = load_model(model_name, dtype=self.device.dtype)
        ref.requires_grad_(False)
        if self.cfg.zero_stage != 3:
            return ref.to(self.device.torch_device).eval()
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                  "bf16": {"enabled": self.device.dtype == torch.bfloat16}, "steps_per_print": 10**9}
        self._ref_engine, *_ = deepspeed.initialize(model=ref, config=config)
        return self._ref_engine.module.eval()

    def _set_reference(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy full (HF-named) weights into the reference; under ZeRO-3 every rank calls it (the gather is a
        collective) and rank 0's copy is what the shards take."""
        import contextlib

        import deepspeed

        params = list(self.ref.parameters())
        zero3 = self.cfg.zero_stage == 3
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0) if zero3 else contextlib.nullcontext():
            if not zero3 or torch.distributed.get_rank() == 0:
                with torch.no_grad():
                    self.ref.load_state_dict(state_dict)

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
        self.engine.train()
        totals, _ = self._passes(part, sft, backward=True, prox=None if sft else self.proximal(part, version))
        stepped = self._step()
        grad_norm = float(self.engine.get_global_grad_norm() or 0.0) if stepped else float("nan")
        if stepped:
            self.steps += 1
        return totals, {"grad_norm": grad_norm, "skipped": float(not stepped), "lr": self._get_lr()}

    def proximal(self, part: Part, version: int | None) -> list[bool] | None:
        """Which contexts of `part` are trained against the proximal policy (decoupled PPO: `_correct`): all of them
        with `algorithm.old_logprobs: recompute` (the engine/learner mismatch), else those sampled before
        `version` when `algorithm.max_staleness` allows stale samples; None when none is."""
        if self.recompute:
            return [True] * len(part.contexts)
        if self.algo.max_staleness and version is not None:
            flags = [v < version for v in part.versions]
            return flags if any(flags) else None
        return None

    def _correct(self, logp: torch.Tensor, behav: torch.Tensor, is_w: torch.Tensor, at: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Decoupled PPO (AReaL) at the loss tokens `at` (M,) bool of contexts trained against the proximal policy:
        the PPO ratio against pi_prox and the policy-gradient term (only: not the KL or entropy terms) times
        min(pi_prox / pi_behav, is_clip) (`losses.truncated_is_weights`), pi_behav being the engine's sampling
        log-probs `behav` (M,). pi_prox is these weights before the update, and every forward of a minibatch runs
        before its optimizer step, so pi_prox is this very forward's `logp` (M,), detached: no second forward
        recomputes it. Returns the old log-probs and importance weights (M,) to use, and summed stats (with
        `old_logprobs: recompute` also mismatch_logp_abs = |pi_prox - pi_behav| and mismatch_k3, the k3 estimate
        of the KL between them)."""
        prox = logp.detach()
        w, stats = losses.truncated_is_weights(prox[at], behav[at], self.algo.is_clip)
        if self.recompute:
            stats = {**stats, "mismatch_logp_abs": float((prox[at] - behav[at]).abs().sum()),
                     "mismatch_k3": float(losses.kl_k3(behav[at], prox[at]).sum())}  # KL(engine || learner)
        is_w = is_w.clone()
        is_w[at] = is_w[at] * w
        return torch.where(at, prox, behav), is_w, stats

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
            logits = self._logits(self.engine.module, b.inputs, sel)
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

    def _passes(self, part: Part, sft: bool, backward: bool, prox: list[bool] | None = None
                ) -> tuple[dict[str, float], bool]:
        """Forward (and backward) every micro-batch of `part` (`prox`: which contexts are trained against the
        proximal policy, `proximal`); returns summed stats and whether all losses were finite. Every rank runs as
        many micro-batches as the rank with the most (padding with empty ones), since ZeRO-3 gathers parameters
        collectively in each forward."""
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
                                          self.device.dtype, [[part.is_weights[i] for i in rows[r]] for r in idx],
                                          None if prox is None else [[prox[i] for i in rows[r]] for r in idx])
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
        LM head directly (`rl.prefix.logits_at`): tell the ZeRO optimizer a new micro-batch starts. Without it ZeRO-3
        never advances its micro-step and each backward overwrites the previous micro-batch's gradients instead
        of adding to them (measured: grad norm 2.45 instead of 3.00 over 3 micro-batches, tiny model);
        `test_learner.py::test_micro_batching_gives_the_same_update_as_one_batch[3]` checks it."""
        from deepspeed.runtime.base_optimizer import ZeROOptimizer

        if isinstance(self.engine.optimizer, ZeROOptimizer):
            self.engine.optimizer.clear_backward_seen_flag()

    def _logits(self, model, inputs: dict[str, torch.Tensor], sel: torch.Tensor) -> torch.Tensor:
        """fp32 logits at the positions `sel` (`rl.prefix.logits_at`), computed in the device's learner precision:
        under bf16 autocast over the fp32 weights on CPUs with native bf16 (`memrl.device.learner_autocast`)."""
        with self.device.autocast():
            logits = logits_at(model, inputs, sel, self.share_prefix)
        return logits.float()

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
        logits = self._logits(self.engine.module, b.inputs, sel)
        if sft:
            return losses.sft_objective(losses.selected_logprobs(logits, targets), w)
        T, al = self.temperature, self.algo
        logp = losses.selected_logprobs(logits, targets, T)
        ref_logp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_logp = losses.selected_logprobs(self._logits(self.ref, b.inputs, sel), targets, T)
        entropy = losses.selected_entropy(logits if al.entropy_coef > 0 else logits.detach(), T)
        old, is_w = losses.at_loss_tokens(b.old_logp, sel), losses.at_loss_tokens(b.is_w, sel)
        at, corrected = losses.at_loss_tokens(b.prox, sel) > 0, {}
        if bool(at.any()):
            old, is_w, corrected = self._correct(logp, old, is_w, at)
        loss, stats = losses.objective(logp, old, losses.at_loss_tokens(b.adv, sel), w,
                                       clip_low=al.clip_low, clip_high=al.clip_high, dual_clip=al.dual_clip,
                                       ref_logp=ref_logp, kl_coef=al.kl_coef, entropy=entropy,
                                       entropy_coef=al.entropy_coef, is_weight=is_w,
                                       seq=losses.at_loss_tokens(b.seq, sel), policy_loss=al.policy_loss)
        return loss, {**stats, **corrected}

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
            self._set_reference(self.state_dict())

    def load_reference(self, model_dir: str) -> None:
        """Load the KL reference from a Hugging Face directory (after a resume: the warm start's weights)."""
        if self.ref is not None:
            self._set_reference(load_model(model_dir, dtype=self.device.dtype).state_dict())

    def reference_elements(self) -> int:
        """Reference parameters this rank holds (its ZeRO-3 shard, or all of them): what `memrl recipe plan`
        counts as the reference's memory per rank."""
        if self.ref is None:
            return 0
        # a ZeRO-3 parameter is an empty placeholder outside a gather; its shard is `ds_tensor`
        return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in self.ref.parameters())

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _get_lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])
