"""Roofline: how close the learner and the rollout engine come to this machine's measured limits.

Measures (1) the fp32 matmul peak (best of N square matmuls, torch threads = CPU cores) and the memory
bandwidth (best of N large tensor copies, read + write bytes); then (2) learner throughput: forward +
backward of the model on B x T random tokens, and (3) rollout throughput: one vLLM generate call of
B prompts x T tokens, each decoding exactly N tokens. FLOPs are counted as

    learner: 6 x N_matmul x tokens + 12 x n_layers x d_model x T x tokens  (PaLM convention, attention
             not discounted for causality; N_matmul = trainable params minus the input embedding, a lookup)
    rollout: 2 x N_matmul x (prompt + generated tokens)  (attention not counted)

Decoding reads every weight once per step, so it is also bounded by bandwidth: one step of a batch of b
sequences takes >= s x params bytes / bandwidth (s = 4 in fp32, 2 in bf16), i.e. <= b x bandwidth / (s x params)
tokens/s. `--engines` times several engines (dtype, eager or compiled) in one run.

    python -m memrl.bench.roofline --model smollm2-135m-instruct --batch 8 --length 256
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from memrl.bench.common import machine, matmul_peak_flops
from memrl.bench.rollout import raw_generate
from memrl.models import load_model, resolve_model_dir
from memrl.recipes.schema import RolloutCfg


def peak_flops(n: int = 2048, tries: int = 5) -> float:
    """Best of `tries` measurements of a square fp32 matmul (3 matmuls each), FLOP/s."""
    return max(matmul_peak_flops(n, torch.float32, repeats=3) for _ in range(tries))


def memory_bandwidth(mib: int = 512, tries: int = 5) -> float:
    """Best of `tries` copies of a `mib`-MiB fp32 tensor, bytes/s (read + write counted)."""
    src = torch.randn(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: pages touched
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def matmul_params(model: torch.nn.Module) -> int:
    """Trainable parameters that take part in a matmul (all but the input embedding lookup)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p.requires_grad and p is not emb)


def learner_seconds(model: torch.nn.Module, batch: int, length: int, repeats: int) -> float:
    """Best time of one forward + backward (cross-entropy on the batch itself) of B x T random tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (batch, length), generator=g)
    model.train()

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None, backend=None) -> dict:
    """Run the roofline; `backend` reuses an already started VLLMBackend on the same model (tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8, help="learner sequences per forward/backward")
    ap.add_argument("--length", type=int, default=256, help="learner tokens per sequence")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=16, help="rollout: concurrent sequences")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=64, help="rollout: tokens decoded per sequence (EOS ignored)")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--copy-mib", type=int, default=512)
    ap.add_argument("--engines", default="float32:eager",
                    help="vLLM engines to time, DTYPE:MODE,... (float32|bfloat16 : eager|compiled), each against the "
                         "bandwidth bound of its own dtype")
    args = ap.parse_args(argv)

    torch.set_num_threads(os.cpu_count() or 1)
    peak = peak_flops(args.matmul_n)
    bandwidth = memory_bandwidth(args.copy_mib)

    model = load_model(args.model)
    cfg = model.config
    n_all = sum(p.numel() for p in model.parameters())
    n_mm = matmul_params(model)
    tokens = args.batch * args.length
    t_learn = learner_seconds(model, args.batch, args.length, args.repeats)
    learn_flops = 6 * n_mm * tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.length * tokens
    del model

    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(10, cfg.vocab_size, (args.prompts, args.prompt_tokens), generator=g).tolist()
    lengths = [args.gen_tokens] * args.prompts
    gen_tokens = sum(lengths)
    roll_flops = 2 * n_mm * (args.prompts * args.prompt_tokens + gen_tokens)
    out = {"peak_flops": peak, "bandwidth_bytes_s": bandwidth, "learner_s": t_learn,
           "learner_flops": learn_flops / t_learn, "learner_fraction": learn_flops / t_learn / peak,
           "learner_tok_s": tokens / t_learn}
    rows = []
    for i, (dtype, mode) in enumerate(_engines(args.engines if backend is None else "float32:eager")):
        t_roll = _rollout_seconds(backend, args.model, dtype, mode, prompts, lengths)
        step_bytes = torch.empty((), dtype=getattr(torch, dtype)).element_size() * n_all  # weights read per step
        bound = args.prompts * bandwidth / step_bytes  # the whole batch advances one token per step
        tag = "" if i == 0 else f"[{dtype}:{mode}]"  # the first engine's numbers keep the plain keys
        out.update({f"rollout_s{tag}": t_roll, f"rollout_flops{tag}": roll_flops / t_roll,
                    f"rollout_fraction{tag}": roll_flops / t_roll / peak, f"rollout_tok_s{tag}": gen_tokens / t_roll,
                    f"decode_bw_bound_tok_s{tag}": bound, f"decode_bw_fraction{tag}": gen_tokens / t_roll / bound})
        rows.append((dtype, mode, t_roll, step_bytes, bound))
    print(f"machine: {machine()}")
    print(f"model {args.model}: {n_all / 1e6:.1f}M params, {n_mm / 1e6:.1f}M in matmuls (no input embedding), "
          f"{cfg.num_hidden_layers} layers, d_model {cfg.hidden_size}")
    print(f"measured fp32 matmul peak ({args.matmul_n}^3, best of 5): {peak / 1e9:.1f} GFLOP/s; "
          f"memory bandwidth ({args.copy_mib} MiB copy, read+write): {bandwidth / 1e9:.1f} GB/s")
    print("| work | seconds | tokens/s | achieved GFLOP/s | fraction of peak |\n|---|---|---|---|---|")
    print(f"| learner fwd+bwd, {args.batch} x {args.length} tokens | {t_learn:.2f} | {out['learner_tok_s']:.0f} | "
          f"{out['learner_flops'] / 1e9:.1f} | {out['learner_fraction']:.3f} |")
    for dtype, mode, t_roll, _, _ in rows:
        print(f"| vLLM rollout ({dtype}, {mode}), {args.prompts} x ({args.prompt_tokens} prompt + "
              f"{args.gen_tokens} generated) | {t_roll:.2f} | {gen_tokens / t_roll:.0f} | "
              f"{roll_flops / t_roll / 1e9:.1f} | {roll_flops / t_roll / peak:.3f} |")
    print("learner FLOPs = 6 x N_matmul x tokens + 12 x layers x d_model x T x tokens; "
          "rollout FLOPs = 2 x N_matmul x (prompt + generated tokens)")
    for dtype, mode, t_roll, step_bytes, bound in rows:
        print(f"decode bandwidth bound ({dtype}, {mode}): {step_bytes / 1e6:.0f} MB of weights per step / "
              f"{bandwidth / 1e9:.1f} GB/s = {1e3 * step_bytes / bandwidth:.1f} ms per step -> <= {bound:.0f} "
              f"generated tokens/s at batch {args.prompts}; measured {gen_tokens / t_roll:.0f} "
              f"({gen_tokens / t_roll / bound:.3f} of bound, prefill time included)")
    return out


def _engines(spec: str) -> list[tuple[str, str]]:
    """"float32:eager,bfloat16:compiled" -> [("float32", "eager"), ("bfloat16", "compiled")]."""
    out = []
    for item in spec.split(","):
        dtype, _, mode = item.strip().partition(":")
        if dtype not in ("float32", "bfloat16") or mode not in ("eager", "compiled"):
            raise SystemExit(f"--engines item {item!r}: want DTYPE:MODE, DTYPE float32|bfloat16, MODE eager|compiled")
        out.append((dtype, mode))
    return out


def _rollout_seconds(backend, model: str, dtype: str, mode: str, prompts: list[list[int]], lengths: list[int]
                     ) -> float:
    """One timed generate call on `backend`, or on a fresh engine of this dtype and mode (closed after)."""
    own = backend is None
    if own:
        from memrl.agents import VLLMBackend

        backend = VLLMBackend(resolve_model_dir(model), rollout=RolloutCfg(max_model_len=2048, dtype=dtype,
                                                                            enforce_eager=mode == "eager"))
    try:
        raw_generate(backend, prompts[:2], [4, 4])  # warm-up (a compiled engine compiles here or at start)
        return raw_generate(backend, prompts, lengths)
    finally:
        if own:
            backend.close()


if __name__ == "__main__":
    main()
