"""The learner on random-init models built from real configs vs a plain PyTorch loop, for a GPU box.

Needs only torch, transformers and DeepSpeed (no vLLM, no Ray), so it runs where those cannot. For each
config (SmolLM2-135M and Qwen2.5-1.5B by default; `tiny` for a smoke run) it writes a random-init model
in the device's dtype, then times memrl's learner step (DeepSpeed, logits only at loss positions) and a
plain loop (the same loss and AdamW, logits at every position) on the same batch, all with gradient
checkpointing. The plain loop runs twice: on weights in the device's dtype (bf16 on GPU, AdamW with no fp32
master copy) and as AMP (fp32 weights and AdamW, bf16 autocast: the optimizer state memrl's DeepSpeed bf16 learner
also keeps). Prints tokens/s, achieved FLOP/s (6 x params x tokens) as a share of this device's measured matmul
peak in that dtype, peak memory on GPU, and the ratios memrl / plain (goal on GPU: <= 1.05, and >= 0.5 of peak at
1.5B).

    memrl bench gpu                               # 135M and 1.5B, 16 contexts x 2048 tokens
    memrl bench gpu --configs tiny --contexts 2 --length 64 --repeats 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from memrl.bench.common import machine, matmul_peak_flops
from memrl.bench.learner import batch, plain_step, timed
from memrl.device import plan

# Architecture hyper-parameters as published in each model's config.json (weights are random here).
CONFIGS = {
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0),
    "tiny": dict(model_type="llama", vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096),
}


def random_model_dir(name: str, out: Path, dtype: torch.dtype) -> Path:
    """A random-init HF directory of config `name` (untied embeddings, as memrl trains)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(CONFIGS[name])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec, tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _peak_memory(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else None


def _reset_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_memrl(model_dir: Path, trajs, repeats: int, zero_stage: int = 2):
    """(seconds per learner step, peak GiB or None, params) on the batch `trajs`."""
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections

    dev = plan()
    _reset_memory(dev.kind)
    learner = Learner(str(model_dir), **learner_sections(zero_stage=zero_stage, lr=1e-6, clip_high=0.2,
                                                         gradient_checkpointing=True,
                                                         micro_batch_tokens=sum(len(c) for t in trajs
                                                                                for c in t.contexts)))
    params = sum(p.numel() for p in learner.module.parameters())
    t = timed(lambda: (learner.train_step(trajs), _sync(dev.kind)), repeats)
    return t, _peak_memory(dev.kind), params


def time_plain(model_dir: Path, trajs, repeats: int, amp: bool = False):
    """(seconds per step, peak GiB or None) of the plain loop: same loss and AdamW, logits everywhere; its weights
    in the device's dtype (bf16 on GPU: AdamW on bf16 weights, no fp32 master copy), or with `amp` fp32 weights and
    AdamW under bf16 autocast (the optimizer state memrl's DeepSpeed bf16 learner keeps too). Timed first: a
    DeepSpeed engine is not reliably freed by dropping it, and the plain loop's logits need the room (an H200 ran
    out of memory at the 1.5B config with the learner timed first)."""
    from transformers import AutoModelForCausalLM

    dev = plan()
    _reset_memory(dev.kind)
    dtype = torch.float32 if amp else dev.dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(dev.torch_device)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> None:
        with torch.device(dev.torch_device):  # plain_step's tensors are made on the model's device
            plain_step(model, opt, trajs, autocast=amp)
        _sync(dev.kind)

    return timed(step, repeats), _peak_memory(dev.kind)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_config(name: str, contexts: int, length: int, repeats: int, prompt_share: float, zero_stage: int = 2
               ) -> dict:
    """Time the plain loop (device-dtype weights, then fp32 weights under bf16 autocast) and memrl's learner on
    one config; returns the row."""
    import gc

    dev = plan()
    trajs = batch(contexts, length, CONFIGS[name]["vocab_size"], prompt_share=prompt_share)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model_dir(name, Path(tmp) / name, dev.dtype)
        t_plain, mem_plain = time_plain(model_dir, trajs, repeats)
        gc.collect()
        t_amp, mem_amp = time_plain(model_dir, trajs, repeats, amp=True)
        gc.collect()
        t_memrl, mem_memrl, params = time_memrl(model_dir, trajs, repeats, zero_stage)
    peak = matmul_peak_flops(dtype=dev.dtype)
    tokens = contexts * length
    return {"config": name, "params": params, "dtype": dev.dtype_name, "tokens": tokens,
            "memrl_tokens_per_s": tokens / t_memrl, "plain_tokens_per_s": tokens / t_plain,
            "plain_amp_tokens_per_s": tokens / t_amp, "ratio": t_memrl / t_plain, "ratio_amp": t_memrl / t_amp,
            "peak_flops": peak, "memrl_peak_fraction": 6 * params * tokens / t_memrl / peak,
            "plain_peak_fraction": 6 * params * tokens / t_plain / peak,
            "memrl_peak_gib": mem_memrl, "plain_peak_gib": mem_plain, "plain_amp_peak_gib": mem_amp}


def main(argv: list[str] | None = None) -> list[dict]:
    """`memrl bench gpu` (options in the module docstring): time each `--configs` model with `run_config`,
    print a markdown table, and return the rows. Exits with a message on an unknown config."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="smollm2-135m,qwen2.5-1.5b", help=f"comma-separated, of {sorted(CONFIGS)}")
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--prompt-share", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3), help="memrl learner's ZeRO stage")
    args = ap.parse_args(argv)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    dev = plan()
    print(f"machine: {machine()}")
    print(f"{args.contexts} contexts x {args.length} tokens ({100 * args.prompt_share:.0f}% prompt), "
          f"ZeRO-{args.zero_stage}, "
          f"gradient checkpointing, {dev.dtype_name}; peak = measured {dev.dtype_name} matmul")
    print("| config | params | memrl tok/s | plain tok/s | plain AMP tok/s | memrl / plain time | memrl / plain AMP "
          "time | memrl share of peak | plain share of peak | memrl peak GiB | plain peak GiB | plain AMP peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name in names:  # each row as soon as it is measured: a later config that fails keeps the earlier ones
        r = run_config(name, args.contexts, args.length, args.repeats, args.prompt_share, args.zero_stage)
        rows.append(r)
        mem = [f"{v:.1f}" if v is not None else "n/a (CPU)"
               for v in (r["memrl_peak_gib"], r["plain_peak_gib"], r["plain_amp_peak_gib"])]
        print(f"| {r['config']} | {r['params'] / 1e6:.0f}M | {r['memrl_tokens_per_s']:.0f} | "
              f"{r['plain_tokens_per_s']:.0f} | {r['plain_amp_tokens_per_s']:.0f} | {r['ratio']:.3f} | "
              f"{r['ratio_amp']:.3f} | {r['memrl_peak_fraction']:.3f} | {r['plain_peak_fraction']:.3f} | "
              f"{mem[0]} | {mem[1]} | {mem[2]} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
