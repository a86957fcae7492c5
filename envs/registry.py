"""The `memrl/` namespace in Gymnasium's registry: `gymnasium.make("memrl/KBQA-v0")` works once
`memrl.envs` is imported, and `make()` here imports it for you."""

from __future__ import annotations

import gymnasium as gym

# id -> (entry point, one-line description); the README and `memrl envs list` read this table.
ENVS: dict[str, tuple[str, str]] = {
    "memrl/KBQA-v0": ("memrl.envs.kb:KBQAEnv",
                      "procedural multi-hop knowledge-base QA with BM25/dense search over its own corpus"),
    "memrl/SearchQA-v0": ("memrl.envs.searchqa:SearchQAEnv",
                          "real multi-hop QA (MuSiQue, HotpotQA) with search over a passage corpus"),
    "memrl/Arith-v0": ("memrl.envs.arith:ArithEnv", "arithmetic word problems with a <calc> tool"),
    "memrl/Composed-v0": ("memrl.envs.compose:make_composed",
                          "MEM1 composition: N objectives from any envs in one episode"),
}


def register_all() -> None:
    for env_id, (entry, _) in ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry)


def make(env_id: str, **kwargs) -> gym.Env:
    """`gymnasium.make` for memrl ids (and any other registered id), with a clear unknown-id error."""
    register_all()
    if env_id not in gym.registry:
        ours = [k for k in gym.registry if k.startswith("memrl/")]
        raise ValueError(f"unknown env id {env_id!r}; registered memrl envs: {', '.join(sorted(ours))}")
    return gym.make(env_id, **kwargs)


def list_envs() -> list[tuple[str, str]]:
    """(id, description) of every env in the memrl namespace, ours and user-registered."""
    register_all()
    return [(k, ENVS[k][1] if k in ENVS else str(gym.registry[k].entry_point))
            for k in sorted(gym.registry) if k.startswith("memrl/")]
