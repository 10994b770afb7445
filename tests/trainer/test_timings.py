"""The trainer's phase clock: time goes to the innermost open phase, and the phases add up to the run."""

from __future__ import annotations

from lora_trainer.timings import PhaseClock


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_charge_the_innermost_and_sum_to_the_elapsed_time():
    clock = FakeClock()
    timings = PhaseClock(clock)
    timings.start()
    clock.now += 1.0  # outside every phase: "other"
    with timings.phase("training"):
        clock.now += 5.0
        with timings.phase("previews"):
            clock.now += 2.0
        clock.now += 3.0
        with timings.phase("previews"):  # a second round adds to the first
            clock.now += 0.5
    clock.now += 0.25
    summary = timings.summary()
    assert summary == {"other": 1.25, "training": 8.0, "previews": 2.5}
    assert sum(summary.values()) == clock.now - 100.0


def test_a_phase_left_by_an_exception_stops_counting():
    clock = FakeClock()
    timings = PhaseClock(clock)
    timings.start()
    try:
        with timings.phase("load"):
            clock.now += 2.0
            raise RuntimeError("model folder missing")
    except RuntimeError:
        clock.now += 1.0
    assert timings.summary() == {"load": 2.0, "other": 1.0}


def test_nothing_is_counted_before_start():
    clock = FakeClock()
    timings = PhaseClock(clock)
    with timings.phase("fetch"):
        clock.now += 3.0
    assert timings.summary() == {}
