"""Learner overhead: memrl's DeepSpeed learner step vs a plain PyTorch loop on the same loss and batch.

Both compute the same multi-context GRPO loss (PPO clip, token-mean) on the same contexts with the
same model and AdamW; the ratio is memrl step time / plain step time. The plain loop computes the
LM head at every position, as a naive implementation does; memrl only where a loss token is
predicted, so the ratio falls as `--prompt-share` (the no-loss share of each context) grows. Also prints achieved FLOP/s
(6 x params x tokens per step) as a share of this machine's measured matmul peak.

    python -m memrl.bench.learner --model smollm2-135m-instruct --contexts 8 --length 256
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from memrl.bench.common import machine, matmul_peak_flops
from memrl.models import load_model
from memrl.records import Context, Trajectory
from memrl.rl import losses
from memrl.rl.learner import Learner, freeze_below
from memrl.testing import learner_sections


def batch(n: int, length: int, vocab: int, seed: int = 0, prompt_share: float = 0.5, prefix: int = 0
          ) -> list[Trajectory]:
    """`n` one-context trajectories of `length` random tokens, the first `prefix` of them the same in every context
    (a chat template and system prompt), the last (1 - prompt_share) of each the sampled (loss) tokens."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    prompt = int(length * prompt_share)
    if not 0 <= prefix <= prompt:
        raise ValueError(f"--prefix {prefix} must lie within the prompt ({prompt} tokens)")
    head = torch.randint(10, vocab, (prefix,), generator=g).tolist()
    for i in range(n):
        ids = head + torch.randint(10, vocab, (length - prefix,), generator=g).tolist()
        mask = [0] * prompt + [1] * (length - prompt)
        ctx = Context(ids, mask, [-2.0 if m else 0.0 for m in mask])
        trajs.append(Trajectory([ctx], reward=float(i % 2), advantage=1.0 if i % 2 else -1.0))
    return trajs


def plain_step(model, opt, trajs: list[Trajectory], clip: float = 0.2, autocast: bool = False) -> None:
    """The baseline: one GRPO step written plainly on single-context trajectories of equal length. Full
    logits on the (B, T) batch, PPO-clip objective (`losses.objective`, clip `clip` both ways) over the
    loss-mask tokens with token-mean weights, backward, gradient norm clipped to 1, `opt` step. `autocast`: the
    forward and backward in bf16 autocast over the fp32 weights (fp32 master weights and optimizer)."""
    ids = torch.tensor([t.contexts[0].token_ids for t in trajs])
    mask = torch.tensor([t.contexts[0].loss_mask for t in trajs], dtype=torch.float32)
    old = torch.tensor([t.contexts[0].logprobs for t in trajs])
    adv = torch.tensor([t.advantage for t in trajs])[:, None] * mask
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):  # ids: on the model's device
        logits = model(input_ids=ids).logits
    logp = losses.token_logprobs(logits.float(), ids)
    sel = mask > 0
    loss, _ = losses.objective(logp[sel], old[sel], adv[sel], mask[sel] / mask.sum(), clip_low=clip, clip_high=clip)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> dict:
    """`python -m memrl.bench.learner`: time memrl's learner step and `plain_step` on one random batch,
    print both with the overhead ratio and the share of matmul peak, and return those numbers."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--prompt-share", type=float, default=0.5,
                    help="share of each context that is prompt (no loss); memsearcher contexts are ~0.85")
    ap.add_argument("--prefix", type=int, default=0,
                    help="leading tokens every context shares (chat template + system prompt: ~100 for memsearcher); "
                         "> 0 also times the learner with learner.shared_prefix against the full forward")
    ap.add_argument("--train-layers", type=int, default=None, help="learner.train_layers (the quickstart trains 6)")
    ap.add_argument("--bf16", action="store_true",
                    help="also time memrl's learner and the plain loop under bf16 autocast (fp32 master weights): what "
                         "bf16 buys here (the other rows run in fp32, whatever memrl.device would choose)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zero-stage", type=int, default=2)
    args = ap.parse_args(argv)

    def learner(shared: bool, autocast: str = "off") -> Learner:
        # only this key is restored (not mock.patch.dict: that would also undo the LOCAL_RANK etc. the learner sets)
        before = os.environ.get("MEMRL_AUTOCAST")
        os.environ["MEMRL_AUTOCAST"] = autocast  # memrl.device.learner_autocast, read as the learner starts
        try:
            return Learner(args.model, **learner_sections(zero_stage=args.zero_stage, lr=1e-6, clip_high=0.2,
                                                          micro_batch_tokens=args.contexts * args.length,
                                                          train_layers=args.train_layers, shared_prefix=shared))
        finally:
            os.environ.pop("MEMRL_AUTOCAST") if before is None else os.environ.update(MEMRL_AUTOCAST=before)

    full = learner(False)
    vocab = full.module.config.vocab_size
    trajs = batch(args.contexts, args.length, vocab, prompt_share=args.prompt_share, prefix=args.prefix)
    rows = {"memrl learner (DeepSpeed), full forward": timed(lambda: full.train_step(trajs), args.repeats)}
    if args.prefix:
        shared = learner(True)
        rows["memrl learner (DeepSpeed), shared prefix"] = timed(lambda: shared.train_step(trajs), args.repeats)
    if args.bf16:
        cast = learner(bool(args.prefix), "bfloat16")
        rows["memrl learner (DeepSpeed), bf16 autocast"] = timed(lambda: cast.train_step(trajs), args.repeats)
    # what `algorithm.old_logprobs: recompute` (the default `auto` here unless engine and learner are both fp32)
    # ran before each update until session 18: a no-grad forward over the step's contexts for the proximal
    # log-probs, which the learner now takes from the update's own forward (Learner._correct)
    default, default_row = ((cast, "memrl learner (DeepSpeed), bf16 autocast") if args.bf16 else
                            (shared, "memrl learner (DeepSpeed), shared prefix") if args.prefix else
                            (full, "memrl learner (DeepSpeed), full forward"))
    contexts = [c for t in trajs for c in t.contexts]
    proximal = timed(lambda: default.context_logprobs(contexts), args.repeats)
    model = load_model(args.model)
    if args.train_layers is not None:
        freeze_below(model, args.train_layers)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    rows["plain PyTorch loop (logits at every position)"] = timed(lambda: plain_step(model, opt, trajs), args.repeats)
    if args.bf16:
        rows["plain PyTorch loop, bf16 autocast"] = timed(lambda: plain_step(model, opt, trajs, autocast=True),
                                                          args.repeats)

    params = sum(p.numel() for p in model.parameters())
    tokens = args.contexts * args.length
    peak = matmul_peak_flops()
    # memrl's default path (learner.shared_prefix on): the shared-prefix row when the contexts share a prefix
    t_memrl = rows["memrl learner (DeepSpeed), shared prefix" if args.prefix else "memrl learner (DeepSpeed), full forward"]
    t_plain = rows["plain PyTorch loop (logits at every position)"]
    achieved = 6 * params * tokens / t_memrl
    out = {"memrl_step_s": t_memrl, "plain_step_s": t_plain, "overhead_ratio": t_memrl / t_plain,
           "learner_tokens_per_s": tokens / t_memrl, "achieved_flops": achieved, "peak_flops": peak,
           "peak_fraction": achieved / peak, "rows": rows}
    print(f"machine: {machine()}")
    print(f"model {args.model} ({params / 1e6:.1f}M params), {args.contexts} contexts x {args.length} tokens "
          f"({100 * args.prompt_share:.0f}% prompt, the first {args.prefix} shared), ZeRO-{args.zero_stage}, "
          f"train_layers {args.train_layers}")
    print("| path | step s | tokens/s |\n|---|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {t:.2f} | {tokens / t:.0f} |")
    print(f"overhead ratio memrl / plain: {out['overhead_ratio']:.3f}")
    out["proximal_forward_s"] = proximal
    print(f"the separate no-grad proximal forward the mismatch correction ran before session 18 (learner "
          f"recomputes: {default.recompute}): {proximal:.2f} s; the default step without it / with it: "
          f"{rows[default_row] / (rows[default_row] + proximal):.3f}")
    if args.prefix:
        out["shared_over_full"] = (rows["memrl learner (DeepSpeed), shared prefix"]
                                   / rows["memrl learner (DeepSpeed), full forward"])
        print(f"shared prefix / full forward step time: {out['shared_over_full']:.3f}")
    if args.bf16:
        out["bf16_over_fp32"] = rows["plain PyTorch loop, bf16 autocast"] / t_plain
        out["memrl_bf16_over_fp32"] = rows["memrl learner (DeepSpeed), bf16 autocast"] / t_memrl
        print(f"bf16 autocast / fp32 step time: memrl {out['memrl_bf16_over_fp32']:.3f}, plain loop "
              f"{out['bf16_over_fp32']:.3f} (CPU capability {torch.backends.cpu.get_cpu_capability()})")
    print(f"achieved {achieved / 1e9:.1f} GFLOP/s (6 x params x tokens: overstated, the head runs at loss positions "
          f"and the shared prefix once) of a measured {peak / 1e9:.1f} GFLOP/s matmul peak "
          f"({100 * out['peak_fraction']:.0f}%)")
    return out


if __name__ == "__main__":
    main()
