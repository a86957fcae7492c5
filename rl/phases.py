"""Wall time per phase of a training run (summary.json `timings`), each second counted once.

A phase timed inside another (the held-out eval of a GRPO step, the control's eval) is taken out of the outer one,
so the timings add up to the run's wall time. `so_far` also counts the phases still running: a checkpoint written
in the middle of GRPO records the GRPO time up to it, and a run resumed from that checkpoint adds its own time on
top (what ran between the checkpoint and a kill is lost and run again, so it is counted once, when it is redone).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class PhaseClock:
    def __init__(self, timings: dict[str, float] | None = None, clock: Callable[[], float] = time.perf_counter):
        self.timings: dict[str, float] = dict(timings or {})
        self._clock = clock
        self._open: list[list] = []  # [name, start, seconds spent in phases nested in it], outermost first

    def time(self, name: str, fn: Callable):
        """Run `fn` as phase `name` and return its result; its own time (less any nested phase) adds to `name`."""
        frame = [name, self._clock(), 0.0]
        self._open.append(frame)
        try:
            return fn()
        finally:
            self._open.pop()
            spent = self._clock() - frame[1]
            self.timings[name] = self.timings.get(name, 0.0) + spent - frame[2]
            if self._open:
                self._open[-1][2] += spent

    def add(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    def so_far(self) -> dict[str, float]:
        """The timings with every phase still running counted up to now (innermost first, each less its open child)."""
        out, now, inner = dict(self.timings), self._clock(), 0.0
        for name, start, nested in reversed(self._open):
            total = now - start
            out[name] = out.get(name, 0.0) + total - nested - inner
            inner = total
        return out
