"""The one place that decides CPU vs GPU: torch device, dtype, collective backend, vLLM settings.

Every other module asks here instead of branching on `torch.cuda.is_available()` itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePlan:
    """What the current machine runs on, chosen once."""

    kind: str  # "cpu" or "cuda"
    dtype: torch.dtype  # training/inference dtype: fp32 on CPU (bf16 is slower and worse there), bf16 on GPU
    dist_backend: str  # "gloo" on CPU, "nccl" on GPU

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
        return {torch.float32: "float32", torch.bfloat16: "bfloat16"}[self.dtype]

    def engine_args(self, rollout) -> dict:
        """vLLM engine arguments of a recipe's `rollout` section (read by keyword) on this device: eager on
        CPU and compiled (CUDA graphs) on GPU unless the recipe says otherwise, the device's dtype unless set,
        the GPU memory share only on GPU."""
        args = dict(max_model_len=rollout.max_model_len, tensor_parallel_size=rollout.tensor_parallel_size,
                    dtype=self.dtype_name if rollout.dtype == "auto" else rollout.dtype,
                    enforce_eager=self.kind == "cpu" if rollout.enforce_eager is None else rollout.enforce_eager)
        if rollout.max_num_seqs is not None:
            args["max_num_seqs"] = rollout.max_num_seqs
        if self.kind == "cuda":
            args["gpu_memory_utilization"] = rollout.gpu_memory_utilization
        elif rollout.tensor_parallel_size > 1:
            raise ValueError(f"rollout.tensor_parallel_size={rollout.tensor_parallel_size} needs GPUs; this machine "
                             "runs on CPU (set it to 1)")
        return args

    def vllm_env(self, kv_cache_gib: float = 1.0) -> dict[str, str]:
        """Environment variables a vLLM engine process needs on this device."""
        if self.kind == "cpu":
            return {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(kv_cache_gib))))}
        return {}


def plan(force: str | None = None) -> DevicePlan:
    """Pick the device plan: $MEMRL_DEVICE ("cpu"/"cuda") or `force` overrides auto-detection."""
    choice = force or os.environ.get("MEMRL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda":
        return DevicePlan("cuda", torch.bfloat16, "nccl")
    if choice == "cpu":
        return DevicePlan("cpu", torch.float32, "gloo")
    raise ValueError(f"MEMRL_DEVICE must be 'cpu' or 'cuda', got {choice!r}")
