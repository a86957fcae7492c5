"""`memrl bench lora`: LoRA adapters vs full fine-tuning of the top K blocks, on CPU.

Learner side (each configuration in its own child process, so peak memory is its own): GRPO step time on the
same batch, trainable parameters, and peak resident memory (ru_maxrss). Sync side (one process): the adapter
hot-loaded into a LoRA-enabled vLLM engine vs the full weights into a plain engine, over the blob path and the
native path (vLLM's weight-transfer protocol). Ratios are LoRA / full.

    memrl bench lora                                   # SmolLM2-135M, rank 8 on every linear vs top 6 blocks
    memrl bench lora --model tiny:0 --contexts 2 --length 64 --repeats 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

from memrl.bench.common import machine


def _learner_run(model: str, keys: dict, contexts: int, length: int, repeats: int, queue) -> None:
    from memrl.bench.learner import batch, timed
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections

    learner = Learner(model, **learner_sections(zero_stage=2, lr=1e-5, micro_batch_tokens=contexts * length,
                                                **keys), seed=0)
    trajs = batch(contexts, length, learner.module.config.vocab_size)
    step = timed(lambda: learner.train_step(trajs), repeats)
    t0 = time.perf_counter()
    blob = learner.weights_blob()
    queue.put({"step_s": step, "trainable": sum(p.numel() for p in learner.module.parameters() if p.requires_grad),
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "blob_mb": len(blob) / 1e6, "blob_make_s": time.perf_counter() - t0})


def learner_side(model: str, keys: dict, contexts: int, length: int, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_learner_run, args=(model, keys, contexts, length, repeats, queue))
    proc.start()
    out = queue.get(timeout=3600)
    proc.join()
    return out


def sync_side(model: str, lora_rank: int, repeats: int) -> dict:
    """Seconds to load the adapter into a LoRA engine, and the full weights into a plain engine (blob, native)."""
    from memrl.agents import VLLMBackend
    from memrl.recipes.schema import RolloutCfg
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections
    from memrl.weight_transfer import LearnerSource, connect

    def mean_time(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.fmean(times)

    out = {}
    rollout = RolloutCfg(max_model_len=512)
    out["adapter_blob_s"] = _adapter_sync(model, rollout, lora_rank, mean_time)
    full = Learner(model, **learner_sections(lr=1e-5), seed=0)
    engine = VLLMBackend(model, rollout=rollout)
    try:
        out["full_blob_s"] = mean_time(lambda: engine.load_blob(full.weights_blob(), engine.version + 1))
        transfer, client = connect(LearnerSource(full.module, zero3=False), [engine])

        def native() -> None:
            client.version = engine.version + 1
            transfer.send_weights()

        out["full_native_s"] = mean_time(native)
        transfer.shutdown()
    finally:
        engine.close()
    return out


def _adapter_sync(model: str, rollout, lora_rank: int, mean_time) -> float:
    from memrl.agents import VLLMBackend
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections

    adapted = Learner(model, **learner_sections(lr=1e-5, lora_rank=lora_rank), seed=0)
    engine = VLLMBackend(model, rollout=rollout, lora_rank=lora_rank)
    try:
        return mean_time(lambda: engine.load_blob(adapted.weights_blob(), engine.version + 1))
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> dict:
    """`memrl bench lora`: the learner side of LoRA (`--lora-rank`) and of full fine-tuning of the top
    `--top-blocks` blocks, each in a child process, then the sync side; prints the tables and the LoRA /
    full ratios and returns every number (`lora_*`, `full_*`, sync seconds, `ratio_*`)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--top-blocks", type=int, default=6, help="K of the full fine-tuning baseline (train_layers)")
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from memrl.models import resolve_model_dir

    model = str(resolve_model_dir(args.model))
    runs = {"lora": learner_side(model, {"lora_rank": args.lora_rank}, args.contexts, args.length, args.repeats),
            "full": learner_side(model, {"train_layers": args.top_blocks}, args.contexts, args.length, args.repeats)}
    sync = sync_side(model, args.lora_rank, args.repeats)
    lo, fu = runs["lora"], runs["full"]
    out = {**{f"lora_{k}": v for k, v in lo.items()}, **{f"full_{k}": v for k, v in fu.items()}, **sync,
           "ratio_step": lo["step_s"] / fu["step_s"], "ratio_peak_rss": lo["peak_rss_gib"] / fu["peak_rss_gib"],
           "ratio_sync_blob": sync["adapter_blob_s"] / sync["full_blob_s"],
           "ratio_sync_native": sync["adapter_blob_s"] / sync["full_native_s"]}
    print(f"machine: {machine()}")
    print(f"model {args.model}: LoRA rank {args.lora_rank} on every linear vs full fine-tuning of the top "
          f"{args.top_blocks} blocks + lm_head; {args.contexts} contexts x {args.length} tokens, ZeRO-2")
    print("| learner | trainable params | step s | peak RSS GiB | weights sent MB |\n|---|---|---|---|---|")
    for name, r in (("LoRA", lo), (f"full, top {args.top_blocks}", fu)):
        print(f"| {name} | {r['trainable'] / 1e6:.2f}M | {r['step_s']:.2f} | {r['peak_rss_gib']:.2f} | "
              f"{r['blob_mb']:.1f} |")
    print("| sync | seconds |\n|---|---|")
    print(f"| adapter hot-load (LoRA engine) | {sync['adapter_blob_s']:.3f} |")
    print(f"| full weights, blob path | {sync['full_blob_s']:.3f} |")
    print(f"| full weights, native path | {sync['full_native_s']:.3f} |")
    print(f"ratios LoRA / full: step {out['ratio_step']:.3f}, peak RSS {out['ratio_peak_rss']:.3f}, sync vs blob "
          f"{out['ratio_sync_blob']:.3f}, sync vs native {out['ratio_sync_native']:.3f}")
    return out


if __name__ == "__main__":
    main()
