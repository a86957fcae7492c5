"""The only record that crosses from rollout to learner: a trajectory made of per-turn contexts.

Memory agents (MEM1, MemSearcher) produce one `Context` per turn, each a fresh, bounded prompt plus
what the model sampled; the full-context baseline produces one growing `Context`. Every context of a
trajectory receives that trajectory's advantage (multi-context GRPO); only sampled tokens get loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Context:
    """One sequence the learner runs a forward pass on, token for token as the engine saw it."""

    token_ids: list[int]  # (T,) prompt + sampled (+ observation) token ids, never re-tokenized
    loss_mask: list[int]  # (T,) 1 where the policy sampled the token (gets loss), 0 for prompt/observation
    logprobs: list[float]  # (T,) sampling-time log-prob where loss_mask == 1, 0.0 elsewhere
    weight_version: int | None = None  # weights that sampled this context (None: its trajectory's weight_version)

    def __post_init__(self) -> None:
        if not (len(self.token_ids) == len(self.loss_mask) == len(self.logprobs)):
            raise ValueError(
                f"Context fields differ in length: token_ids={len(self.token_ids)} "
                f"loss_mask={len(self.loss_mask)} logprobs={len(self.logprobs)}"
            )

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return sum(self.loss_mask)

    def extend(self, token_ids: list[int], sampled: bool, logprobs: list[float] | None = None) -> None:
        """Append tokens: sampled ones get loss (and their log-probs), others are masked out."""
        self.token_ids.extend(token_ids)
        self.loss_mask.extend([int(sampled)] * len(token_ids))
        if sampled and logprobs is not None:
            if len(logprobs) != len(token_ids):
                raise ValueError(f"{len(logprobs)} log-probs for {len(token_ids)} sampled tokens")
            self.logprobs.extend(float(x) for x in logprobs)
        else:
            self.logprobs.extend([0.0] * len(token_ids))


@dataclass
class Trajectory:
    """One episode: its contexts, its scalar reward, and where it came from."""

    contexts: list[Context]  # per-turn contexts (memory agents) or a single growing one (full context)
    reward: float  # episode reward from the env (aggregated over objectives for composed tasks)
    group_id: int = 0  # rollouts of the same task share a group id (GRPO baseline)
    weight_version: int = 0  # version of the policy weights that sampled it (a context may say otherwise)
    failed: bool = False  # the env raised or timed out: reward forced to 0 (see rl/rollout.py)
    advantage: float = 0.0  # filled in by the trainer from the group's rewards
    info: dict[str, Any] = field(default_factory=dict)  # em, f1, turns, token accounting, ...

    @property
    def num_generated(self) -> int:
        return sum(c.num_generated for c in self.contexts)

    def context_versions(self) -> list[int]:
        """The weight version that sampled each context (its own, else the trajectory's)."""
        return [self.weight_version if c.weight_version is None else c.weight_version for c in self.contexts]
