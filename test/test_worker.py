"""The newest-frame worker: no backlog, and every submitted item accounted for in every snapshot."""
import random
import threading
import time

from seg_perception.runtime.worker import LatestFrameWorker, RateLimiter


def test_every_item_has_one_fate_in_every_snapshot():
    rng = random.Random(0)

    def process(item):
        time.sleep(rng.random() * 0.002)
        if item % 7 == 0:
            raise ValueError('bad frame')
        if item % 11 == 0:
            raise RuntimeError('session failed')
        return 'idle' if item % 5 == 0 else 'processed'

    def on_error(exc, item):
        return 'rejected' if isinstance(exc, ValueError) else 'errors'

    worker = LatestFrameWorker(process, on_error)
    snapshots = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            snapshots.append(worker.snapshot())
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for i in range(3000):
        worker.submit(i)
        if i % 50 == 0:
            time.sleep(0.001)
    assert worker.wait_idle(5)
    done.set()
    watcher.join()
    final = worker.snapshot()
    assert worker.stop(1.0)
    fates = ('dropped', 'in_flight', 'processed', 'idle', 'rejected', 'errors')
    for snap in snapshots + [final]:
        assert snap['submitted'] == sum(snap.get(k, 0) for k in fates), snap
        assert snap['in_flight'] <= 2
    assert final['in_flight'] == 0 and final['submitted'] == 3000
    assert final['dropped'] > 0 and final['processed'] > 0 and len(snapshots) > 10


def test_an_idle_worker_has_taken_the_frame_when_submit_returns():
    """The hand-over: the caller (the executor's thread) waits until an idle worker holds the frame, so a frame
    submitted right after it is queued behind it, not dropped in its place."""
    release = threading.Event()
    seen = []

    def process(item):
        seen.append(item)
        release.wait(5)
        return 'processed'

    worker = LatestFrameWorker(process, lambda exc, item: 'errors')
    for round_ in range(20):
        release.clear()
        worker.submit((round_, 'first'), handover=1.0)   # the node's 5 ms, with room for a loaded machine
        worker.submit((round_, 'second'))   # the worker is busy with the first one: this one waits
        release.set()
        assert worker.wait_idle(5)
    assert worker.stop(1.0)
    assert worker.snapshot()['dropped'] == 0 and len(seen) == 40


def test_rate_limiter_passes_the_rate_on_average_whatever_the_jitter():
    rng = random.Random(1)
    limiter = RateLimiter()
    arrivals = [i / 30 + rng.uniform(-0.004, 0.004) for i in range(900)]   # 30 s of a jittery 30 Hz camera
    passed = [t for t in arrivals if limiter.admit(t, 10.0)]
    assert 298 <= len(passed) <= 302                                       # 10 Hz
    gaps = [b - a for a, b in zip(passed, passed[1:])]
    assert min(gaps) > 0.05 and max(gaps) < 0.15                           # every third frame, give or take one


def test_rate_limiter_edges():
    limiter = RateLimiter()
    assert all(limiter.admit(i / 30, 0.0) for i in range(30))              # 0: no limit
    assert all(limiter.admit(1 + i / 5, 10.0) for i in range(10))          # a camera slower than the limit
    passed = [limiter.admit(60 + i / 100, 10.0) for i in range(20)]         # after a minute's pause: no burst
    assert passed[:3] == [True, False, False] and sum(passed) == 3          # 0.2 s at 10 Hz, half a token saved
