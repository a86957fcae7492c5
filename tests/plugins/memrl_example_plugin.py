"""A memory format, a policy loss and a weight-sync backend added from outside memrl, one file: what
tests/rl/test_plugins.py trains with.

Imported by name (`plugins: [tests.plugins.memrl_example_plugin]` in a recipe, or a plain import): the decorators
register the names, and the trainer makes every Ray actor import this module too.
"""

from __future__ import annotations

import torch

from memrl.agents.memsearcher import MemSearcherAgent
from memrl.registry import AGENTS, POLICY_LOSSES
from memrl.rl.sync import BlobSync, register_weight_sync


@AGENTS.register("test_notes")
class NotesAgent(MemSearcherAgent):
    """MemSearcher whose memory starts as a note of the recipe's choosing (`agent.first_note`, its own setting)."""

    def __init__(self, tokenizer, *, max_observation_tokens: int, memory_tokens: int, first_note: str = "") -> None:
        super().__init__(tokenizer, max_observation_tokens=max_observation_tokens, memory_tokens=memory_tokens)
        self.first_note = first_note

    def start(self, observation: str, info: dict):
        state = super().start(observation, info)
        state.memory = self.first_note
        return state


@POLICY_LOSSES.register("test_reinforce")
def reinforce(logp, old_logp, adv, seq, *, clip_low, clip_high, dual_clip=None):
    """REINFORCE with the sampling ratio and no clip: pg = -A * exp(logp - old_logp) per token; its stat
    `reinforce_tokens` (1 per token, so its mean is 1) shows in the metrics that this loss ran."""
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    return -adv * ratio, {"reinforce_tokens": torch.ones_like(logp)}


@register_weight_sync("test_checked_blob")
class CheckedBlobSync(BlobSync):
    """The blob path, plus a check at `finish` that every engine holds the version being committed; it records
    each protocol call as (call, version) in `calls`, for the test to read the order."""

    def __init__(self, learner, rollouts, timeout: float) -> None:
        super().__init__(learner, rollouts, timeout)
        self.calls: list[tuple[str, int | None]] = []

    def init(self) -> None:
        self.calls.append(("init", None))

    def start(self, version: int) -> None:
        self.calls.append(("start", version))
        super().start(version)  # colocated engines wake up here

    def update(self, version: int) -> None:
        self.calls.append(("update", version))
        super().update(version)

    def finish(self, version: int) -> None:
        import ray

        held = ray.get([w.version.remote() for w in self.rollouts.workers], timeout=self.timeout)
        if held != [version] * len(held):
            raise RuntimeError(f"engines hold weight versions {held} after an update to {version}")
        self.calls.append(("finish", version))
