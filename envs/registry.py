"""The `memrl/` namespace in Gymnasium's registry: `gymnasium.make("memrl/KBQA-v0")` works once
`memrl.envs` is imported, and `make()` here imports it for you."""

from __future__ import annotations

import gymnasium as gym

from memrl.envs.compose import ComposedEnv, compose

# id -> (entry point, one-line description); the README and `memrl envs list` read this table.
ENVS: dict[str, tuple[str, str]] = {
    "memrl/KBQA-v0": ("memrl.envs.kb:KBQAEnv",
                      "procedural multi-hop knowledge-base QA with BM25/dense search over its own corpus"),
    "memrl/SearchQA-v0": ("memrl.envs.searchqa:SearchQAEnv",
                          "real multi-hop QA (MuSiQue, HotpotQA) with search over a passage corpus"),
    "memrl/Arith-v0": ("memrl.envs.arith:ArithEnv", "arithmetic word problems with a <calc> tool"),
    "memrl/Composed-v0": ("memrl.envs.registry:make_composed",
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


def build(section) -> gym.Env:
    """The env of one episode from a recipe's `env` section (read by keyword: id, kwargs, objectives,
    max_turns, aggregate): a registered id ("memrl/KBQA-v0") or an entry point ("mypkg.envs:MyEnv"),
    composed (MEM1) when `objectives` > 1 or `max_turns` is set."""
    if ":" in section.id and not section.id.startswith("memrl/"):  # an importable class, no registration needed
        import importlib

        module, cls = section.id.split(":", 1)
        factory = getattr(importlib.import_module(module), cls)
    else:
        factory = lambda **kw: make(section.id, **kw)  # noqa: E731
    try:
        if section.objectives == 1 and section.max_turns is None:
            return factory(**section.kwargs)
        return compose([factory(**section.kwargs) for _ in range(section.objectives)], max_turns=section.max_turns,
                       aggregate=section.aggregate)
    except TypeError as exc:
        if "split" in section.kwargs and "'split'" in str(exc):
            raise TypeError(f"env {section.id} does not take the keyword `split`: memrl builds training envs with "
                            "split='train' and held-out ones with split='eval', and a held-out task must never be a "
                            "training task; accept `split` (TaskEnv does) and draw disjoint tasks for each "
                            f"(envs.core.split_of) ({exc})") from exc
        raise


def build_key(section) -> str:
    """Envs built from sections with equal keys are interchangeable (a worker's env pool reuses them)."""
    return repr((section.id, sorted(section.kwargs.items()), section.objectives, section.max_turns, section.aggregate))


def make_composed(env_ids: list[str] | None = None, base: str | None = None, n: int = 1,
                  base_kwargs: dict | None = None, kwargs: list[dict] | None = None,
                  max_turns: int | None = None, aggregate: str = "mean") -> ComposedEnv:
    """Entry point of `memrl/Composed-v0`: either `env_ids` (one per objective, optional `kwargs` list)
    or `base` repeated `n` times with `base_kwargs`."""
    if env_ids is None:
        if base is None:
            raise ValueError("memrl/Composed-v0 needs env_ids=[...] or base=ID with n=N")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        env_ids, kwargs = [base] * n, [dict(base_kwargs or {}) for _ in range(n)]
    kwargs = kwargs or [{} for _ in env_ids]
    if len(kwargs) != len(env_ids):
        raise ValueError(f"{len(env_ids)} env_ids but {len(kwargs)} kwargs entries")
    return ComposedEnv([make(i, **k) for i, k in zip(env_ids, kwargs, strict=True)], max_turns, aggregate)
