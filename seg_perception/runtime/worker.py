"""A single inference worker that always takes the newest frame: no backlog, every replaced frame counted."""
import threading


class LatestFrameWorker:
    """Runs ``process(item)`` on a background thread for the newest submitted item.

    ``submit`` never blocks: if the worker is busy, the pending item is replaced and ``dropped`` grows by one.
    Exceptions from ``process`` go to ``on_error(exc, item)`` and the worker keeps running."""

    def __init__(self, process, on_error, name='inference'):
        self._process = process
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending = None
        self._running = True
        self.submitted = 0
        self.dropped = 0
        self.processed = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item):
        with self._cond:
            self.submitted += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = item
            self._cond.notify()

    def _loop(self):
        while True:
            with self._cond:
                while self._running and self._pending is None:
                    self._cond.wait()
                if not self._running:
                    return
                item, self._pending = self._pending, None
            try:
                self._process(item)
            except Exception as exc:  # the worker must survive anything one frame does
                self._on_error(exc, item)
            with self._cond:
                self.processed += 1
                self._cond.notify_all()

    def wait_idle(self, timeout=None):
        """Block until nothing is pending (for tests and replay); True if idle."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None, timeout)

    def stop(self, timeout=5.0):
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join(timeout)
