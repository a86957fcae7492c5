"""Model outputs of every malformed shape parse into a defined verdict, by the env's own action grammar."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memrl.agents.parsing import MAX_RAW_ACTION, parse_output
from memrl.envs.core import parse_action

TOOLS = ["search"]

CASES = [
    # text, ok, tool, content, memory
    ("<IS>know x</IS><search>Ana Lim</search>", True, "search", "Ana Lim", "know x"),
    ("<IS>a</IS> <answer> Paris </answer>", True, "answer", "Paris", "a"),
    ("<search>q</search><answer>a</answer>", True, "search", "q", None),  # first action wins
    ("<answer>a</answer><search>q</search>", True, "answer", "a", None),
    ("no tags at all", False, None, "", None),
    ("<IS>half</IS><search>cut mid-t", False, None, "", "half"),  # truncated mid-tag
    ("<search>q</sear", False, None, "", None),
    ("<answer></answer>", False, None, "", None),  # empty answer
    ("<answer>   </answer>", False, None, "", None),
    ("<search><search>nested</search></search>", True, "search", "nested", None),
    ("<answer><b>Paris</b></answer>", True, "answer", "Paris", None),  # inner tags stripped
    ("<ANSWER>caps</ANSWER>", True, "answer", "caps", None),
    ("<answer>Zürich ✓ 東京</answer>", True, "answer", "Zürich ✓ 東京", None),
    ("<click>x</click>", False, None, "", None),  # not a tool of this env
    ("<IS>m</IS>", False, None, "", "m"),
    ("", False, None, "", None),
    ("<answer>a; b; c</answer>", True, "answer", "a; b; c", None),
    ('<search obj="2">q</search>', True, "search", "q", None),
]


@pytest.mark.parametrize("text,ok,tool,content,memory", CASES)
def test_malformed_corpus_has_a_defined_verdict(text, ok, tool, content, memory):
    p = parse_output(text, TOOLS, "IS")
    assert (p.ok, p.tool, p.content, p.memory) == (ok, tool, content, memory)
    if ok:
        assert p.action == f"<{tool}>{content}</{tool}>"
    else:
        assert p.action == text[:MAX_RAW_ACTION] and p.error


def test_memory_after_the_action_is_not_taken():
    assert parse_output("<search>q</search><IS>late</IS>", TOOLS, "IS").memory is None


def test_huge_output_is_cut_for_the_env():
    p = parse_output("x" * 10_000, TOOLS, "memory")
    assert not p.ok and len(p.action) == MAX_RAW_ACTION


PIECES = list("<>/ISsearchanswermemory xé✓\n\t=\"") + ["<IS>", "</IS>", "<search>", "</search>", "<answer>",
                                                       "</answer>", "<memory>", "</memory>"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60).map("".join))
def test_random_tag_soup_gets_a_verdict_that_the_env_reads_the_same_way(text):
    for tag in ("IS", "memory", None):
        p = parse_output(text, TOOLS, tag)
        _check_verdict(text, p)


def _check_verdict(text: str, p) -> None:
    """A success is a canonical non-empty block the env parses to the same action; a failure passes the raw text."""
    assert p.ok == (p.tool is not None) == (p.error is None)
    env_view = parse_action(text, [*TOOLS, "answer"])  # what an env makes of the raw text
    if p.ok:
        assert p.content and p.action == f"<{p.tool}>{p.content}</{p.tool}>"
        assert env_view == (p.tool, p.content) == parse_action(p.action, [*TOOLS, "answer"])
    else:
        assert p.action == text[:MAX_RAW_ACTION] and p.content == ""
        assert env_view is None


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_get_a_verdict_that_the_env_reads_the_same_way(data):
    text = data.decode("utf-8", errors="replace")
    _check_verdict(text, parse_output(text, TOOLS, "memory"))
