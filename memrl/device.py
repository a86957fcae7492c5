"""The one place that decides CPU vs GPU: torch device, dtype, collective backend, vLLM settings.

Every other module asks here instead of branching on `torch.cuda.is_available()` itself.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePlan:
    """What the current machine runs on, chosen once."""

    kind: str  # "cpu" or "cuda"
    dtype: torch.dtype  # the learner's: bf16 on GPU; fp32 on CPU (bench/RESULTS.md "learner precision")
    dist_backend: str  # "gloo" on CPU, "nccl" on GPU
    rollout_dtype: torch.dtype = torch.float32  # the vLLM engine's (`rollout.dtype: auto`): `rollout_dtype()`

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

    def engine_args(self, rollout, sleep_mode: bool = False) -> dict:
        """vLLM engine arguments of a recipe's `rollout` section (read by keyword) on this device: eager on
        CPU and compiled (CUDA graphs) on GPU unless the recipe says otherwise, the device's rollout dtype unless
        set, the GPU memory share only on GPU; `sleep_mode` (a colocated engine) where the device has it."""
        args = dict(max_model_len=rollout.max_model_len, tensor_parallel_size=rollout.tensor_parallel_size,
                    dtype=DTYPE_NAMES[self.rollout_dtype] if rollout.dtype == "auto" else rollout.dtype,
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
        return args

    def vllm_env(self, kv_cache_gib: float = 1.0) -> dict[str, str]:
        """Environment variables a vLLM engine process needs on this device."""
        if self.kind == "cpu":
            return {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(kv_cache_gib))))}
        return {}


DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (AVX-512 BF16: Zen 4+, Cooper Lake+; AMX)


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


def plan(force: str | None = None) -> DevicePlan:
    """Pick the device plan: $MEMRL_DEVICE ("cpu"/"cuda") or `force` overrides auto-detection."""
    choice = force or os.environ.get("MEMRL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda":
        return DevicePlan("cuda", torch.bfloat16, "nccl", rollout_dtype("cuda"))
    if choice == "cpu":
        return DevicePlan("cpu", torch.float32, "gloo", rollout_dtype("cpu"))
    raise ValueError(f"MEMRL_DEVICE must be 'cpu' or 'cuda', got {choice!r}")
