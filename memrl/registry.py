"""Named extension points, importable without torch: agents, advantage estimators, loss aggregations, policy
losses and weight-sync backends.

Each `Registry` maps a name to where its object lives ("module:attribute") and imports it only when asked
(`get`), so the recipe schema checks names here without importing the code behind them (a recipe is data:
validating one imports neither torch nor vLLM), and the code that builds things resolves them here.

Three ways to add a name, all equivalent once registered:

- a decorator in your own module: `@registry.POLICY_LOSSES.register("my_loss")` (or the friendlier
  wrappers such as `memrl.rl.losses.register_policy_loss`); list that module under the recipe's `plugins:`
  so that `memrl train` imports it before validating, and every Ray actor imports it too;
- an entry point of an installed package, group `memrl.<kind>` (e.g. `memrl.agents`), name = the name;
- a "module:attribute" string where a name is expected (`agent.name: mylab.agents:NotesAgent`).

Names registered in a process travel to the run's Ray actors as the modules that registered them
(`plugin_modules`), which each actor imports before it builds anything (`import_plugins`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

_BUILTIN_MODULES: set[str] = set()  # modules of the built-in entries (never shipped as plugins)


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _path_of(obj: Any) -> str | None:
    """'module:qualname' of an object another process can import, or None (defined in __main__ or a function)."""
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qual or module == "__main__" or "<locals>" in qual:
        return None
    return f"{module}:{qual}"


class Registry:
    """Names of one kind of extension (`kind`, e.g. "agent"), each bound to a "module:attribute" path or to an
    object registered in this process. `builtins` are memrl's own, imported only on first use."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str]) -> None:
        self.kind, self.group = kind, group
        self._paths: dict[str, str] = dict(builtins)
        self._objects: dict[str, Any] = {}
        self._user: dict[str, str | None] = {}  # name -> import path of names registered outside memrl
        _BUILTIN_MODULES.update(p.partition(":")[0] for p in builtins.values())

    def register(self, name: str, obj: Any = None) -> Any:
        """Register `obj` under `name`; without `obj`, a decorator. A name can be registered once (re-registering
        the same object, e.g. when a plugin module is imported twice, is allowed)."""
        def deco(value: Any) -> Any:
            held = self._paths.get(name) or _path_of(self._objects.get(name))
            same = value is self._objects.get(name) or (held is not None and held == _path_of(value))
            if (name in self._paths or name in self._objects) and not same:
                raise ValueError(f"{self.kind} {name!r} is already registered ({held or self._objects[name]!r})")
            self._objects[name] = value
            if name not in self._paths:
                self._user[name] = _path_of(value)
            return value

        return deco if obj is None else deco(obj)

    def unregister(self, name: str) -> None:
        """Forget a name registered in this process (tests); built-in names stay."""
        self._objects.pop(name, None)
        self._user.pop(name, None)

    def builtin_names(self) -> list[str]:
        """memrl's own names."""
        return sorted(self._paths)

    def _entry_points(self) -> dict[str, str]:
        return {ep.name: ep.value for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name this registry can build: built-in, registered in this process, and installed entry points."""
        return sorted({*self._paths, *self._objects, *self._entry_points()})

    def check(self, name: str) -> str:
        """`name` if it can be built (a known name, or a 'module:attribute' path), else a ValueError that lists
        the names and suggests the closest. Imports nothing (a path is checked when it is built)."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a string, got {name!r}")
        if ":" in name or name in self._paths or name in self._objects or name in self._entry_points():
            return name
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown {self.kind} {name!r}: {hint}registered: {', '.join(names)} (or 'module:attribute'"
                         f"; add your own with memrl.registry or the recipe's `plugins`)")

    def get(self, name: str) -> Any:
        """The object registered as `name` (imported on first use)."""
        if name in self._objects:
            return self._objects[name]
        self.check(name)
        path = name if ":" in name else self._paths.get(name) or self._entry_points()[name]
        try:
            obj = _resolve(path)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{self.kind} {name!r}: cannot import {path!r} ({exc})") from exc
        self._objects[name] = obj
        return obj

    def user_modules(self) -> set[str]:
        """Modules that registered names outside memrl in this process (what a remote process must import)."""
        unshippable = [n for n, p in self._user.items() if p is None]
        if unshippable:
            raise ValueError(f"{self.kind}(s) {unshippable} were registered from __main__ or inside a function: Ray "
                             "actors cannot import them; register them in an importable module")
        return {p.partition(":")[0] for p in self._user.values() if p} - _BUILTIN_MODULES


AGENTS = Registry("agent", "memrl.agents", {
    "mem1": "memrl.agents.mem1:Mem1Agent",
    "memsearcher": "memrl.agents.memsearcher:MemSearcherAgent",
    "full_context": "memrl.agents.full_context:FullContextAgent",
})
ADVANTAGES = Registry("advantage estimator", "memrl.advantages", {
    "grpo": "memrl.rl.losses:grpo_advantages",
    "drgrpo": "memrl.rl.losses:drgrpo_advantages",
    "rloo": "memrl.rl.losses:rloo_advantages",
})
AGGREGATIONS = Registry("loss aggregation", "memrl.aggregations", {
    "token_mean": "memrl.rl.losses:token_mean_weights",
    "seq_mean_token_mean": "memrl.rl.losses:seq_mean_token_mean_weights",
    "traj_mean_token_mean": "memrl.rl.losses:traj_mean_token_mean_weights",
    "seq_mean_token_sum_norm": "memrl.rl.losses:seq_mean_token_sum_norm_weights",
})
POLICY_LOSSES = Registry("policy loss", "memrl.policy_losses", {
    "ppo": "memrl.rl.policy_losses:ppo_policy_loss",
    "gspo": "memrl.rl.policy_losses:gspo_policy_loss",
})
WEIGHT_SYNCS = Registry("weight sync", "memrl.weight_syncs", {  # rl.sync: init / start / update / finish
    "native": "memrl.rl.sync:NativeSync",
    "blob": "memrl.rl.sync:BlobSync",
    "adapter": "memrl.rl.sync:AdapterSync",
})
REGISTRIES = (AGENTS, ADVANTAGES, AGGREGATIONS, POLICY_LOSSES, WEIGHT_SYNCS)
REWARD_SCORES = ("em", "f1")  # the answer scores an episode's reward can be (`envs.rewards.shaped_reward`)


_COMMON = ("self", "tokenizer", "max_observation_tokens", "memory_tokens")


def accepted_kwargs(cls: Any) -> list[str]:
    """Keyword settings a constructor takes beyond the arguments every agent gets (`_COMMON`)."""
    params = inspect.signature(cls).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _COMMON]


def unknown_kwargs(cls: Any, kwargs: dict) -> list[str]:
    """The keys of `kwargs` that `cls(...)` does not accept (none when it takes **kwargs)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return []
    return sorted(set(kwargs) - set(accepted_kwargs(cls)))


def plugin_modules(extra: Iterable[str] = ()) -> list[str]:
    """Modules a remote process must import to know every name registered here: `extra` (a recipe's
    `plugins`) and the modules of names registered outside memrl in this process."""
    mods = set(extra)
    for reg in REGISTRIES:
        mods |= reg.user_modules()
    return sorted(mods)


def import_plugins(modules: Iterable[str]) -> None:
    """Import plugin modules (each registers its names when imported), with an error naming the module."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ImportError(f"plugin module {mod!r} (recipe `plugins`, or a registration of this run) cannot be "
                              f"imported here: {exc}") from exc

