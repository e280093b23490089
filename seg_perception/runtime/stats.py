"""Rolling statistics for diagnostics: latency percentiles and event rates."""
import collections
import threading
import time

import numpy as np


class RollingStats:
    """Latency samples and event timestamps over the last ``window_s`` seconds (thread-safe)."""

    def __init__(self, window_s=10.0, clock=time.monotonic):
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._events = collections.defaultdict(collections.deque)   # name -> deque of (t, value)

    def add(self, name: str, value: float = 1.0) -> None:
        now = self._clock()
        with self._lock:
            q = self._events[name]
            q.append((now, float(value)))
            self._trim(q, now)

    def _trim(self, q, now):
        while q and now - q[0][0] > self.window_s:
            q.popleft()

    def values(self, name: str) -> np.ndarray:
        now = self._clock()
        with self._lock:
            q = self._events[name]
            self._trim(q, now)
            return np.array([v for _, v in q], np.float64)

    def rate(self, name: str) -> float:
        """Events per second over the window (0 with fewer than two events)."""
        now = self._clock()
        with self._lock:
            q = self._events[name]
            self._trim(q, now)
            if len(q) < 2:
                return 0.0
            span = max(now - q[0][0], 1e-9)
            return (len(q) - 1) / span if span < self.window_s else len(q) / self.window_s

    def percentiles(self, name: str, qs: tuple[float, ...] = (50, 90, 99)) -> dict:
        v = self.values(name)
        if v.size == 0:
            return {q: float('nan') for q in qs}
        return {q: float(p) for q, p in zip(qs, np.percentile(v, qs))}
