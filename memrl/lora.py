"""LoRA adapters (peft): the learner trains low-rank adapters instead of full weights, only the adapter
travels to the engines (vLLM LoRA hot-load), and exports merge it into a plain Hugging Face model.

The adapter crosses from learner to engine as one safetensors blob whose metadata holds peft's
adapter_config.json; the engine writes it as a peft adapter directory and loads it with a new LoRARequest
(one id per weight version; the previous one is removed).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

_CONFIG_KEY = "adapter_config"


def wrap(model: torch.nn.Module, rank: int, alpha: float, targets: list[str]) -> torch.nn.Module:
    """`model` with LoRA adapters of `rank` on the `targets` linear layers; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                            target_modules=list(targets)))


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def adapter_blob(model: torch.nn.Module) -> bytes:
    """The adapter weights (peft names, as `save_pretrained` writes them) and its config, as one blob."""
    from peft import get_peft_model_state_dict

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in get_peft_model_state_dict(model).items()}
    config = model.peft_config["default"].to_dict()
    config["target_modules"] = sorted(config["target_modules"])  # a set in peft
    return save_safetensors(tensors, metadata={_CONFIG_KEY: json.dumps(config, default=str)})


def write_adapter(blob: bytes, directory: Path) -> Path:
    """Write a blob of `adapter_blob` as a peft adapter directory (what vLLM's LoRARequest loads)."""
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(header["__metadata__"][_CONFIG_KEY])
    tensors = load_safetensors(blob)
    (directory / "adapter_model.safetensors").write_bytes(save_safetensors(tensors))
    return directory


def merged_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the base model with the adapter merged in (the model itself is left as it is)."""
    return copy.deepcopy(model).merge_and_unload()


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Base weights + adapter, merged, in the base model's HF names."""
    return {k: v.detach().cpu().clone() for k, v in merged_model(model).state_dict().items()}
