"""Parsing model text into an env action, a memory block and a format verdict.

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

from dataclasses import dataclass

from memrl.envs.core import find_action, tag_block

MAX_RAW_ACTION = 2000


@dataclass(frozen=True)
class Parsed:
    """The reading of one model output by `parse_output`: the env action, the memory block and a verdict."""

    action: str  # what the env receives: a canonical `<name>content</name>` or the raw text on failure
    tool: str | None  # tool name or "answer"; None on failure
    content: str  # the action's argument ("" on failure)
    memory: str | None  # memory / internal-state text, None if absent
    ok: bool  # a valid action was found
    error: str | None = None  # why parsing failed (for logs and metrics)


def parse_output(text: str, tools: list[str] | tuple[str, ...], memory_tag: str | None = None) -> Parsed:
    """Extract (memory, action) from model text with the env's action grammar (`memrl.envs.core.find_action`);
    see the module docstring for the rules. A non-string (a broken backend) is parsed as its text."""
    text = text if isinstance(text, str) else str(text)
    found = find_action(text, [*tools, "answer"])
    memory = None
    if memory_tag:
        m = tag_block(memory_tag).search(text, 0, found[0] if found else len(text))
        if m:
            memory = m.group(1).strip()
    if found is None:
        return Parsed(text[:MAX_RAW_ACTION], None, "", memory, False, "no complete action tag")
    _, name, content = found
    if not content:
        return Parsed(text[:MAX_RAW_ACTION], None, "", memory, False, f"empty <{name}>")
    return Parsed(f"<{name}>{content}</{name}>", name, content, memory, True)
