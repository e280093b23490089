"""A single inference worker that always takes the newest frame (no backlog, every frame accounted for), and the
rate limit in front of it."""
import collections
import threading


class LatestFrameWorker:
    """Runs ``process(item)`` on a background thread for the newest submitted item.

    ``submit`` never blocks: if the worker is busy, the pending item is replaced and ``dropped`` grows by one.
    Exceptions from ``process`` go to ``on_error(exc, item)`` and the worker keeps running. Both may return the
    name of the item's outcome (e.g. 'processed', 'rejected'), counted in ``outcomes`` in the same step that
    marks the worker idle, so :meth:`snapshot` always satisfies
    ``submitted == dropped + sum(outcomes) + in_flight`` (in_flight: pending + being processed, at most 2)."""

    def __init__(self, process, on_error, name='inference'):
        self._process = process
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending = None
        self._busy = False
        self._running = True
        self.submitted = 0
        self.dropped = 0
        self.outcomes = collections.Counter()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: object, handover: float = 0.005) -> None:
        """Queue ``item`` (replacing a pending one). An idle worker takes it before this returns (waiting at most
        ``handover`` seconds): the caller (an rclpy executor thread) would otherwise keep the GIL for its own
        bookkeeping after the callback, and the worker would start the frame ~0.4 ms late."""
        with self._cond:
            self.submitted += 1
            if self._pending is not None:
                self.dropped += 1
            idle = not self._busy
            self._pending = item
            self._cond.notify_all()
            if idle and handover > 0:
                self._cond.wait_for(lambda: self._pending is not item, handover)

    def _loop(self):
        while True:
            with self._cond:
                while self._running and self._pending is None:
                    self._cond.wait()
                if not self._running:
                    return
                item, self._pending = self._pending, None
                self._busy = True
                self._cond.notify_all()   # submit waits for the hand-over
            try:
                outcome = self._process(item)
            except Exception as exc:  # the worker must survive anything one frame does
                outcome = self._on_error(exc, item)
            with self._cond:
                self._busy = False
                if outcome:
                    self.outcomes[outcome] += 1
                self._cond.notify_all()

    def snapshot(self) -> dict:
        """Consistent counts: ``submitted``, ``dropped``, ``in_flight`` and one entry per outcome."""
        with self._cond:
            return {'submitted': self.submitted, 'dropped': self.dropped,
                    'in_flight': int(self._pending is not None) + int(self._busy), **self.outcomes}

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or being processed (for tests and replay); True if idle."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop taking frames and join the thread (the frame in progress finishes); True if it ended in time."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()


class RateLimiter:
    """Lets through at most ``rate`` items per second on average: a token bucket refilled at ``rate`` tokens per
    second and holding at most 1.5, one token per item let through. The remainder of a token carries over, so a
    30 Hz camera limited to 10 Hz passes every third frame even when arrivals jitter; after a pause at most one
    frame passes at once. ``rate`` <= 0: everything passes."""

    CAPACITY = 1.5

    def __init__(self):
        self._tokens = self.CAPACITY
        self._last = None

    def admit(self, now: float, rate: float) -> bool:
        """Whether an item arriving at ``now`` (seconds, monotonic) passes at ``rate`` per second."""
        if rate <= 0:
            self._tokens, self._last = self.CAPACITY, now
            return True
        if self._last is not None:
            self._tokens = min(self.CAPACITY, self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens >= 1.0 - 1e-9:
            self._tokens -= 1.0
            return True
        return False
