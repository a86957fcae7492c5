"""Phase timings (rl/phases.py) and a run's wall time from its summary (bench/walltime.py): each second once."""

import pytest

from memrl.bench.walltime import wall_seconds
from memrl.rl.phases import PhaseClock


class FakeClock:
    """A clock the test moves by hand (no sleeping, no wall-clock assertions)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_nested_phase_is_taken_out_of_the_outer_one():
    t = FakeClock()
    clock = PhaseClock(clock=t)

    def grpo():
        t.now += 10  # 10 s of training
        clock.time("eval_step_2", lambda: setattr(t, "now", t.now + 4))  # a 4 s held-out eval inside GRPO
        t.now += 6
        return "done"

    assert clock.time("grpo", grpo) == "done"
    assert clock.timings == {"grpo": 16.0, "eval_step_2": 4.0}
    assert sum(clock.timings.values()) == 20.0  # the 20 s that passed, once


def test_a_checkpoint_mid_phase_records_the_time_so_far_and_a_resume_adds_to_it():
    t = FakeClock()
    clock = PhaseClock({"sft": 50.0}, clock=t)
    seen = {}

    def grpo():
        t.now += 10
        clock.time("eval_step_1", lambda: (setattr(t, "now", t.now + 3), seen.update(mid_eval=clock.so_far())))
        t.now += 7
        seen["mid"] = clock.so_far()  # what a checkpoint written here stores
        t.now += 5  # lost to a kill after the checkpoint
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        clock.time("grpo", grpo)
    assert seen["mid_eval"] == {"sft": 50.0, "grpo": 10.0, "eval_step_1": 3.0}  # innermost open phase, then outer
    assert seen["mid"] == {"sft": 50.0, "eval_step_1": 3.0, "grpo": 17.0}
    resumed = PhaseClock(seen["mid"], clock=t)
    resumed.time("grpo", lambda: setattr(t, "now", t.now + 8))
    assert resumed.timings == {"sft": 50.0, "eval_step_1": 3.0, "grpo": 25.0}


def test_wall_seconds_takes_legacy_nested_phases_out_once():
    legacy = {"timings": {"sft": 60.0, "grpo": 100.0, "eval_step_4": 20.0, "control": 90.0, "eval_control": 30.0}}
    assert wall_seconds(legacy) == 60 + 80 + 20 + 60 + 30
    new = {"timings": {"sft": 60.0, "grpo": 80.0, "eval_step_4": 20.0}, "timings_exclusive": True}
    assert wall_seconds(new) == 160.0
    resumed_sweep = {"timings": {"eval_sweep": 30.0}, "timings_exclusive": True,
                     "evals": {"sweep": [{"wall_s": 30.0}, {"wall_s": 45.0}]}}
    assert wall_seconds(resumed_sweep) == 75.0  # every point's own time, not the last process's
