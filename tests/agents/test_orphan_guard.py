"""The watcher that kills an engine whose owner was SIGKILLed (agents/orphan_guard.py), on plain processes.

The real case (a killed `memrl train` and its vLLM EngineCore) is tests/rl/test_resume.py::test_kill_9_*.
"""

import signal
import subprocess
import sys

import pytest

from memrl.agents import orphan_guard


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


@pytest.fixture
def guarded():
    """An owner, its engine and the watcher over them (plain sleeping processes); all killed at the end."""
    owner, engine = _sleeper(), _sleeper()
    watcher = orphan_guard.guard(owner.pid, [engine.pid])
    yield owner, engine, watcher
    for p in (owner, engine, watcher):
        p.kill()
        p.wait()


def test_engine_is_killed_once_its_owner_is_killed(guarded):
    owner, engine, watcher = guarded
    owner.kill()
    owner.wait()  # reaped, as init reaps a killed `memrl train`
    assert engine.wait(timeout=30) == -signal.SIGKILL
    assert watcher.wait(timeout=30) == 0


def test_killed_owner_left_as_zombie_counts_as_gone(guarded):
    owner, engine, _ = guarded
    owner.kill()  # not reaped: a zombie is not an owner
    assert engine.wait(timeout=30) == -signal.SIGKILL


def test_watcher_leaves_by_itself_when_the_engine_ends_first(guarded):
    owner, engine, watcher = guarded
    engine.terminate()  # the owner closed its engine
    engine.wait()
    assert watcher.wait(timeout=30) == 0
    assert owner.poll() is None  # the owner was left alone


def test_watch_reports_whether_it_killed():
    owner, engine = _sleeper(), _sleeper()
    try:
        owner.kill()
        owner.wait()
        assert orphan_guard.watch(owner.pid, [engine.pid], poll_s=0.05) is True
        assert engine.wait(timeout=30) == -signal.SIGKILL
        assert orphan_guard.watch(owner.pid, [engine.pid], poll_s=0.05) is False  # nothing left to guard
    finally:
        engine.kill()


def test_nothing_to_guard_starts_nothing():
    assert orphan_guard.guard(1, []) is None
