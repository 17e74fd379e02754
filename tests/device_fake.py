"""A fake device for cirron._device: events, an allocator, and a 'GPU' that finishes on request."""

from __future__ import annotations


class FakeEvent:
    def __init__(self, dev: FakeDevice, t: int) -> None:
        self.dev = dev
        self.t = t


class FakeDevice:
    """Implements cirron._device.DeviceBackend. Each event is stamped with the device clock
    (``clock``, advanced by tests with :meth:`run`); the events are 'done' once :meth:`finish`
    was called or ``finished`` is set. ``elapsed_ns`` fixes every span's GPU time if given."""

    def __init__(self, elapsed_ns: int | None = None) -> None:
        self.fixed = elapsed_ns
        self.clock = 0
        self.finished = False
        self.waits = 0
        self.allocated_now = 0
        self.high = 0
        self.resets = 0

    # -- the test's controls --------------------------------------------------------------------

    def run(self, ns: int) -> None:
        self.clock += ns

    def finish(self) -> None:
        self.finished = True

    def alloc(self, n: int) -> None:
        self.allocated_now += n
        self.high = max(self.high, self.allocated_now)

    def free(self, n: int) -> None:
        self.allocated_now -= n

    # -- DeviceBackend ----------------------------------------------------------------------------

    def event(self) -> FakeEvent:
        return FakeEvent(self, self.clock)

    def done(self, event: FakeEvent) -> bool:
        return self.finished

    def wait(self, event: FakeEvent) -> None:
        self.waits += 1
        self.finished = True

    def elapsed_ns(self, start: FakeEvent, end: FakeEvent) -> int:
        return self.fixed if self.fixed is not None else end.t - start.t

    def allocated(self) -> int:
        return self.allocated_now

    def peak(self) -> int:
        return self.high

    def reset_peak(self) -> None:
        self.resets += 1
        self.high = self.allocated_now
