"""memrl.device decides the engine's dtype once: bf16 on GPU and on CPUs with native bf16, fp32 on other CPUs."""

from __future__ import annotations

import pytest
import torch

from memrl.device import cpu_flags, plan, rollout_dtype
from memrl.recipes.schema import RolloutCfg

ZEN4 = {"avx2", "avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "amx_bf16", "amx_tile"}
ZEN2 = {"avx", "avx2", "fma"}


@pytest.fixture
def auto(monkeypatch):
    monkeypatch.setenv("MEMRL_ROLLOUT_DTYPE", "auto")  # the test suite pins float32 (conftest); here: the decision


def test_native_bf16_cpus_roll_out_in_bf16_others_in_fp32(auto):
    assert rollout_dtype("cpu", ZEN4) == torch.bfloat16
    assert rollout_dtype("cpu", SAPPHIRE_RAPIDS) == torch.bfloat16
    assert rollout_dtype("cpu", ZEN2) == torch.float32
    assert rollout_dtype("cpu", set()) == torch.float32  # no /proc/cpuinfo (macOS): fp32
    assert rollout_dtype("cuda", ZEN2) == torch.bfloat16


def test_the_override_wins_and_a_wrong_value_names_the_choices(monkeypatch):
    monkeypatch.setenv("MEMRL_ROLLOUT_DTYPE", "float32")
    assert rollout_dtype("cpu", ZEN4) == torch.float32 and rollout_dtype("cuda") == torch.float32
    monkeypatch.setenv("MEMRL_ROLLOUT_DTYPE", "bfloat16")
    assert rollout_dtype("cpu", ZEN2) == torch.bfloat16
    monkeypatch.setenv("MEMRL_ROLLOUT_DTYPE", "fp16")
    with pytest.raises(ValueError, match="auto, float32, bfloat16.*'fp16'"):
        rollout_dtype("cpu")


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_the_engine_gets_the_plans_rollout_dtype_unless_the_recipe_sets_one(monkeypatch):
    monkeypatch.setenv("MEMRL_ROLLOUT_DTYPE", "bfloat16")
    cpu = plan("cpu")
    assert cpu.dtype == torch.float32 and cpu.rollout_dtype == torch.bfloat16  # the learner stays fp32 on CPU
    assert cpu.engine_args(RolloutCfg())["dtype"] == "bfloat16"
    assert cpu.engine_args(RolloutCfg(dtype="float32"))["dtype"] == "float32"
    assert cpu.engine_args(RolloutCfg())["enforce_eager"] is True
    monkeypatch.setenv("MEMRL_ROLLOUT_DTYPE", "float32")
    assert plan("cpu").engine_args(RolloutCfg())["dtype"] == "float32"


def test_engine_args_on_cuda_allow_tensor_parallelism_and_ask_sleep_mode_only_when_colocated():
    """Pure arguments (no GPU needed): on CUDA a tensor-parallel engine is allowed and sleep mode is asked only for a
    colocated engine; on CPU sleep mode is never asked and tensor parallelism is refused."""
    from memrl.device import DevicePlan

    cuda = DevicePlan("cuda", torch.bfloat16, "nccl", torch.bfloat16)
    tp = RolloutCfg(tensor_parallel_size=2)
    assert "enable_sleep_mode" not in cuda.engine_args(tp) and cuda.engine_args(tp)["tensor_parallel_size"] == 2
    assert cuda.engine_args(tp, sleep_mode=True)["enable_sleep_mode"] is True
    assert "enable_sleep_mode" not in plan("cpu").engine_args(RolloutCfg(), sleep_mode=True)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs GPUs"):
        plan("cpu").engine_args(tp, sleep_mode=True)
