"""The watcher that kills an engine whose owner was SIGKILLed (agents/orphan_guard.py): on plain processes,
then on a real vLLM engine with and without the watcher (the vendor behaviour it works around)."""

import signal
import subprocess
import sys
import time

import psutil
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


OWNER = """
import sys, time
if __name__ == "__main__":  # vLLM spawns its engine core: the owner must be importable without side effects
    import memrl.agents.orphan_guard as g
    if sys.argv[1] == "unguarded":
        g.guard = lambda *a: None
    from memrl.agents import VLLMBackend
    from memrl.recipes.schema import RolloutCfg
    VLLMBackend(sys.argv[2], rollout=RolloutCfg(max_model_len=512))
    print("READY", flush=True)
    time.sleep(600)
"""


def _kill_owner_of_an_engine(tmp_path, tiny_dir, mode: str) -> list[str]:
    """Start a process owning a vLLM engine, SIGKILL it, and return the names of its descendants still running
    10 guard polls later (killed here afterwards, whatever happens); guarded, it stops waiting once none is."""
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen([sys.executable, str(script), mode, str(tiny_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        for line in owner.stdout:
            if line.startswith("READY"):
                break
            print(line, end="")  # the owner's log, shown if the test fails
        else:
            pytest.fail("the owner exited before its engine was up (its output is above)")
        kids = psutil.Process(owner.pid).children(recursive=True)
        assert any("EngineCore" in k.name() for k in kids)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10 * orphan_guard.POLL_S
    while time.monotonic() < deadline and (mode == "unguarded" or any(orphan_guard._alive(k) for k in kids)):
        time.sleep(0.1)
    alive = [k for k in kids if orphan_guard._alive(k)]
    names = [k.name() for k in alive]
    for k in alive:
        k.kill()
    return names


@pytest.mark.slow
def test_vllm_engine_outlives_a_killed_owner_unless_guarded(tmp_path, tiny_dir):
    left = _kill_owner_of_an_engine(tmp_path, tiny_dir, "unguarded")
    # vendor behaviour (vLLM 0.32): if this fails, the engine core watches its owner now; drop the watcher
    assert any("EngineCore" in n for n in left), left
    assert _kill_owner_of_an_engine(tmp_path, tiny_dir, "guarded") == []
