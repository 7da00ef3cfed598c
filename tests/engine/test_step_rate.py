"""The progress line's speed: steps per second, or seconds per step when a step takes longer than a second."""

from optik.engine.callbacks import step_rate


def test_fast_steps_read_as_steps_per_second():
    assert step_rate(21, 10.0) == "2.1 it/s"
    assert step_rate(5, 5.0) == "1.0 it/s"


def test_slow_steps_read_as_seconds_per_step_never_zero_it_s():
    assert step_rate(4, 49.2) == "12.3 s/it"
    assert step_rate(1, 1.5) == "1.5 s/it"
