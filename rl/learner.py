"""The learner: a DeepSpeed engine that runs multi-context GRPO (and the SFT warm start) on contexts.

One optimizer step consumes a minibatch of trajectories. Their contexts are cut into micro-batches
by a padded-token budget; every token's loss is weighted globally *before* micro-batching
(`rl.losses.token_weights`), so gradient accumulation over any number of micro-batches gives exactly
the full-batch loss. DeepSpeed runs in unmanaged-accumulation mode: we call `backward` per
micro-batch and `step` once. CPU: fp32 + gloo; GPU: bf16 + NCCL (from `memrl.device`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import torch

from memrl.device import plan
from memrl.models import load_model
from memrl.rl import losses
from memrl.rl.trajectory import Context, Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnerConfig:
    zero_stage: int = 2
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    micro_batch_tokens: int = 4096
    gradient_checkpointing: bool = False
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = None
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    loss_agg: str = "token_mean"
    train_layers: int | None = None  # train only the top K decoder blocks (+ final norm, lm_head); None = all


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
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
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


class Learner:
    """Owns the trainable model (a DeepSpeed engine), its optimizer and, when KL is on, a frozen reference."""

    def __init__(self, model_name: str, cfg: LearnerConfig, seed: int = 0) -> None:
        import deepspeed

        self.cfg = cfg
        self.device = plan()
        init_distributed(self.device.dist_backend)
        torch.manual_seed(seed)
        model = load_model(model_name, dtype=self.device.dtype)
        if cfg.train_layers is not None:
            freeze_below(model, cfg.train_layers)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        self.pad_id = int(model.config.pad_token_id or 0)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=self._ds_config()
        )
        self.ref = None
        if cfg.kl_coef > 0:
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
                                                      "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True}},
            "bf16": {"enabled": self.device.dtype == torch.bfloat16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    # ------------------------------------------------------------------ training
    def train_step(self, trajectories: list[Trajectory], sft: bool = False, lr: float | None = None) -> dict:
        """One optimizer step on these trajectories (GRPO with their `.advantage`, or SFT cross-entropy)."""
        t0 = time.perf_counter()
        contexts, ctx_traj, ctx_adv = [], [], []
        for ti, traj in enumerate(trajectories):
            for ctx in traj.contexts:
                if ctx.num_generated:
                    contexts.append(ctx)
                    ctx_traj.append(ti)
                    ctx_adv.append(traj.advantage)
        if not contexts:
            return {"skipped": 1.0, "reason_no_tokens": 1.0}
        self._set_lr(lr if lr is not None else lr_at(self.steps, self.cfg.lr, self.cfg.warmup_steps))
        masks = [torch.tensor(c.loss_mask, dtype=torch.float32) for c in contexts]
        weights = losses.token_weights(masks, torch.tensor(ctx_traj), "token_mean" if sft else self.cfg.loss_agg,
                                       max_tokens=max(len(m) for m in masks))
        sums: dict[str, float] = {}
        tokens = 0
        skipped = False
        self.engine.train()
        for idx in micro_batches([len(c) for c in contexts], self.cfg.micro_batch_tokens):
            loss, stats = self._micro_loss([contexts[i] for i in idx], [weights[i] for i in idx],
                                           [ctx_adv[i] for i in idx], sft)
            if not torch.isfinite(loss):
                log.warning("non-finite loss (%s) at optimizer step %d: update skipped", float(loss), self.steps)
                skipped = True
                break
            self.engine.backward(loss)
            tokens += sum(int(sum(contexts[i].loss_mask)) for i in idx)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
        if not skipped:
            skipped = not self._step()
        else:
            self.engine.optimizer.zero_grad()
        grad_norm = float(self.engine.get_global_grad_norm() or 0.0) if not skipped else float("nan")
        if not skipped:
            self.steps += 1
        dt = time.perf_counter() - t0
        metrics = {k: v for k, v in sums.items()}
        metrics.update(grad_norm=grad_norm, skipped=float(skipped), train_tokens=float(tokens),
                       learner_time=dt, learner_tokens_per_s=sum(len(c) for c in contexts) / dt,
                       lr=self._get_lr(), contexts=float(len(contexts)))
        return metrics

    def _micro_loss(self, ctxs: list[Context], weights: list[torch.Tensor], advs: list[float], sft: bool):
        dev = self.device.torch_device
        T = max(len(c) for c in ctxs)
        ids = torch.full((len(ctxs), T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(ctxs), T), dtype=torch.long)
        mask = torch.zeros((len(ctxs), T))
        old = torch.zeros((len(ctxs), T))
        w = torch.zeros((len(ctxs), T))
        for r, c in enumerate(ctxs):
            n = len(c)
            ids[r, :n] = torch.tensor(c.token_ids)
            attn[r, :n] = 1
            mask[r, :n] = torch.tensor(c.loss_mask, dtype=torch.float32)
            old[r, :n] = torch.tensor(c.logprobs)
            w[r, :n] = weights[r]
        ids, attn, mask, old, w = (x.to(dev) for x in (ids, attn, mask, old, w))
        logits = self.engine(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
        logp = losses.token_logprobs(logits, ids)
        if sft:
            per_token = -logp
            loss = (per_token * w * mask).sum()
            return loss, {"sft_loss": float(loss.detach())}
        adv = losses.token_advantages(torch.tensor(advs, device=dev), mask)
        pg, st = losses.ppo_clip_loss(logp, old, adv, mask, self.cfg.clip_low, self.cfg.clip_high, self.cfg.dual_clip)
        per_token = pg
        stats = {"pg_loss": float((pg.detach() * w * mask).sum())}
        wsum = float((w * mask).sum())
        stats["clip_frac"] = float(torch.as_tensor(st["clip_frac"]).detach()) * wsum
        stats["approx_kl"] = float(torch.as_tensor(st["approx_kl"]).detach()) * wsum
        ent = losses.masked_entropy(logits if self.cfg.entropy_coef > 0 else logits.detach(), mask)
        stats["entropy"] = float((ent.detach() * w * mask).sum())
        if self.cfg.entropy_coef > 0:
            per_token = per_token - self.cfg.entropy_coef * ent
        if self.ref is not None:
            with torch.no_grad():
                ref_logp = losses.token_logprobs(self.ref(input_ids=ids, attention_mask=attn).logits.float(), ids)
            kl = losses.kl_k3(logp, ref_logp)
            stats["kl"] = float((kl.detach() * w * mask).sum())
            per_token = per_token + self.cfg.kl_coef * kl
        return (per_token * w * mask).sum(), stats

    def _step(self) -> bool:
        """Apply the accumulated gradients unless they are non-finite; returns whether it stepped.

        ZeRO 1-3 check the global gradient norm themselves and skip a non-finite step (fp32 too);
        stage 0 has no such check, so we look at the gradients before stepping.
        """
        if self.cfg.zero_stage == 0:
            finite = all(torch.isfinite(p.grad).all() for p in self.engine.module.parameters() if p.grad is not None)
            if not finite:
                log.warning("non-finite gradient at optimizer step %d: update skipped", self.steps)
                self.engine.optimizer.zero_grad()
                return False
        self.engine.step()
        if getattr(self.engine.optimizer, "overflow", False):
            log.warning("non-finite gradient norm at optimizer step %d: update skipped", self.steps)
            return False
        return True

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _get_lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ weights out
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) weights on CPU, in HF names, for weight sync and export."""
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module
