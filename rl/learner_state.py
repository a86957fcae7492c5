"""The learner's weights going out: full weights for weight sync and export, the blob the engines load, this
rank's end of vLLM's weight-transfer protocol, and checkpoints (engine state per rank + a Hugging Face directory).

`LearnerWeights` is a mixin of `rl.learner.Learner`: it reads `self.engine` (the DeepSpeed engine), `self.cfg`
(the recipe's `learner` section) and `self.device` (`memrl.device.plan()`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from memrl import lora


class LearnerWeights:
    """Weights out of a DeepSpeed engine (ZeRO 0-3, LoRA or full), in the Hugging Face names engines load."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) weights on CPU, in HF names, for weight sync and export; every tensor owns its
        storage. (ZeRO 1-2 keep parameters as views into one flat buffer: pickling such a view, as Ray does
        to return it, writes the whole buffer, once per tensor; SmolLM2's 273 tensors took 17 GB.)"""
        import contextlib

        import deepspeed

        module = self.engine.module
        if lora.is_lora(module):  # base + adapter merged, in the base model's names (ZeRO 0-2: nothing to gather)
            return lora.merged_state_dict(module)
        gathered = (deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
                    if self.cfg.zero_stage == 3 else contextlib.nullcontext())
        with gathered:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def weights_blob(self) -> bytes:
        """The weights as the engines load them, as one safetensors byte string (memrl.weight_sync); with LoRA
        only the adapter (memrl.lora)."""
        from memrl.weight_sync import state_dict_blob

        if lora.is_lora(self.engine.module):
            return lora.adapter_blob(self.engine.module)

        return state_dict_blob(self.state_dict())

    def weight_transfer(self, client, address: str, port: int):
        """This rank's end of vLLM's weight-transfer protocol (memrl.weight_transfer): rank 0 opens the group at
        address:port with the engines behind `client` and sends; the others take part in the ZeRO-3 gathers.
        Every rank must call it, then `send_weights()` on the returned engine for each sync."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        from memrl.weight_transfer import LearnerSource, trainer_init_info

        info = trainer_init_info(self.device.weight_transfer_backend, address, port, client.world_size, self.rank)
        source = LearnerSource(self.engine.module, zero3=self.cfg.zero_stage == 3)
        return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def rank(self) -> int:
        dist = torch.distributed
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def save_state(self, out: Path) -> list[str]:
        """Engine state (model, optimizer; each rank writes its shard) under out/engine, and rank 0 writes the
        full weights as a Hugging Face directory under out/model. Every rank must call it (ZeRO-3 gathers).
        Returns the files this rank sees under `out` afterwards (relative paths): its own among them, which the
        checkpoint's manifest must cover (`rl.checkpoint.save`)."""
        self.engine.save_checkpoint(str(out / "engine"), tag="state", save_latest=False)
        if lora.is_lora(self.module):  # base + adapter merged once (LoRA runs ZeRO 0-2: nothing to gather)
            if self.rank == 0:
                lora.merged_model(self.module).save_pretrained(out / "model", safe_serialization=True)
            return _files(out)
        weights = self.state_dict()
        if self.rank == 0:
            self.module.save_pretrained(out / "model", state_dict=weights, safe_serialization=True)
        return _files(out)

    def load_state(self, path: Path) -> None:
        """Restore what `save_state` wrote (every rank its own shard)."""
        self.engine.load_checkpoint(str(path / "engine"), tag="state")


def _files(root: Path) -> list[str]:
    """The files under `root`, but not hidden ones: those are other ranks' writes in progress (a temp file that
    rank 0's weights are written to and then renamed), which no finished checkpoint holds."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
