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
    def dtype_name(self) -> str:
        return {torch.float32: "float32", torch.bfloat16: "bfloat16"}[self.dtype]

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
