"""The checks a first GPU run must pass, in order: `memrl doctor` (or `python -m memrl.cluster.acceptance`).

Run it on one GPU node of the cluster (2+ GPUs) before the first real recipe. Each check prints one line,
`PASS <check>: <what it measured>` or `FAIL <check>: <what went wrong>`, and the script exits 1 at the first
failure (the later checks assume the earlier ones). Expected output on a healthy 8-GPU node (numbers vary):

    PASS devices: 8 x NVIDIA H100 80GB HBM3, NCCL 2.x, memrl.device plan: cuda (nccl, bf16)
    PASS transfer: nccl weight transfer learner (cuda:1) -> vLLM engine: checksum 590.538 == 590.538 of the same ...
    PASS sleep: colocated engine freed 30.1 of 31.0 GiB while asleep; greedy output unchanged after wake-up
    PASS grpo-step mem1: 1 GRPO step (1 learner rank, 1 engine, 2 tasks x 2), grad norm 0.8, 41 s
    PASS grpo-step memsearcher: ...
    PASS grpo-step search-r1: ...

- `devices`: CUDA sees >= 2 GPUs, NCCL is available, and `memrl.device` chose cuda / nccl.
- `transfer`: a tiny random model on GPU 1 streams its weights into a vLLM engine on GPU 0 through vLLM's NCCL
  weight-transfer engine, driven by the same trainer-side code as training (`memrl.weight_transfer.connect`); the
  engine's parameter checksum after the update must equal its checksum after loading the same weights through the
  blob path (no collective), and differ from its initial one.
- `sleep`: a colocated engine (`sleep_mode`) frees most of its GPU memory while asleep (vLLM sleep level 1) and
  gives the same greedy output after `wake_up`.
- `grpo-step <recipe>`: one GRPO step of each paper recipe at reduced size (`memrl train <recipe>` with 1 rank,
  1 engine, 2 tasks of group 2, no SFT, no eval), which also exercises the recipe's model, data and retrieval
  service; point the recipes at this machine's files with `--set` (e.g. `--set model.name=/models/...`).

`--device cpu` runs the same code on CPU (gloo instead of NCCL, the sleep calls made and vLLM's skipped, memory
not measured): `tests/test_acceptance.py` runs it that way, so the script is known to run before a GPU ever does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1024**3
CHECKS = ("devices", "transfer", "sleep", "grpo-step")
RECIPES = ("mem1", "memsearcher", "search-r1")


class CheckFailed(RuntimeError):
    pass


def _rollout(device: str, utilization: float):
    from memrl.recipes.schema import RolloutCfg

    return RolloutCfg(max_model_len=512, kv_cache_gib=1, gpu_memory_utilization=utilization,
                      enforce_eager=device == "cpu")


def check_devices(device: str, work: Path) -> str:
    import torch

    from memrl.device import plan

    p = plan()
    if device == "cpu":
        return f"CPU run: memrl.device plan {p.kind} ({p.dist_backend}, {p.dtype_name}); GPU count not checked"
    n = torch.cuda.device_count()
    if n < 2:
        raise CheckFailed(f"CUDA sees {n} GPU(s); the transfer check needs 2 (CUDA_VISIBLE_DEVICES?)")
    if not torch.distributed.is_nccl_available():
        raise CheckFailed("torch.distributed has no NCCL: install the CUDA build of torch")
    if p.kind != "cuda" or p.weight_transfer_backend != "nccl":
        raise CheckFailed(f"memrl.device chose {p.kind} / {p.weight_transfer_backend} (MEMRL_DEVICE set?)")
    nccl = ".".join(map(str, torch.cuda.nccl.version()))
    return (f"{n} x {torch.cuda.get_device_name(0)}, NCCL {nccl}, memrl.device plan: cuda "
            f"({p.dist_backend}, {p.dtype_name})")


def check_transfer(device: str, work: Path) -> str:
    import torch

    from memrl.agents import VLLMBackend
    from memrl.device import plan
    from memrl.models import load_model, save_tiny_model
    from memrl.weight_transfer import LearnerSource, connect

    tiny = save_tiny_model(work / "tiny")
    engine = VLLMBackend(tiny, rollout=_rollout(device, 0.3))  # GPU 0 (the first visible one)
    learner_device = "cuda:1" if device == "cuda" else "cpu"
    if device == "cuda":  # the trainer side's NCCL communicator binds to the current device: the learner's GPU
        torch.cuda.set_device(1)
    model = load_model(tiny).to(device=learner_device, dtype=plan().rollout_dtype)
    transfer, client = connect(LearnerSource(model, zero3=False), [engine], backend=plan().weight_transfer_backend)
    try:
        before = engine.param_checksum()
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        client.version = engine.version + 1
        transfer.send_weights()
        got = engine.param_checksum()
        # the same weights through the blob path (a safetensors blob, no collective): the engine's parameters must
        # come out the same (vLLM's own layout, e.g. a padded vocabulary, so not the learner's sum itself)
        engine.load_state_dict(model.state_dict(), version=client.version + 1)
        want = engine.param_checksum()
    finally:
        transfer.shutdown()
        engine.shutdown_weight_transfer()
        engine.close()
    if abs(got - want) > 1e-9 * max(1.0, abs(want)) or abs(got - before) < 1e-3:
        raise CheckFailed(f"engine checksum {got:.6f} after the transfer, {want:.6f} after loading the same weights "
                          f"as a blob, {before:.6f} before")
    return (f"{plan().weight_transfer_backend} weight transfer learner ({learner_device}) -> vLLM engine: checksum "
            f"{got:.6f} == {want:.6f} of the same weights loaded as a blob (was {before:.6f})")


def _free_gib(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.mem_get_info(0)[0] / GIB


def check_sleep(device: str, work: Path) -> str:
    from memrl.agents import SamplingConfig, VLLMBackend
    from memrl.models import save_tiny_model

    tiny = save_tiny_model(work / "tiny-sleep")
    empty = _free_gib(device)
    engine = VLLMBackend(tiny, rollout=_rollout(device, 0.5), sleep_mode=True)
    cfg = SamplingConfig(max_tokens=16, temperature=0.0)
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    try:
        before = [g.token_ids for g in engine.generate(prompts, cfg)]
        awake = _free_gib(device)
        engine.sleep()
        asleep = _free_gib(device)
        engine.wake_up()
        after = [g.token_ids for g in engine.generate(prompts, cfg)]
        calls = (engine.sleeps, engine.wakes)
    finally:
        engine.close()
    if after != before:
        raise CheckFailed("greedy output changed across sleep / wake-up")
    if calls != (1, 1):
        raise CheckFailed(f"sleep / wake-up calls {calls}, expected (1, 1)")
    if device != "cuda":
        return "CPU: sleep and wake-up called (vLLM's skipped: no sleep mode on CPU); greedy output unchanged"
    used, freed = empty - awake, asleep - awake
    if freed < 0.8 * used:
        raise CheckFailed(f"asleep, the engine freed {freed:.1f} of its {used:.1f} GiB (expected >= 80%)")
    return f"colocated engine freed {freed:.1f} of {used:.1f} GiB while asleep; greedy output unchanged after wake-up"


def small_sets(out: Path, device: str) -> list[str]:
    """Overrides that cut a paper recipe down to one GRPO step on one learner rank and one engine."""
    small = ["train.steps=1", "learner.ranks=1", "rollout.workers=1", "algorithm.tasks_per_step=2",
             "algorithm.group_size=2", "algorithm.minibatches=1", "sft.steps=0", "train.eval_tasks=2",
             "train.eval_every=0", "train.zero_shot_eval=false", "train.control=false", "train.baseline_agent=null",
             "train.eval_objectives=[]", "logging.progress=false", "retrieval.replicas=1", f"output_dir={out}/{{name}}"]
    if device == "cpu":
        small += ["resources.gpus_per_worker=0", "resources.gpus_per_learner_rank=0"]
    return small


def check_grpo_step(recipe: str, device: str, work: Path, sets: list[str]) -> str:
    out = work / "runs"
    overrides = small_sets(out, device) + sets
    argv = [sys.executable, "-m", "memrl.cli", "train", recipe]
    for s in overrides:
        argv += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if done.returncode != 0:
        raise CheckFailed(f"`memrl train {recipe}` exited {done.returncode}: {done.stderr[-2000:]}")
    from memrl.recipes.schema import load_recipe

    name = load_recipe(recipe, overrides).name
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["phase"] == "grpo"]
    if len(grpo) != 1 or grpo[0]["skipped"] or not grpo[0]["grad_norm"] > 0:
        raise CheckFailed(f"expected one GRPO step with a gradient, got {grpo}")
    return f"1 GRPO step (1 learner rank, 1 engine, 2 tasks x 2), grad norm {grpo[0]['grad_norm']:.3g}, {dt:.0f} s"


def run(checks: list[str], recipes: list[str], device: str, sets: list[str], work: Path) -> int:
    """Run `checks` in order; print one line each; 1 at the first failure, else 0."""
    steps = []
    for c in checks:
        if c == "grpo-step":
            steps += [(f"grpo-step {r}", lambda r=r: check_grpo_step(r, device, work, sets)) for r in recipes]
        else:
            fn = {"devices": check_devices, "transfer": check_transfer, "sleep": check_sleep}[c]
            steps.append((c, lambda fn=fn: fn(device, work)))
    for name, fn in steps:
        try:
            line = fn()
        except Exception as exc:  # a check that crashed is a failed check, reported the same way
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            return 1
        print(f"PASS {name}: {line}", flush=True)
    return 0


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated, in this order: {', '.join(CHECKS)}")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="recipes of the grpo-step check")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: the same code on CPU (gloo, sleep calls only), to check the script itself")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe overrides of the grpo-step runs (model and data paths of this machine)")


def main_args(args: argparse.Namespace) -> int:
    checks = [c for c in args.checks.split(",") if c]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        print(f"unknown check(s) {unknown}: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    os.environ["MEMRL_DEVICE"] = args.device
    with tempfile.TemporaryDirectory(prefix="memrl-acceptance-") as tmp:
        return run(checks, [r for r in args.recipes.split(",") if r], args.device, args.sets, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="memrl doctor", description=__doc__.split("\n\n")[0])
    add_args(ap)
    return main_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
