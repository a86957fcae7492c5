"""Where a multi-hop episode lost its facts: one outcome per objective, read off the episode's turns.

An objective whose gold reasoning chain is known (`Task.meta["entities"]`: e_0 named in the question, e_1 .. e_h
found by the searches, e_h the answer; the env reports them as `info["chains"]`) is either answered (EM 1) or
failed at the first of these stages, checked fact by fact along the chain (e_1, then e_2, ...):

- `not found`: no observation of the episode contains the fact (the search that should return it was not made,
  or misspelled the name and returned another passage or none);
- `out of turns`: it was first seen on the episode's last turn, so no later turn could use it;
- memory agents only (the turns carry `memory`, what the model wrote, and `memory_kept`, what the agent carried
  into the next prompt after cutting it to `memory_tokens`):
  - `not written`: no memory written after the fact was seen contains it;
  - `truncated`: written, but every time beyond the memory budget (cut before the next prompt);
  - `overwritten`: kept at some turn, but gone from the memory of the episode's last turn;
- `context full` (the full-context agent whose context reached the engine's window) or `not answered`: every
  fact was found (and kept) but the answer given was wrong or none was given.

Each lost objective also records the hop of its lost fact (`lost_hops`): at hop 2 and beyond the search needed
the previous hop's answer, so a loss there is where the dependent search, the part that needs memory, failed.

Names match case-insensitively as substrings (the KB's names are invented, so a hit is the name itself).
`tests/agents/test_audit.py` checks each outcome on hand-written episodes.
"""

from __future__ import annotations

from collections.abc import Sequence

OUTCOMES = ("answered", "not found", "out of turns", "not written", "truncated", "overwritten", "context full",
            "not answered")


def _has(text: str | None, name: str) -> bool:
    return bool(text) and name.lower() in text.lower()


def _fact_lost(turns: Sequence[dict], fact: str, memory_agent: bool) -> str | None:
    """The stage at which `fact` was lost (an outcome above), or None when it was found (and kept)."""
    seen = next((t for t, turn in enumerate(turns) if _has(turn.get("observation"), fact)), None)
    if seen is None:
        return "not found"
    later = turns[seen + 1:]
    if not later:
        return "out of turns"
    if not memory_agent:
        return None
    if not any(_has(turn.get("memory"), fact) for turn in later):
        return "not written"
    if not any(_has(turn.get("memory_kept"), fact) for turn in later):
        return "truncated"
    if not _has(turns[-1].get("memory_kept"), fact):
        return "overwritten"
    return None


def objective_outcomes(turns: Sequence[dict], chains: Sequence[Sequence[str] | None], solved: Sequence[float],
                       context_full: bool = False) -> list[str | None]:
    """One outcome per objective (None where its chain is unknown): `turns` the episode's turn records
    (`info["turn_log"]`: observation, memory, memory_kept), `chains` the gold entity chains, `solved` the
    per-objective EM. The agent counts as a memory agent when its turns carry `memory_kept`."""
    return [outcome for outcome, _ in _audit(turns, chains, solved, context_full)]


def lost_hops(turns: Sequence[dict], chains: Sequence[Sequence[str] | None], solved: Sequence[float]) -> list[int | None]:
    """Per objective, the hop (1 .. h) whose fact was the first lost (the outcome's fact: hop 1 is what the search
    for the question's own entity returns, hop 2 what the dependent search for hop 1's answer returns), or None
    (answered, every fact found and kept, or no chain). Same arguments as `objective_outcomes`."""
    return [hop for _, hop in _audit(turns, chains, solved)]


def _audit(turns: Sequence[dict], chains: Sequence[Sequence[str] | None], solved: Sequence[float],
           context_full: bool = False) -> list[tuple[str | None, int | None]]:
    memory_agent = any("memory_kept" in turn for turn in turns)
    out: list[tuple[str | None, int | None]] = []
    for chain, em in zip(chains, solved, strict=True):
        if not chain:
            out.append((None, None))
        elif em >= 1.0:
            out.append(("answered", None))
        else:
            lost = next(((s, hop) for hop, f in enumerate(chain[1:], 1) if (s := _fact_lost(turns, f, memory_agent))),
                        None)
            out.append(lost or ("context full" if context_full else "not answered", None))
    return out


def hop_counts(records: Sequence[dict]) -> dict[str, dict[int, int]]:
    """Objectives per (outcome, hop of the lost fact) over episode records that carry `lost_hops` (recorded since
    session 20); outcomes without a lost fact (answered, not answered, context full) are left out."""
    counts: dict[str, dict[int, int]] = {}
    for r in records:
        for outcome, hop in zip(r.get("facts") or [], r.get("lost_hops") or [], strict=False):
            if outcome is not None and hop is not None:
                counts.setdefault(outcome, {}).setdefault(hop, 0)
                counts[outcome][hop] += 1
    return counts


def outcome_counts(records: Sequence[dict]) -> dict[str, int]:
    """Objectives per outcome over episode records (their `facts` lists, `agents.evaluate.episode_records`)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for r in records:
        for outcome in r.get("facts") or []:
            if outcome is not None:
                counts[outcome] += 1
    return counts
