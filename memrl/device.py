"""The one place that decides CPU vs GPU: torch device, dtype, collective backend, vLLM settings.

Every other module asks here instead of branching on `torch.cuda.is_available()` itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePlan:
    """What the current machine runs on, chosen once."""

    kind: str  # "cpu" or "cuda"
    dtype: torch.dtype  # the learner's weights: bf16 on GPU; fp32 on CPU (bench/RESULTS.md "learner precision")
    dist_backend: str  # "gloo" on CPU, "nccl" on GPU
    rollout_dtype: torch.dtype = torch.float32  # the vLLM engine's (`rollout.dtype: auto`): `rollout_dtype()`
    autocast_dtype: torch.dtype | None = None  # the learner's forwards under autocast over `dtype` weights, or None

    def autocast(self):
        """The context the learner's forwards run in: bf16 autocast over fp32 weights (and fp32 AdamW) where
        `learner_autocast` chose it, else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.kind, dtype=self.autocast_dtype)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind)

    @property
    def collective_device(self) -> torch.device:
        """Where tensors for torch.distributed calls live: NCCL reduces CUDA tensors, gloo CPU ones."""
        return self.torch_device

    @property
    def weight_transfer_backend(self) -> str:
        """vLLM weight-transfer engine (learner -> vLLM): vLLM's NCCL one on GPU, ours over gloo on CPU
        (`memrl.weight_transfer`); both are driven by the same trainer-side code."""
        return "nccl" if self.kind == "cuda" else "memrl_gloo"

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @property
    def sleep_mode(self) -> bool:
        """Whether vLLM engines can sleep (free their memory for a colocated learner): CUDA only."""
        return self.kind == "cuda"

    def engine_dtype(self, rollout) -> str:
        """The dtype a recipe's engines sample in: `rollout.dtype`, or this device's (`rollout_dtype`) for auto."""
        return DTYPE_NAMES[self.rollout_dtype] if rollout.dtype == "auto" else rollout.dtype

    def recompute_old_logprobs(self, algorithm, rollout) -> bool:
        """Whether the learner takes the PPO ratio against its own recomputed log-probs (`algorithm.old_logprobs`):
        recompute, or auto unless engine and learner both compute in fp32 (then they agree to ~1e-5 per token:
        bench/RESULTS.md "rollout"). Any bf16 side (a bf16 engine, bf16 autocast, GPU weights) mismatches, even bf16
        on both sides: the kernels differ."""
        if algorithm.old_logprobs != "auto":
            return algorithm.old_logprobs == "recompute"
        fp32 = DTYPE_NAMES[torch.float32]
        return not (self.engine_dtype(rollout) == fp32 and self.dtype == torch.float32 and self.autocast_dtype is None)

    def engine_args(self, rollout, sleep_mode: bool = False) -> dict:
        """vLLM engine arguments of a recipe's `rollout` section (read by keyword) on this device: eager on
        CPU and compiled (CUDA graphs) on GPU unless the recipe says otherwise, the device's rollout dtype unless
        set, the GPU memory share only on GPU; `sleep_mode` (a colocated engine) where the device has it."""
        args = dict(max_model_len=rollout.max_model_len, tensor_parallel_size=rollout.tensor_parallel_size,
                    dtype=self.engine_dtype(rollout),
                    enforce_eager=self.kind == "cpu" if rollout.enforce_eager is None else rollout.enforce_eager)
        if rollout.max_num_seqs is not None:
            args["max_num_seqs"] = rollout.max_num_seqs
        if self.kind == "cuda":
            args["gpu_memory_utilization"] = rollout.gpu_memory_utilization
        elif rollout.tensor_parallel_size > 1:
            raise ValueError(f"rollout.tensor_parallel_size={rollout.tensor_parallel_size} needs GPUs; this machine "
                             "runs on CPU (set it to 1)")
        if sleep_mode and self.sleep_mode:
            args["enable_sleep_mode"] = True
        if self.kind == "cpu":  # the worker forked from the engine core, not spawned (agents/engine_fork.py)
            from memrl.agents.engine_fork import ForkWorkerExecutor

            args["distributed_executor_backend"] = ForkWorkerExecutor
        return args

    def vllm_env(self, kv_cache_gib: float = 1.0, engine: tuple[int, int] = (0, 1)) -> dict[str, str]:
        """Environment variables a vLLM engine process needs on this device. On CPU: its KV cache size, and the
        cores its OpenMP threads are bound to (`engine` = (index, count) of the engines this process's node runs:
        `omp_cores`)."""
        if self.kind == "cpu":
            return {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(kv_cache_gib)))),
                    "VLLM_CPU_OMP_THREADS_BIND": omp_cores(*engine)}
        return {}


DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (AVX-512 BF16: Zen 4+, Cooper Lake+; AMX)


USER_OMP_BIND = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")  # as the user set it, before any engine of ours


def omp_cores(index: int = 0, count: int = 1, cores: list[int] | None = None) -> str:
    """The cores engine `index` of `count` on this node binds its OpenMP threads to (vLLM's
    VLLM_CPU_OMP_THREADS_BIND syntax, e.g. "0,1"): the `index`-th of `count` contiguous slices of the cores this
    process may run on. vLLM's own `auto` binding keeps one core per engine for its scheduler process and binds
    every engine of a node to the same remaining cores: on 2 cores one engine decodes on 1 core, and two engines
    share that one (bench/RESULTS.md "roofline": 2 cores vs auto, bf16 1.8x). A value the user set wins."""
    if USER_OMP_BIND is not None:
        return USER_OMP_BIND
    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
        cores = sorted(affinity(0)) if affinity else list(range(os.cpu_count() or 1))
    cores = sorted(cores)
    if not 0 <= index < count:
        raise ValueError(f"engine index {index} is not among {count} engines")
    share = max(1, len(cores) // count)
    mine = cores[(index * share) % len(cores):][:share]
    return ",".join(str(c) for c in mine)


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where there is no /proc/cpuinfo, e.g. macOS)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def rollout_dtype(kind: str, flags: frozenset[str] | set[str] | None = None) -> torch.dtype:
    """The engine's dtype: bf16 on GPU and on CPUs with native bf16 (`BF16_CPU_FLAGS`: decoding reads half the
    bytes per step, and decoding is bandwidth-bound), fp32 on other CPUs (without them bf16 is emulated: slower,
    bench/RESULTS.md). $MEMRL_ROLLOUT_DTYPE (float32 | bfloat16 | auto) overrides; the test suite pins float32 so
    that it checks the same numbers on every machine."""
    choice = os.environ.get("MEMRL_ROLLOUT_DTYPE", "auto")
    if choice != "auto":
        named = {v: k for k, v in DTYPE_NAMES.items()}
        if choice not in named:
            raise ValueError(f"MEMRL_ROLLOUT_DTYPE must be one of auto, {', '.join(named)}; got {choice!r}")
        return named[choice]
    if kind == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags) else torch.float32


def learner_autocast(kind: str, flags: frozenset[str] | set[str] | None = None) -> torch.dtype | None:
    """The CPU learner's autocast dtype: bf16 where the CPU has native bf16 (`BF16_CPU_FLAGS`: a learner step takes
    about half the fp32 time there, bench/RESULTS.md "learner precision"), None (plain fp32) elsewhere, where bf16
    is emulated and ~26x slower; None on GPU, where the weights are bf16 already. $MEMRL_AUTOCAST (auto | off |
    bfloat16) overrides; the test suite sets off, so that hand-computed fp32 losses hold on every machine."""
    choice = os.environ.get("MEMRL_AUTOCAST", "auto")
    if choice not in ("auto", "off", "bfloat16"):
        raise ValueError(f"MEMRL_AUTOCAST must be one of auto, off, bfloat16; got {choice!r}")
    if kind == "cuda" or choice == "off":
        return None
    if choice == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags) else None


def learner_dtype(kind: str) -> torch.dtype:
    """The learner's weight dtype: bf16 on GPU, fp32 on CPU (which gets bf16 compute from `learner_autocast`).
    $MEMRL_LEARNER_DTYPE overrides (auto | float32 | bfloat16): float32 keeps fp32 weights on a GPU (numerics checks;
    the test suite's hand-computed losses hold exactly there, bench/gpu_check.sh); bfloat16 gives a CPU learner the
    GPU's bf16 weights and DeepSpeed bf16 optimizer, so that the suite checks its bf16 tolerances without a GPU
    (tests/rl/test_bf16_learner.py; to train faster on a CPU use MEMRL_AUTOCAST instead)."""
    choice = os.environ.get("MEMRL_LEARNER_DTYPE", "auto")
    if choice not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"MEMRL_LEARNER_DTYPE must be one of auto, float32, bfloat16; got {choice!r}")
    if choice == "auto":
        return torch.bfloat16 if kind == "cuda" else torch.float32
    return torch.bfloat16 if choice == "bfloat16" else torch.float32


def plan(force: str | None = None) -> DevicePlan:
    """Pick the device plan: $MEMRL_DEVICE ("cpu"/"cuda") or `force` overrides auto-detection."""
    choice = force or os.environ.get("MEMRL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda":
        return DevicePlan("cuda", learner_dtype("cuda"), "nccl", rollout_dtype("cuda"))
    if choice == "cpu":
        return DevicePlan("cpu", learner_dtype("cpu"), "gloo", rollout_dtype("cpu"), learner_autocast("cpu"))
    raise ValueError(f"MEMRL_DEVICE must be 'cpu' or 'cuda', got {choice!r}")
