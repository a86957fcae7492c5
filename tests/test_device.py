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


def test_each_cpu_engine_binds_to_its_own_slice_of_the_cores(monkeypatch):
    """vLLM's `auto` binding keeps a core for its scheduler and binds every engine of a node to the same rest (one
    core of two); memrl gives engine i of n the i-th slice of this process's cores, and a user's value wins."""
    import memrl.device as device

    monkeypatch.setattr(device, "USER_OMP_BIND", None)
    assert device.omp_cores(0, 1, cores=[0, 1]) == "0,1"
    assert [device.omp_cores(i, 2, cores=[4, 5, 6, 7]) for i in range(2)] == ["4,5", "6,7"]
    assert [device.omp_cores(i, 3, cores=[0, 1]) for i in range(3)] == ["0", "1", "0"]  # more engines than cores
    with pytest.raises(ValueError, match="engine index 2 is not among 2 engines"):
        device.omp_cores(2, 2, cores=[0, 1])
    env = plan("cpu").vllm_env(3.0, engine=(1, 2))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == device.omp_cores(1, 2)
    monkeypatch.setattr(device, "USER_OMP_BIND", "0-3|4-7")
    assert plan("cpu").vllm_env(engine=(0, 2))["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"


def test_old_logprobs_auto_recomputes_where_engine_and_learner_dtypes_differ(monkeypatch):
    from memrl.device import DevicePlan
    from memrl.recipes.schema import AlgorithmCfg

    auto, engine, recompute = (AlgorithmCfg(old_logprobs=m) for m in ("auto", "engine", "recompute"))
    assert AlgorithmCfg().old_logprobs == "auto"
    bf16_cpu = DevicePlan("cpu", torch.float32, "gloo", torch.bfloat16)  # bf16 engine, fp32 learner
    fp32_cpu = DevicePlan("cpu", torch.float32, "gloo", torch.float32)
    autocast = DevicePlan("cpu", torch.float32, "gloo", torch.float32, torch.bfloat16)  # fp32 engine, bf16 learner
    cuda = DevicePlan("cuda", torch.bfloat16, "nccl", torch.bfloat16)
    assert bf16_cpu.recompute_old_logprobs(auto, RolloutCfg())
    assert not bf16_cpu.recompute_old_logprobs(auto, RolloutCfg(dtype="float32"))  # the recipe pins the engine
    assert not fp32_cpu.recompute_old_logprobs(auto, RolloutCfg())
    assert autocast.recompute_old_logprobs(auto, RolloutCfg())
    assert cuda.recompute_old_logprobs(auto, RolloutCfg())  # same dtype, different kernels
    assert not bf16_cpu.recompute_old_logprobs(engine, RolloutCfg())
    assert fp32_cpu.recompute_old_logprobs(recompute, RolloutCfg())


def test_the_cpu_learner_autocasts_to_bf16_only_where_the_cpu_has_it(monkeypatch):
    from memrl.device import learner_autocast

    monkeypatch.setenv("MEMRL_AUTOCAST", "auto")
    assert learner_autocast("cpu", ZEN4) == torch.bfloat16 and learner_autocast("cpu", SAPPHIRE_RAPIDS) == torch.bfloat16
    assert learner_autocast("cpu", ZEN2) is None and learner_autocast("cuda", ZEN4) is None  # GPU weights are bf16
    monkeypatch.setenv("MEMRL_AUTOCAST", "off")
    assert learner_autocast("cpu", ZEN4) is None
    monkeypatch.setenv("MEMRL_AUTOCAST", "bfloat16")
    assert learner_autocast("cpu", ZEN2) == torch.bfloat16
    assert plan("cpu").autocast_dtype == torch.bfloat16
    with plan("cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setenv("MEMRL_AUTOCAST", "fp16")
    with pytest.raises(ValueError, match="MEMRL_AUTOCAST must be one of auto, off, bfloat16"):
        learner_autocast("cpu")


def test_the_learner_keeps_bf16_weights_on_gpu_unless_told_fp32(monkeypatch):
    from memrl.device import learner_dtype

    monkeypatch.delenv("MEMRL_LEARNER_DTYPE", raising=False)
    assert learner_dtype("cuda") == torch.bfloat16 and learner_dtype("cpu") == torch.float32
    assert plan("cuda").dtype == torch.bfloat16 and plan("cuda").dtype_name == "bfloat16"
    monkeypatch.setenv("MEMRL_LEARNER_DTYPE", "float32")  # bench/gpu_check.sh: the exact tests on a GPU
    assert plan("cuda").dtype == torch.float32 and plan("cpu").dtype == torch.float32
    monkeypatch.setenv("MEMRL_LEARNER_DTYPE", "bfloat16")  # tests/rl/test_bf16_learner.py: the GPU's weights on a CPU
    assert learner_dtype("cuda") == torch.bfloat16 and plan("cpu").dtype == torch.bfloat16
    monkeypatch.setenv("MEMRL_LEARNER_DTYPE", "fp16")
    with pytest.raises(ValueError, match="MEMRL_LEARNER_DTYPE must be one of auto, float32, bfloat16"):
        learner_dtype("cuda")
