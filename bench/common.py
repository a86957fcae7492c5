"""Shared bits of the benchmarks: machine description and the matmul peak of this machine."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine() -> str:
    """One line naming the hardware a benchmark ran on: CPU model (/proc/cpuinfo, else `platform`), CPU
    count, torch's thread count, and GPU 0's name or "no GPU"."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {gpu}"


def matmul_peak_flops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """Measured FLOP/s of a square matmul on the default device (the machine's practical peak)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    for _ in range(2):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)
