"""Engine start in a Ray actor: memrl's engine arguments (the model worker forked from the engine core,
agents/engine_fork.py) vs vLLM's default there (the worker spawned, a fresh interpreter), same model, same actor.

Every rollout worker, and every restart of one, pays this start once. Each repetition starts both variants, one
after the other, in fresh actors; prints the seconds from the actor's creation to a ready engine, their ratio, and
whether the model worker was forked (it then holds the engine core's modules).

    memrl bench engine_start                       # the quickstart model, 3 repetitions
    memrl bench engine_start --model tiny:0 --reps 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from memrl.bench.common import machine

VARIANTS = ("memrl", "vllm default")


def start(model_dir: str, ours: bool, max_model_len: int = 1024) -> dict:
    """Start one engine in a fresh Ray actor; returns its start seconds and whether its model worker was forked."""
    import ray

    @ray.remote(num_cpus=1)
    class Engine:  # defined here so that it travels to the actor by value
        def __init__(self) -> None:
            from memrl.device import plan
            from memrl.recipes.schema import RolloutCfg

            device, rollout = plan(), RolloutCfg(max_model_len=max_model_len)
            os.environ.update(device.vllm_env(rollout.kv_cache_gib))
            from vllm import LLM

            args = device.engine_args(rollout)
            if not ours:
                args.pop("distributed_executor_backend", None)  # vLLM's own executor choice
            self.llm = LLM(model=model_dir, **args)

        def worker_forked(self) -> bool:
            def probe(worker) -> bool:  # runs in the model worker
                import sys

                return "vllm.v1.engine.core" in sys.modules  # the engine core's module: a spawned worker lacks it

            return all(self.llm.collective_rpc(probe))

        def close(self) -> None:
            self.llm.llm_engine.engine_core.shutdown()  # the core would outlive a killed actor (agents/orphan_guard)

    insecure = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}  # collective_rpc of the probe function (cloudpickle)
    t0 = time.perf_counter()
    engine = Engine.options(runtime_env={"env_vars": insecure}).remote()
    try:
        forked = ray.get(engine.worker_forked.remote())
        seconds = time.perf_counter() - t0
    finally:
        ray.get(engine.close.remote())
        ray.kill(engine)
    return {"start_s": seconds, "worker_forked": forked}


def main(argv: list[str] | None = None) -> dict:
    """`memrl bench engine_start`: prints the table; returns each variant's start seconds (one per repetition),
    whether its workers were forked, and the ratio of the mean starts (vLLM default / memrl)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    import ray

    from memrl.models import resolve_model_dir

    model_dir = str(resolve_model_dir(args.model))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, configure_logging=False)
    out = {v: {"start_s": [], "worker_forked": []} for v in VARIANTS}
    try:
        for _ in range(args.reps):
            for variant in VARIANTS:
                row = start(model_dir, ours=variant == "memrl")
                out[variant]["start_s"].append(row["start_s"])
                out[variant]["worker_forked"].append(row["worker_forked"])
    finally:
        if started:
            ray.shutdown()
    mean = {v: statistics.fmean(out[v]["start_s"]) for v in VARIANTS}
    out["ratio"] = mean["vllm default"] / mean["memrl"]
    print(f"engine start in a Ray actor, {args.model}, {args.reps} repetitions; {machine()}")
    print("| variant | model worker | start s (each) | mean s |\n|---|---|---|---|")
    for v in VARIANTS:
        how = "forked" if all(out[v]["worker_forked"]) else "spawned" if not any(out[v]["worker_forked"]) else "mixed"
        print(f"| {v} | {how} | {', '.join(f'{s:.1f}' for s in out[v]['start_s'])} | {mean[v]:.1f} |")
    print(f"vLLM default / memrl start time: {out['ratio']:.2f}x")
    return out


if __name__ == "__main__":
    main()
