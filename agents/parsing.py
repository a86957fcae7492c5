"""Parsing model text into an env action, a memory block and a format verdict. Never raises.

Rules (documented in the README, tested on a corpus of malformed outputs):
- The action is the first complete `<name>content</name>` block whose name is a tool of the env or
  `answer`. Tags nested inside its content are stripped; whitespace is trimmed.
- No complete action block (tag-less, truncated mid-tag, unknown tag), or an empty one: a parse
  failure. The env then receives the raw text (at most `MAX_RAW_ACTION` chars), which it answers with
  an invalid-action observation and a consumed turn; the episode's format reward is 0.
- The memory block (`<IS>` for MEM1, `<memory>` for MemSearcher) is the first complete block of that
  tag before the action; missing memory is a format error but the action still counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RAW_ACTION = 2000
_ANY_TAG = re.compile(r"</?[A-Za-z_][\w-]*(\s[^<>]*)?>")


@dataclass(frozen=True)
class Parsed:
    action: str  # what the env receives: a canonical `<name>content</name>` or the raw text on failure
    tool: str | None  # tool name or "answer"; None on failure
    content: str  # the action's argument ("" on failure)
    memory: str | None  # memory / internal-state text, None if absent
    ok: bool  # a valid action was found
    error: str | None = None  # why parsing failed (for logs and metrics)


def _block(tag: str) -> re.Pattern[str]:
    return re.compile(rf"<{tag}(?:\s[^<>]*)?>(.*?)</{tag}\s*>", re.DOTALL | re.IGNORECASE)


def parse_output(text: str, tools: list[str] | tuple[str, ...], memory_tag: str | None = None) -> Parsed:
    """Extract (memory, action) from model text; see the module docstring for the rules."""
    try:
        return _parse(text if isinstance(text, str) else str(text), tools, memory_tag)
    except Exception as exc:  # regex on hostile input must never take a rollout down
        return Parsed(str(text)[:MAX_RAW_ACTION], None, "", None, False, f"parser error: {exc!r}")


def _parse(text: str, tools, memory_tag: str | None) -> Parsed:
    names = [*tools, "answer"]
    best: tuple[int, str, str] | None = None
    for name in names:
        m = _block(re.escape(name)).search(text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), name, m.group(1))
    memory = None
    if memory_tag:
        m = _block(re.escape(memory_tag)).search(text, 0, best[0] if best else len(text))
        if m:
            memory = m.group(1).strip()
    if best is None:
        return Parsed(text[:MAX_RAW_ACTION], None, "", memory, False, "no complete action tag")
    _, name, content = best
    content = _ANY_TAG.sub("", content).strip()
    if not content:
        return Parsed(text[:MAX_RAW_ACTION], None, "", memory, False, f"empty <{name}>")
    return Parsed(f"<{name}>{content}</{name}>", name, content, memory, True)
