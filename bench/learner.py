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
import time

import torch

from memrl.bench.common import machine, matmul_peak_flops
from memrl.models import load_model
from memrl.records import Context, Trajectory
from memrl.rl import losses
from memrl.rl.learner import Learner
from memrl.testing import learner_sections


def batch(n: int, length: int, vocab: int, seed: int = 0, prompt_share: float = 0.5) -> list[Trajectory]:
    g = torch.Generator().manual_seed(seed)
    trajs = []
    prompt = int(length * prompt_share)
    for i in range(n):
        ids = torch.randint(10, vocab, (length,), generator=g).tolist()
        mask = [0] * prompt + [1] * (length - prompt)
        ctx = Context(ids, mask, [-2.0 if m else 0.0 for m in mask])
        trajs.append(Trajectory([ctx], reward=float(i % 2), advantage=1.0 if i % 2 else -1.0))
    return trajs


def plain_step(model, opt, trajs: list[Trajectory], clip: float = 0.2) -> None:
    """The baseline: one GRPO step written plainly on single-context trajectories of equal length. Full
    logits on the (B, T) batch, PPO-clip objective (`losses.objective`, clip `clip` both ways) over the
    loss-mask tokens with token-mean weights, backward, gradient norm clipped to 1, `opt` step."""
    ids = torch.tensor([t.contexts[0].token_ids for t in trajs])
    mask = torch.tensor([t.contexts[0].loss_mask for t in trajs], dtype=torch.float32)
    old = torch.tensor([t.contexts[0].logprobs for t in trajs])
    adv = torch.tensor([t.advantage for t in trajs])[:, None] * mask
    logp = losses.token_logprobs(model(input_ids=ids).logits.float(), ids)
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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zero-stage", type=int, default=2)
    args = ap.parse_args(argv)

    learner = Learner(args.model, **learner_sections(zero_stage=args.zero_stage, lr=1e-6, clip_high=0.2,
                                                     micro_batch_tokens=args.contexts * args.length))
    vocab = learner.module.config.vocab_size
    trajs = batch(args.contexts, args.length, vocab, prompt_share=args.prompt_share)
    t_memrl = timed(lambda: learner.train_step(trajs), args.repeats)

    model = load_model(args.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    t_plain = timed(lambda: plain_step(model, opt, trajs), args.repeats)

    params = sum(p.numel() for p in model.parameters())
    tokens = args.contexts * args.length
    peak = matmul_peak_flops()
    achieved = 6 * params * tokens / t_memrl
    out = {"memrl_step_s": t_memrl, "plain_step_s": t_plain, "overhead_ratio": t_memrl / t_plain,
           "learner_tokens_per_s": tokens / t_memrl, "achieved_flops": achieved, "peak_flops": peak,
           "peak_fraction": achieved / peak}
    print(f"machine: {machine()}")
    print(f"model {args.model} ({params / 1e6:.1f}M params), {args.contexts} contexts x {args.length} tokens "
          f"({100 * args.prompt_share:.0f}% prompt), ZeRO-{args.zero_stage}")
    print("| path | step s | tokens/s |\n|---|---|---|")
    print(f"| memrl learner (DeepSpeed) | {t_memrl:.2f} | {tokens / t_memrl:.0f} |")
    print(f"| plain PyTorch loop (logits at every position) | {t_plain:.2f} | {tokens / t_plain:.0f} |")
    print(f"overhead ratio memrl / plain: {out['overhead_ratio']:.3f}")
    print(f"achieved {achieved / 1e9:.1f} GFLOP/s of a measured {peak / 1e9:.1f} GFLOP/s matmul peak "
          f"({100 * out['peak_fraction']:.0f}%)")
    return out


if __name__ == "__main__":
    main()
