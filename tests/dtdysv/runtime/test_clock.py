from dtdysv.runtime.clock import RunClock, duration


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (4.2, 89, 91, 12 * 60, 3 * 3600 + 5 * 60)] == ["4 s", "89 s", "2 min", "12 min",
                                                                                 "3 h 05 min"]


def test_the_time_left_is_the_mean_epoch_times_the_epochs_left():
    now = FakeTime()
    clock = RunClock(1, 5, now)
    assert clock.label(1) == "epoch 1/5"  # nothing measured yet: no estimate
    now.t += 120  # epoch 1 (training and its evaluation) took 2 min
    clock.epoch_done()
    assert clock.seconds_left(2) == 4 * 120  # epochs 2..5 left
    assert clock.label(2) == "epoch 2/5, run ~8 min left"
    assert clock.summary(1).startswith("2 min so far, ~8 min left (ends ~")
    now.t += 240  # a slow epoch 2: the mean moves to 3 min
    clock.epoch_done()
    assert clock.seconds_left(3) == 3 * 180
    now.t += 180
    clock.epoch_done()
    now.t += 180
    clock.epoch_done()
    now.t += 180
    clock.epoch_done()
    assert clock.summary(5) == "run finished: 5 epochs in 15 min"


def test_a_resumed_run_counts_from_its_first_epoch():
    now = FakeTime()
    clock = RunClock(7, 10, now)
    now.t += 60
    clock.epoch_done()
    assert clock.label(8) == "epoch 8/10, run ~3 min left"
